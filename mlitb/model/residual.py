"""Residual blocks: out = f(x) + shortcut(x), f a list of sub-layers (which may hold
blocks themselves); the shortcut is x itself when f keeps the shape, otherwise an
explicit 1x1 projection with the stride that gives f's height and width (a learned
1x1 conv, as in ResNet's projection shortcut). `transformer` is sugar for the two
pre-norm blocks of a GPT layer, expanded when its input depth is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .layers import Layer, Shape, _size

_SHAPE = frozenset({"out_depth", "out_sx", "out_sy"})


@dataclass(frozen=True, kw_only=True)
class ResidualLayer(Layer):
    type: ClassVar[str] = "residual"
    fields: ClassVar[frozenset[str]] = _SHAPE | {"layers", "stride", "l2_decay_mul"}
    layers: tuple[Layer, ...]
    stride: int  # the projection's (0: no projection, the identity shortcut)
    l2_decay_mul: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        raw = r.raw.get("layers")
        r.used.add("layers")
        if not isinstance(raw, list) or not raw:
            raise r.error("layers", "a non-empty list of layers (the block's f)", raw)
        children = r.build_block(raw, in_shape)  # the spec's own builder (mlitb.model.spec)
        out = children[-1].out_shape
        stride = 0 if out == in_shape else _projection_stride(in_shape, out)
        if stride is None:
            raise r.error(
                "layers",
                f"a block output a strided 1x1 projection of the input {_hwd(in_shape)} can match",
                _hwd(out),
                "keep the height and width, or shrink them by a whole stride (e.g. a conv with stride 2)",
            )
        if expanded and r.has("stride") and r.int("stride", minimum=0) != stride:
            raise r.error("stride", f"{stride} (computed from the block's shapes)", r.raw["stride"])
        r.used.add("stride")
        mul = r.float("l2_decay_mul", 1.0, minimum=0.0)
        return cls(in_shape=in_shape, out_shape=out, layers=tuple(children), stride=stride, l2_decay_mul=mul)

    def children(self) -> tuple[Layer, ...]:
        return self.layers

    def param_shapes(self):
        if not self.stride:
            return []
        d_out, d_in = self.out_shape[2], self.in_shape[2]
        return [("filters", (d_out, 1, 1, d_in)), ("biases", (d_out,))]  # conv layout

    def decay_muls(self, name):
        return (0.0, self.l2_decay_mul) if name == "filters" else (0.0, 0.0)

    def to_json(self):
        return {**super().to_json(), "layers": [c.to_json() for c in self.layers], "stride": self.stride,
                "l2_decay_mul": self.l2_decay_mul}  # fmt: skip


def _projection_stride(in_shape: Shape, out: Shape) -> int | None:
    (h, w, _), (oh, ow, _) = in_shape, out
    for s in range(1, max(h, w) + 1):
        if _size(h, 1, 0, s) == oh and _size(w, 1, 0, s) == ow:
            return s
    return None


def _hwd(shape: Shape) -> str:
    return "x".join(map(str, shape))


# no drop_prob: the spec's dropout is ConvNetJS's (prediction scales by drop_prob, not by
# 1 - drop_prob), which inside a residual branch would predict with another network
TRANSFORMER_FIELDS = frozenset({"heads", "causal", "mlp"})


def transformer_blocks(d: dict, depth: int) -> list[dict]:
    """`{"type": "transformer", "heads": H, "causal": C, "mlp": M}` on an input of depth D:
    x + attention(layernorm(x)), then x + W2 gelu(W1 layernorm(x)) with W1 D -> M*D (M 4
    by default) and W2 back to D, both per position (1x1 convs)."""
    mlp = d.get("mlp", 4)
    if isinstance(mlp, bool) or not isinstance(mlp, int | float) or mlp < 1 or mlp != int(mlp) or mlp > 16:
        from .errors import SpecError

        raise SpecError(None, "transformer", "mlp", "an integer 1-16 (the MLP's width over the depth)", mlp)
    attention = {"type": "attention", "heads": d.get("heads", 1), "causal": d.get("causal", False)}
    mlp_layers: list[dict] = [
        {"type": "layernorm"},
        {"type": "conv", "sx": 1, "filters": int(mlp) * depth, "bias_pref": 0.0},
        {"type": "gelu"},
        {"type": "conv", "sx": 1, "filters": depth, "bias_pref": 0.0},
    ]
    return [
        {"type": "residual", "layers": [{"type": "layernorm"}, attention]},
        {"type": "residual", "layers": mlp_layers},
    ]
