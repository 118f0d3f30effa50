"""The model spec: ConvNetJS `layer_defs`, desugared and validated into a `Spec`.

Two input forms exist, told apart by their key:

* definitions (`{"type": ...}`): what a user writes; sugar is expanded exactly as
  ConvNetJS's `Net.makeLayers` does it (an fc before softmax/svm/regression,
  `activation` and `drop_prob` appended as layers, `bias_pref` 0.1 before relu).
* expanded layers (`{"layer_type": ...}`): ConvNetJS `net.toJSON()` layers, and our
  own canonical form; nothing is inserted, derived sizes are checked.

A `Spec` is immutable; its `layers` decide the parameter layout (`layout.py`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from . import norm_layers, residual, sequence_layers
from .errors import SpecError
from .fields import FieldReader
from .layers import LAYER_TYPES, Layer, Shape

for _module in (norm_layers, sequence_layers, residual):  # today's layers beside ConvNetJS's
    for _cls in vars(_module).values():
        if isinstance(_cls, type) and issubclass(_cls, Layer) and _cls.type and not _cls.type.startswith("_"):
            LAYER_TYPES.setdefault(_cls.type, _cls)

# A hostile or mistaken spec must not make the server allocate gigabytes.
MAX_PARAMS = 50_000_000
MAX_ACTIVATIONS = 20_000_000  # values in one layer's output, per example
MAX_LAYERS = 256
MAX_DEPTH = 16  # blocks inside blocks, at most (a deeper spec is refused before recursion runs out)

_ACTIVATIONS = ("relu", "sigmoid", "tanh", "maxout", "gelu")
_SUGAR = {"activation", "drop_prob", "group_size", "num_classes", "bias_pref", "tensor"}
# definitions that stand for other layers, expanded once their input shape is known
_BLOCK_SUGAR = {"transformer": residual.TRANSFORMER_FIELDS}


@dataclass(frozen=True)
class Spec:
    layers: tuple[Layer, ...]

    @property
    def input_shape(self) -> Shape:
        return self.layers[0].out_shape

    @property
    def loss(self) -> str:
        return self.layers[-1].type

    @property
    def num_outputs(self) -> int:
        return self.layers[-1].out_shape[2]

    @cached_property
    def walk(self) -> tuple[Layer, ...]:
        """Every layer depth-first, a block before its sub-layers: the order of the flat
        parameter vector, and the index both executors give a layer (dropout keys)."""
        out: list[Layer] = []

        def visit(layers) -> None:
            for layer in layers:
                out.append(layer)
                visit(layer.children())

        visit(self.layers)
        return tuple(out)

    @cached_property
    def num_params(self) -> int:
        return sum(math.prod(shape) for layer in self.walk for _, shape in layer.param_shapes())

    @cached_property
    def values_per_example(self) -> int:
        """Activation values one example holds through a forward pass (every layer's output,
        and attention's scores and their softmax): what bounds how many examples a chunk
        may hold (mlitb.model.torch_executor)."""
        total = 0
        for layer in self.walk:
            h, w, d = layer.out_shape
            total += h * w * d
            if layer.type == "attention":
                t = layer.in_shape[0] * layer.in_shape[1]
                total += 2 * layer.heads * t * t
        return total

    @property
    def positions(self) -> int:
        """Targets per item: 1, or a sequence loss's positions (next-token prediction)."""
        return getattr(self.layers[-1], "positions", 1)

    def to_json(self) -> list[dict]:
        """The expanded form; `Spec.from_json(spec.to_json()) == spec`."""
        return [layer.to_json() for layer in self.layers]

    @classmethod
    def from_json(cls, layers: object, max_params: int = MAX_PARAMS) -> Spec:
        """Build from either form (definitions or expanded), detected per list."""
        items = _as_list(layers)
        if all(isinstance(d, Mapping) and "layer_type" in d for d in items):
            return from_expanded(items, max_params)
        return expand(items, max_params)


def expand(defs: object, max_params: int = MAX_PARAMS) -> Spec:
    """Desugar and validate ConvNetJS `layer_defs`."""
    return _build(_desugar(_as_list(defs)), expanded=False, max_params=max_params)


def _desugar(items: Sequence, prefix: str = "") -> list[tuple[int | str, dict]]:
    """(index of the user's definition, plain layer def) for each layer the definitions
    stand for; a block's sub-layers are desugared too (indices "3.1")."""
    if prefix.count(".") > MAX_DEPTH:
        raise SpecError(prefix.rstrip("."), "residual", "layers", f"blocks nested at most {MAX_DEPTH} deep",
                        prefix.count("."))  # fmt: skip
    flat: list[tuple[int | str, dict]] = []
    for j, raw in enumerate(items):
        i = f"{prefix}{j}" if prefix else j
        if not isinstance(raw, Mapping):
            raise SpecError(i, None, None, "a JSON object with a 'type'", raw)
        t = raw.get("type")
        if "layer_type" in raw:
            lt = raw["layer_type"] if isinstance(raw["layer_type"], str) else None
            raise SpecError(
                i, lt, "type", "every layer in the same form", raw["layer_type"],
                "do not mix 'type' definitions and 'layer_type' (expanded) layers",
            )  # fmt: skip
        if isinstance(t, str) and t in _BLOCK_SUGAR:
            r = FieldReader(raw, i, t)
            r.check_misspelt(set(_BLOCK_SUGAR[t]))
            r.used |= set(_BLOCK_SUGAR[t])
            r.check_unknown(set(_BLOCK_SUGAR[t]))
            flat.append((i, dict(raw)))  # expanded by _build_block, which knows its input depth
            continue
        if not isinstance(t, str) or t not in LAYER_TYPES:
            known = [*LAYER_TYPES, *_BLOCK_SUGAR]
            raise SpecError(
                i, None, "type", "one of " + ", ".join(known), t if t is not None else "nothing",
                "quadtransform is not supported" if t == "quadtransform" else None,
            )  # fmt: skip
        if i == 0 and t != "input":
            raise SpecError(i, t, "type", "the first layer to be 'input'", t)
        FieldReader(raw, i, t).check_misspelt(_definition_fields(t))
        if raw.get("tensor"):
            raise SpecError(i, t, "tensor", "no 'tensor' (quadtransform is not supported)", True)
        d = {k: v for k, v in raw.items() if k not in _SUGAR and k != "type"}
        if t in ("softmax", "svm", "seqsoftmax"):  # checked here, so the error names the user's field
            if "num_classes" not in raw and t != "seqsoftmax":
                raise SpecError(i, t, "num_classes", "the number of classes (an integer >= 2)",
                                None, "add 'num_classes'")  # fmt: skip
            if "num_classes" in raw:
                n = FieldReader(raw, i, t).int("num_classes", minimum=2)
                # a sequence's classes come from a per-position linear map (a 1x1 conv)
                sugar = (
                    {"type": "conv", "sx": 1, "filters": n}
                    if t == "seqsoftmax"
                    else {"type": "fc", "num_neurons": n}
                )
                flat.append((i, sugar))
        if t == "residual":
            children = raw.get("layers")
            if not isinstance(children, list) or not children:
                raise SpecError(
                    i, t, "layers", "a non-empty list of layer definitions (the block's f)", children
                )
            d["layers"] = _desugar(children, f"{i}.")
        if t == "regression":
            if "num_neurons" not in raw:
                raise SpecError(i, t, "num_neurons", "the number of outputs (an integer >= 1)",
                                None, "add 'num_neurons'")  # fmt: skip
            n = FieldReader(raw, i, t).int("num_neurons", minimum=1)
            flat.append((i, {"type": "fc", "num_neurons": n}))
            d.pop("num_neurons")
        if t in ("fc", "conv"):
            bias = raw.get("bias_pref")
            d["bias_pref"] = bias if bias is not None else (
                0.1 if raw.get("activation") == "relu" else 0.0)  # fmt: skip
        elif "bias_pref" in raw:
            raise SpecError(i, t, "bias_pref", "bias_pref only on fc and conv layers", raw["bias_pref"])
        if t == "maxout" and "group_size" in raw:
            d["group_size"] = raw["group_size"]
        if t == "dropout" and "drop_prob" in raw:
            d["drop_prob"] = raw["drop_prob"]
        flat.append((i, {"type": t, **d}))
        act = raw.get("activation")
        if act is not None:
            if act not in _ACTIVATIONS:
                raise SpecError(i, t, "activation", "one of " + ", ".join(_ACTIVATIONS), act)
            extra = {"group_size": raw["group_size"]} if act == "maxout" and "group_size" in raw else {}
            flat.append((i, {"type": act, **extra}))
        if "group_size" in raw and t != "maxout" and act != "maxout":
            raise SpecError(i, t, "group_size", "group_size only with activation 'maxout'", raw["group_size"])
        if "drop_prob" in raw and t != "dropout":
            flat.append((i, {"type": "dropout", "drop_prob": raw["drop_prob"]}))
    return flat


def _definition_fields(t: str) -> set[str]:
    """What a user's definition of type `t` may hold: the layer's fields and the sugar."""
    known = set(LAYER_TYPES[t].fields) | {"activation", "drop_prob", "group_size", "bias_pref"}
    if t in ("softmax", "svm", "seqsoftmax"):
        known.add("num_classes")
    if t == "regression":
        known.add("num_neurons")
    return known


def from_expanded(layers: object, max_params: int = MAX_PARAMS) -> Spec:
    """Validate expanded layers (ConvNetJS `toJSON()` form, weights ignored here)."""
    items = _as_list(layers)
    flat = []
    for i, raw in enumerate(items):
        if not isinstance(raw, Mapping):
            raise SpecError(i, None, None, "a JSON object with a 'layer_type'", raw)
        t = raw.get("layer_type")
        if t not in LAYER_TYPES:
            raise SpecError(i, None, "layer_type", "one of " + ", ".join(LAYER_TYPES), t)
        # Weights ('filters' and 'biases' as Vols) are read by the file format, not here.
        weights = ("filters", "biases")
        flat.append(
            (i, {k: v for k, v in raw.items() if k not in weights or not isinstance(v, list | Mapping)})
        )
    return _build(flat, expanded=True, max_params=max_params)


def _as_list(defs: object) -> Sequence:
    if isinstance(defs, Mapping) and "layers" in defs:
        defs = defs["layers"]
    if not isinstance(defs, list | tuple):
        raise SpecError(None, None, None, "a list of layer definitions", defs)
    if len(defs) < 2:
        raise SpecError(None, None, None, "at least an input layer and a loss layer",
                        f"{len(defs)} layer(s)")  # fmt: skip
    if len(defs) > MAX_LAYERS:
        raise SpecError(None, None, None, f"at most {MAX_LAYERS} layers", len(defs))
    return defs


def _build(flat: list[tuple[int | str, dict]], expanded: bool, max_params: int) -> Spec:
    layers = _build_layers(flat, (0, 0, 0), expanded, top=True)
    spec = Spec(tuple(layers))
    if len(spec.walk) > MAX_LAYERS:
        raise SpecError(None, None, None, f"at most {MAX_LAYERS} layers after expansion", len(spec.walk))
    if spec.num_params > max_params:
        raise SpecError(None, None, None, f"at most {max_params} parameters", spec.num_params,
                        "use fewer or smaller layers")  # fmt: skip
    return spec


def build_block(items: list, in_shape: Shape, expanded: bool, parent: int | str | None) -> list[Layer]:
    """A residual block's sub-layers from `in_shape`: desugared (index, def) pairs, or
    expanded layer dicts (indexed "parent.j")."""
    if str(parent).count(".") >= MAX_DEPTH:
        raise SpecError(parent, "residual", "layers", f"blocks nested at most {MAX_DEPTH} deep",
                        str(parent).count(".") + 1)  # fmt: skip
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        flat = list(items)
    else:
        flat = [(f"{parent}.{j}", x) for j, x in enumerate(items)]
        for i, x in flat:
            if not isinstance(x, Mapping) or ("layer_type" if expanded else "type") not in x:
                form = "'layer_type'" if expanded else "'type'"
                raise SpecError(i, None, None, f"a JSON object with a {form}", x)
    return _build_layers(flat, in_shape, expanded, top=False)


def _build_layers(flat: list[tuple[int | str, dict]], shape: Shape, expanded: bool, top: bool) -> list[Layer]:
    if len(flat) > MAX_LAYERS:
        raise SpecError(None, None, None, f"at most {MAX_LAYERS} layers after expansion", len(flat))
    layers: list[Layer] = []
    queue = list(flat)
    while queue:
        i, d = queue.pop(0)
        t = d.get("layer_type", d.get("type"))
        if t in _BLOCK_SUGAR:  # now that the depth is known
            queue[:0] = _desugar(residual.transformer_blocks(d, shape[2]), f"{i}.")
            continue
        if t not in LAYER_TYPES:
            raise SpecError(i, None, "layer_type", "one of " + ", ".join(LAYER_TYPES), t)
        cls = LAYER_TYPES[t]
        first, last = not layers, not queue
        if not top and (t == "input" or cls.is_loss):
            raise SpecError(i, t, "type", "no input or loss layer inside a block", t)
        if top and first and t != "input":
            raise SpecError(i, t, "type", "the first layer to be 'input'", t)
        if top and not first and t == "input":
            raise SpecError(i, t, "type", "'input' only as the first layer", t)
        if top and cls.is_loss and not last:
            raise SpecError(i, t, "type", "a loss layer (softmax, seqsoftmax, svm, regression) only last", t)
        if top and last and not cls.is_loss:
            fix = 'end the spec with e.g. {"type": "softmax", "num_classes": 10}'
            raise SpecError(
                i, t, "type", "the last layer to be softmax, seqsoftmax, svm or regression", t, fix
            )
        r = FieldReader(d, i, t)
        r.build_block = lambda items, in_shape, where=i: build_block(items, in_shape, expanded, where)
        r.check_misspelt(set(cls.fields))
        layer = cls.parse(r, shape, expanded)
        r.check_unknown(set(cls.fields))
        if expanded:
            _check_declared_shape(r, layer)
        if min(layer.out_shape) < 1:
            raise SpecError(i, t, None, "an output volume of at least 1x1x1",
                            "x".join(map(str, layer.out_shape)))  # fmt: skip
        h, w, c = layer.out_shape
        if h * w * c > MAX_ACTIVATIONS:
            raise SpecError(i, t, None, f"at most {MAX_ACTIVATIONS} output values", h * w * c)
        layers.append(layer)
        shape = layer.out_shape
    return layers


def _check_declared_shape(r: FieldReader, layer: Layer) -> None:
    """An imported file's own out_sx/out_sy/out_depth must agree with our arithmetic."""
    h, w, d = layer.out_shape
    for name, ours in (("out_sx", w), ("out_sy", h), ("out_depth", d), ("in_depth", None)):
        if name == "in_depth" and layer.type in ("conv", "pool") and r.has(name):
            ours = layer.in_shape[2]
        if ours is not None and r.has(name) and r.raw[name] != ours:
            raise r.error(name, f"{ours} (computed from the layers below)", r.raw[name])


def load_spec_file(path: str) -> Spec:
    """A JSON file holding layer definitions, expanded layers, or a full model file."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, Mapping) and "layer_defs" in data:
        data = data["layer_defs"]
    return Spec.from_json(data)
