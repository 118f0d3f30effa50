"""ConvNetJS `net.toJSON()` files: `{"layers": [...]}` with weights in Vols.

A Vol is `{sx, sy, depth, w}` with element (x, y, d) at ((sx*y)+x)*depth+d; `w` is
a list, or the `{"0": .., "1": ..}` object JSON.stringify makes of a typed array.
Conv filters are Vols (sx, sy, in_depth), fc filters Vols (1, 1, num_inputs),
biases a Vol (1, 1, out_depth): in that order they are our flat layout, so the
conversion is a concatenation. ConvNetJS keeps float64 weights; we keep float32
(an imported float64 weight is rounded once; from then on round trips are exact).
An extra top-level "labels" list carries class names; ConvNetJS ignores it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import FormatError
from .jsonfloats import Floats, read_floats
from .layout import segments
from .spec import Spec, from_expanded

# the layer types of ConvNetJS itself (the spec language's first thirteen)
CONVNETJS_TYPES = frozenset(
    {"input", "conv", "fc", "pool", "relu", "sigmoid", "tanh", "maxout", "dropout", "lrn", "softmax", "svm",
     "regression"}
)  # fmt: skip


def is_convnetjs(data: object) -> bool:
    return (
        isinstance(data, Mapping)
        and isinstance(data.get("layers"), list)
        and all(isinstance(layer, Mapping) and "layer_type" in layer for layer in data["layers"])
    )


def _filter_vol_shape(layer) -> tuple[int, int, int]:
    """(sx, sy, depth) of one filter Vol: conv (sx, sy, in_depth), fc (1, 1, num_inputs)."""
    if layer.type == "conv":
        return (layer.sx, layer.sy, layer.in_shape[2])
    return (1, 1, layer.num_inputs)


def _vol(sx: int, sy: int, depth: int, w: np.ndarray) -> dict:
    return {"sx": sx, "sy": sy, "depth": depth, "w": Floats(w)}


def to_convnetjs(spec: Spec, params: np.ndarray, labels: list[str] | None = None) -> dict:
    """The dict `jsonfloats.dumps` turns into a file ConvNetJS's `Net.fromJSON` loads.
    A layer ConvNetJS does not have (batchnorm, attention, a residual block, ...) is
    refused by name: FormatError."""
    for i, layer in enumerate(spec.walk):
        if layer.type not in CONVNETJS_TYPES:
            raise FormatError(
                f"layer {i} ({layer.type}) has no ConvNetJS form: ConvNetJS knows "
                f"{', '.join(sorted(CONVNETJS_TYPES))}; export this model as mlitb JSON or ONNX instead"
            )
    by_layer = {}
    for seg in segments(spec):
        by_layer.setdefault(seg.layer, {})[seg.name] = params[seg.offset : seg.stop]
    layers = []
    for i, layer in enumerate(spec.layers):
        out = layer.to_json()
        # bias_pref stays: ConvNetJS ignores it, and it keeps re-initialisation exact.
        if layer.type in ("conv", "fc"):
            w = by_layer[i]["filters"]
            n_out = layer.out_shape[2]
            shape = _filter_vol_shape(layer)
            per = shape[0] * shape[1] * shape[2]
            out["filters"] = [_vol(*shape, w[f * per : (f + 1) * per]) for f in range(n_out)]
            out["biases"] = _vol(1, 1, n_out, by_layer[i]["biases"])
        layers.append(out)
    data: dict = {"layers": layers}
    if labels is not None:
        data["labels"] = list(labels)
    return data


def from_convnetjs(data: Mapping) -> tuple[Spec, np.ndarray, list[str] | None]:
    spec = from_expanded(data["layers"])
    params = np.empty(spec.num_params, np.float32)
    for seg in segments(spec):
        layer = spec.layers[seg.layer]
        raw = data["layers"][seg.layer]
        where = f"layer {seg.layer} ({layer.type})"
        if seg.name == "biases":
            vol = raw.get("biases")
            n = layer.out_shape[2]
            _check_vol(vol, (1, 1, n), f"{where} biases")
            params[seg.offset : seg.stop] = read_floats(vol["w"], n, f"{where} biases")
            continue
        filters = raw.get("filters")
        n_out = layer.out_shape[2]
        if not isinstance(filters, list) or len(filters) != n_out:
            got = len(filters) if isinstance(filters, list) else type(filters).__name__
            raise FormatError(f"{where}: expected {n_out} filters, got {got}")
        shape = _filter_vol_shape(layer)
        per = shape[0] * shape[1] * shape[2]
        for f, vol in enumerate(filters):
            _check_vol(vol, shape, f"{where} filter {f}")
            start = seg.offset + f * per
            params[start : start + per] = read_floats(vol["w"], per, f"{where} filter {f}")
    labels = data.get("labels")
    if labels is not None and (
        not isinstance(labels, list)
        or len(labels) != spec.num_outputs
        or not all(isinstance(x, str) for x in labels)
    ):
        raise FormatError(f"'labels' must be a list of {spec.num_outputs} strings")
    return spec, params, labels


def _check_vol(vol: object, shape: tuple[int, int, int], what: str) -> None:
    if not isinstance(vol, Mapping) or "w" not in vol:
        raise FormatError(f"{what}: expected a Vol {{sx, sy, depth, w}}, got {type(vol).__name__}")
    got = (vol.get("sx"), vol.get("sy"), vol.get("depth"))
    if got != shape:
        raise FormatError(f"{what}: expected a Vol of sx, sy, depth = {shape}, got {got}")
