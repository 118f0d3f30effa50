"""Import of models saved by the original MLitB prototype (2015).

The prototype's `Net.getConfigsAndParams()` wrote `{params, configs, label2index,
index2label}` (sometimes wrapped as `{"data": {...}}`):

* `configs`: the user's layer list, `{type, ...}`; conv/fc carry an `activation`
  (conv default relu, fc default linear) that becomes its own layer, and
  `drop_prob` appends a dropout after it. There is no implicit fc before softmax:
  a classifier is an fc with `activation: "softmax"`.
* `params`: a list of arrays over conv and fc layers in order: a conv with F
  filters gives F filter arrays then one bias array, an fc one weight array
  (element i*in + j: output i, input j) then one bias array.
* Vols are planar: element (x, y, d) at x + sx*y + sx*sy*d (ConvNetJS interleaves
  channels), so filters and fc columns are permuted into our layout here.
* Output sizes used Math.round where we use floor.

What maps and what is refused is listed in docs/model.md; anything the prototype
would compute differently from us is refused with a reason rather than imported
into a model that predicts something else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .errors import FormatError, SpecError
from .jsonfloats import read_floats
from .layout import segments
from .spec import Spec, from_expanded

_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "softmax": "softmax", "linear": None}


def is_mlitb_prototype(data: object) -> bool:
    if isinstance(data, Mapping) and "configs" not in data and isinstance(data.get("data"), Mapping):
        data = data["data"]
    return isinstance(data, Mapping) and "configs" in data and "params" in data


def _js_round(v: float) -> int:
    return math.floor(v + 0.5)


def _fail(i: int, t: object, msg: str) -> FormatError:
    return FormatError(f"MLitB prototype model, config {i} ({t}): {msg}")


def _expanded_layers(configs: list) -> list[dict]:
    """The prototype's configs as our expanded (layer_type) layers, with checks."""
    out: list[dict] = []
    shape = (0, 0, 0)  # (h, w, d) of the volume so far
    for i, c in enumerate(configs):
        if not isinstance(c, Mapping):
            raise _fail(i, None, f"expected an object, got {type(c).__name__}")
        t = c.get("type")
        if c.get("weightMult", 1) != 1:
            raise _fail(i, t, "weightMult other than 1 is not supported")
        if t == "input":
            layer = {"layer_type": "input", "out_sx": c.get("sx"), "out_sy": c.get("sy"),
                     "out_depth": c.get("depth")}  # fmt: skip
            out.append(layer)
            shape = (c.get("sy"), c.get("sx"), c.get("depth"))
            if not all(isinstance(v, int) and v > 0 for v in shape):
                raise _fail(i, t, f"expected positive integer sx, sy, depth, got {shape}")
            continue
        if not out:
            raise _fail(i, t, "the first config must be the input")
        h, w, d = shape
        _check_recorded_input(i, t, c, shape)
        if t in ("conv", "pool"):
            sx = c.get("sx")
            sy = c.get("sy", sx)
            if not isinstance(sx, int) or not isinstance(sy, int):
                raise _fail(i, t, f"expected integer sx/sy, got {sx!r}/{sy!r}")
            pad = c.get("pad", 0)
            stride = c.get("stride")
            if t == "conv":  # the prototype silently replaced a too large stride by 1 ...
                stride = stride if stride is not None and stride <= min(sx, sy) else 1
            else:  # ... and a pool's by the window size (its default, too)
                stride = stride if stride is not None and stride <= sx else sx
                if c.get("pool_type", "max") != "max":
                    raise _fail(i, t, "average pooling is not supported (max only)")
                if pad:
                    raise _fail(i, t, "pool with pad > 0 is refused: the prototype read "
                                "wrapped-around values at the border")  # fmt: skip
            for n_in, win in ((w, sx), (h, sy)):
                v = (n_in + 2 * pad - win) / stride + 1
                if _js_round(v) != math.floor(v):
                    raise _fail(i, t, f"the prototype rounded the output size {v:g} up to "
                                f"{_js_round(v)} (a partial window); mlitb floors it")  # fmt: skip
            out_h = _js_round((h + 2 * pad - sy) / stride + 1)
            out_w = _js_round((w + 2 * pad - sx) / stride + 1)
            layer = {"layer_type": t, "sx": sx, "sy": sy, "stride": stride, "pad": pad,
                     "in_depth": d}  # fmt: skip
            if t == "conv":
                layer.update(out_depth=c.get("filters"), l1_decay_mul=0.0, l2_decay_mul=1.0,
                             bias_pref=0.1)  # fmt: skip
                shape = (out_h, out_w, c.get("filters"))
            else:
                shape = (out_h, out_w, d)
            out.append(layer)
            activation = c.get("activation", "relu") if t == "conv" else None
        elif t == "fc":
            n = c.get("num_neurons")
            out.append({"layer_type": "fc", "out_depth": n, "l1_decay_mul": 0.0,
                        "l2_decay_mul": 1.0, "bias_pref": 0.1})  # fmt: skip
            shape = (1, 1, n)
            activation = c.get("activation", "linear")
        elif t in ("relu", "sigmoid", "softmax", "linear", "dropout"):
            activation = None
            if t == "dropout":
                out.append({"layer_type": "dropout", "drop_prob": c.get("drop_prob", 0.5)})
            elif t != "linear":
                activation = t
        else:
            raise _fail(i, t, "unsupported layer type (the prototype implemented input, conv, "
                        "pool, fc, relu, sigmoid, linear, dropout and softmax)")  # fmt: skip
        if activation is not None:
            if activation not in _ACTIVATIONS:
                raise _fail(i, t, f"activation {activation!r} was never implemented by the "
                            "prototype (tanh and maxout were offered but not built)")  # fmt: skip
            if _ACTIVATIONS[activation]:
                out.append({"layer_type": _ACTIVATIONS[activation]})
        if "drop_prob" in c and t != "dropout":
            out.append({"layer_type": "dropout", "drop_prob": c["drop_prob"]})
    if out and out[-1]["layer_type"] == "dropout" and len(out) > 1 and out[-2]["layer_type"] == "softmax":
        raise FormatError("MLitB prototype model: a dropout after the softmax (it scaled the "
                          "probabilities by drop_prob) is not supported")  # fmt: skip
    return out


def _check_recorded_input(i: int, t: object, c: Mapping, shape: tuple) -> None:
    """Saved configs record each layer's input size; a mismatch means another version
    of the prototype (the early 'same' convolution), whose numbers we would misread."""
    h, w, d = shape
    for key, ours in (("in_sx", w), ("in_sy", h), ("in_depth", d), ("in_neurons", h * w * d)):
        if key in c and c[key] != ours:
            raise _fail(i, t, f"recorded {key}={c[key]} but the layers above give {ours}: "
                        "this file comes from an older prototype version with other "
                        "convolution/pooling rules, which mlitb does not import")  # fmt: skip


def from_mlitb_prototype(data: Mapping) -> tuple[Spec, np.ndarray, list[str] | None]:
    if "configs" not in data and isinstance(data.get("data"), Mapping):
        data = data["data"]
    configs, arrays = data.get("configs"), data.get("params")
    if not isinstance(configs, list) or not isinstance(arrays, list):
        raise FormatError("MLitB prototype model: 'configs' and 'params' must be lists")
    try:
        spec = from_expanded(_expanded_layers(configs))
    except SpecError as e:
        raise FormatError(f"MLitB prototype model: {e}") from None
    params = np.empty(spec.num_params, np.float32)
    k = 0  # next array in `params`
    for seg in segments(spec):
        layer = spec.layers[seg.layer]
        where = f"params for layer {seg.layer} ({layer.type} {seg.name})"
        if seg.name == "biases":
            if k >= len(arrays):
                raise FormatError(f"MLitB prototype model: too few params arrays ({len(arrays)})")
            params[seg.offset : seg.stop] = read_floats(arrays[k], seg.size, where)
            k += 1
            continue
        if layer.type == "conv":
            f_out, sy, sx, d = seg.shape
            if k + f_out > len(arrays):
                raise FormatError(f"MLitB prototype model: too few params arrays ({len(arrays)})")
            for f in range(f_out):
                planar = read_floats(arrays[k + f], sx * sy * d, f"{where} filter {f}")
                start = seg.offset + f * sx * sy * d  # planar (d, y, x) -> ours (y, x, d)
                params[start : start + sx * sy * d] = planar.reshape(d, sy, sx).transpose(1, 2, 0).ravel()
            k += f_out
        else:  # fc: columns are the planar index of the input volume
            if k >= len(arrays):
                raise FormatError(f"MLitB prototype model: too few params arrays ({len(arrays)})")
            n_out, n_in = seg.shape
            h, w, d = layer.in_shape
            wmat = read_floats(arrays[k], n_out * n_in, where).reshape(n_out, d, h, w)
            params[seg.offset : seg.stop] = wmat.transpose(0, 2, 3, 1).ravel()
            k += 1
    if k != len(arrays):
        raise FormatError(f"MLitB prototype model: {len(arrays)} params arrays, the configs need {k}")
    return spec, params, _labels(data, spec.num_outputs)


def _labels(data: Mapping, n: int) -> list[str] | None:
    index2label = data.get("index2label")
    if not index2label:
        return None
    if not isinstance(index2label, Mapping) or len(index2label) != n:
        raise FormatError(f"MLitB prototype model: index2label must map 0..{n - 1} to labels")
    try:
        return [str(index2label[str(i)]) for i in range(n)]
    except KeyError as e:
        raise FormatError(f"MLitB prototype model: index2label has no entry {e}") from None
