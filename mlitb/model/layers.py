"""The layer types of the spec language, with ConvNetJS's defaults and shape rules.

One class per layer type, registered under its JSON name in `LAYER_TYPES`.
Each class knows how to read its own fields (`parse`), what shape it produces,
which parameter arrays it owns (`param_shapes`) and how to write itself in the
expanded form (`to_json`: ConvNetJS `toJSON()` field names, without weights).

Shapes are `(height, width, depth)` = ConvNetJS `(sy, sx, depth)`. Every output
size is floor((in + 2*pad - window) / stride + 1), as ConvNetJS computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .fields import FieldReader

Shape = tuple[int, int, int]  # (height, width, depth)


def _size(n_in: int, window: int, pad: int, stride: int) -> int:
    return (n_in + 2 * pad - window) // stride + 1


@dataclass(frozen=True, kw_only=True)
class Layer:
    """An expanded layer: every default resolved, input and output shapes known."""

    type: ClassVar[str] = ""
    is_loss: ClassVar[bool] = False
    fields: ClassVar[frozenset[str]] = frozenset()

    in_shape: Shape
    out_shape: Shape

    @classmethod
    def parse(cls, r: FieldReader, in_shape: Shape, expanded: bool) -> Layer:
        raise NotImplementedError

    # arrays of `param_shapes` that are state, not trained: no gradient step, no decay
    # (batchnorm's running statistics; combined as docs/model.md, "State that is not trained")
    buffers: ClassVar[frozenset[str]] = frozenset()

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Parameter arrays in canonical order (see docs/model.md)."""
        return []

    def param_init(self, name: str) -> tuple[str, float]:
        """How array `name` starts: ("fan_in", 0): N(0, 1/fan_in), fan_in = the product of
        its shape but the first axis (ConvNetJS); ("normal", std); ("const", value)."""
        return ("fan_in", 0.0) if name == "filters" else ("const", 0.0)

    def decay_muls(self, name: str) -> tuple[float, float]:
        """(l1, l2) weight-decay multipliers of array `name`: ConvNetJS decays filters only."""
        return (0.0, 0.0)

    def children(self) -> tuple[Layer, ...]:
        """Sub-layers (a residual block's), in order; they own their own arrays."""
        return ()

    def to_json(self) -> dict:
        h, w, d = self.out_shape
        return {"layer_type": self.type, "out_sx": w, "out_sy": h, "out_depth": d}


@dataclass(frozen=True, kw_only=True)
class InputLayer(Layer):
    type: ClassVar[str] = "input"
    fields: ClassVar[frozenset[str]] = frozenset(
        {"out_sx", "out_sy", "out_depth", "in_sx", "in_sy", "in_depth"}
    )

    @classmethod
    def parse(cls, r, in_shape, expanded):
        # ConvNetJS accepts either out_* or in_* names for the input size.
        w = r.int("out_sx") if r.has("out_sx") or not r.has("in_sx") else r.int("in_sx")
        h = r.int("out_sy") if r.has("out_sy") or not r.has("in_sy") else r.int("in_sy")
        d = r.int("out_depth") if r.has("out_depth") or not r.has("in_depth") else r.int("in_depth")
        return cls(in_shape=(h, w, d), out_shape=(h, w, d))


@dataclass(frozen=True, kw_only=True)
class _Weighted(Layer):
    """conv and fc: filters + biases, decay multipliers (biases get none)."""

    l1_decay_mul: float
    l2_decay_mul: float
    bias_pref: float

    @staticmethod
    def _decay_and_bias(r: FieldReader, expanded: bool) -> dict:
        # ConvNetJS's constructors default to l1 0 / l2 1; its fromJSON to 1 / 1.
        return {
            "l1_decay_mul": r.float("l1_decay_mul", 1.0 if expanded else 0.0, minimum=0.0),
            "l2_decay_mul": r.float("l2_decay_mul", 1.0, minimum=0.0),
            "bias_pref": r.float("bias_pref", 0.0),
        }

    def param_init(self, name: str) -> tuple[str, float]:
        return ("fan_in", 0.0) if name == "filters" else ("const", self.bias_pref)

    def decay_muls(self, name: str) -> tuple[float, float]:
        return (self.l1_decay_mul, self.l2_decay_mul) if name == "filters" else (0.0, 0.0)

    def to_json(self) -> dict:
        out = super().to_json()
        out.update(l1_decay_mul=self.l1_decay_mul, l2_decay_mul=self.l2_decay_mul)
        out["bias_pref"] = self.bias_pref
        return out


@dataclass(frozen=True, kw_only=True)
class ConvLayer(_Weighted):
    type: ClassVar[str] = "conv"
    fields: ClassVar[frozenset[str]] = frozenset(
        {"filters", "sx", "sy", "stride", "pad", "l1_decay_mul", "l2_decay_mul", "bias_pref"}
        | {"in_depth", "out_depth", "out_sx", "out_sy", "in_sx", "in_sy"}
    )
    sx: int
    sy: int
    stride: int
    pad: int

    @classmethod
    def parse(cls, r, in_shape, expanded):
        filters = r.int("out_depth" if expanded else "filters")
        sx = r.int("sx")
        sy = r.int("sy", sx)
        stride = r.int("stride", 1)
        pad = r.int("pad", 0, minimum=0)
        h, w, _ = in_shape
        for name, win, n_in in (("sx", sx, w), ("sy", sy, h)):
            if win > n_in + 2 * pad:
                raise r.error(
                    name,
                    f"a filter no larger than the padded input ({n_in} + 2*{pad} = {n_in + 2 * pad})",
                    win,
                    "use a smaller filter or more padding",
                )
        out = (_size(h, sy, pad, stride), _size(w, sx, pad, stride), filters)
        return cls(
            in_shape=in_shape,
            out_shape=out,
            sx=sx,
            sy=sy,
            stride=stride,
            pad=pad,
            **cls._decay_and_bias(r, expanded),
        )

    def param_shapes(self):
        return [("filters", (self.out_shape[2], self.sy, self.sx, self.in_shape[2])),
                ("biases", (self.out_shape[2],))]  # fmt: skip

    def to_json(self):
        out = super().to_json()
        out.update(sx=self.sx, sy=self.sy, stride=self.stride, pad=self.pad)
        out["in_depth"] = self.in_shape[2]
        return out


@dataclass(frozen=True, kw_only=True)
class FullyConnLayer(_Weighted):
    type: ClassVar[str] = "fc"
    fields: ClassVar[frozenset[str]] = frozenset(
        {"num_neurons", "filters", "l1_decay_mul", "l2_decay_mul", "bias_pref"}
        | {"num_inputs", "out_depth", "out_sx", "out_sy"}
    )

    @property
    def num_inputs(self) -> int:
        h, w, d = self.in_shape
        return h * w * d

    @classmethod
    def parse(cls, r, in_shape, expanded):
        if expanded:
            n = r.int("out_depth")
        else:  # ConvNetJS allows 'filters' as another name for num_neurons
            n = r.int("filters") if r.has("filters") and not r.has("num_neurons") else None
            n = n if n is not None else r.int("num_neurons")
        h, w, d = in_shape
        if expanded and r.has("num_inputs") and r.int("num_inputs") != h * w * d:
            raise r.error("num_inputs", f"{h * w * d} (the size of the layer below)",
                          r.raw["num_inputs"])  # fmt: skip
        return cls(in_shape=in_shape, out_shape=(1, 1, n), **cls._decay_and_bias(r, expanded))

    def param_shapes(self):
        return [("filters", (self.out_shape[2], self.num_inputs)),
                ("biases", (self.out_shape[2],))]  # fmt: skip

    def to_json(self):
        out = super().to_json()
        out["num_inputs"] = self.num_inputs
        return out


@dataclass(frozen=True, kw_only=True)
class PoolLayer(Layer):
    """Max pooling; padded positions are skipped (never win), as in ConvNetJS."""

    type: ClassVar[str] = "pool"
    fields: ClassVar[frozenset[str]] = frozenset(
        {"sx", "sy", "stride", "pad", "in_depth", "out_depth", "out_sx", "out_sy"}
    )
    sx: int
    sy: int
    stride: int
    pad: int

    @classmethod
    def parse(cls, r, in_shape, expanded):
        sx = r.int("sx")
        sy = r.int("sy", sx)
        stride = r.int("stride", 2)
        pad = r.int("pad", 0, minimum=0)
        h, w, d = in_shape
        for name, win, n_in in (("sx", sx, w), ("sy", sy, h)):
            if win > n_in + 2 * pad:
                raise r.error(
                    name,
                    f"a window no larger than the padded input ({n_in} + 2*{pad} = "
                    f"{n_in + 2 * pad}); this pool would shrink the volume below 1x1",
                    win,
                    "use a smaller window, or remove a pooling layer above",
                )
            if pad >= win:
                # A window entirely inside the padding has no input to take a max of
                # (ConvNetJS outputs -99999 there and routes its gradient nowhere).
                raise r.error("pad", f"a padding smaller than the window ({name}={win})", pad)
        out = (_size(h, sy, pad, stride), _size(w, sx, pad, stride), d)
        return cls(in_shape=in_shape, out_shape=out, sx=sx, sy=sy, stride=stride, pad=pad)

    def to_json(self):
        out = super().to_json()
        out.update(sx=self.sx, sy=self.sy, stride=self.stride, pad=self.pad)
        out["in_depth"] = self.in_shape[2]
        return out


@dataclass(frozen=True, kw_only=True)
class _Elementwise(Layer):
    fields: ClassVar[frozenset[str]] = frozenset({"out_depth", "out_sx", "out_sy"})

    @classmethod
    def parse(cls, r, in_shape, expanded):
        return cls(in_shape=in_shape, out_shape=in_shape)


class ReluLayer(_Elementwise):
    type: ClassVar[str] = "relu"


class SigmoidLayer(_Elementwise):
    type: ClassVar[str] = "sigmoid"


class TanhLayer(_Elementwise):
    type: ClassVar[str] = "tanh"


@dataclass(frozen=True, kw_only=True)
class MaxoutLayer(Layer):
    """Max over groups of `group_size` consecutive channels; leftover channels are dropped."""

    type: ClassVar[str] = "maxout"
    fields: ClassVar[frozenset[str]] = frozenset({"group_size", "out_depth", "out_sx", "out_sy"})
    group_size: int

    @classmethod
    def parse(cls, r, in_shape, expanded):
        g = r.int("group_size", 2)
        h, w, d = in_shape
        if d < g:
            raise r.error("group_size", f"at most the input depth {d}", g)
        return cls(in_shape=in_shape, out_shape=(h, w, d // g), group_size=g)

    def to_json(self):
        return {**super().to_json(), "group_size": self.group_size}


@dataclass(frozen=True, kw_only=True)
class DropoutLayer(Layer):
    """ConvNetJS dropout: training zeroes each unit with probability drop_prob and does
    not rescale; prediction multiplies by drop_prob (its quirk, kept so that imported
    nets predict identically; it equals the usual rule only at drop_prob 0.5)."""

    type: ClassVar[str] = "dropout"
    fields: ClassVar[frozenset[str]] = frozenset({"drop_prob", "out_depth", "out_sx", "out_sy"})
    drop_prob: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        p = r.float("drop_prob", 0.5, minimum=0.0, below=1.0)
        if p <= 0:  # would zero every activation at prediction time (the scaling above)
            raise r.error("drop_prob", "a probability in (0, 1)", p, "remove the dropout layer")
        return cls(in_shape=in_shape, out_shape=in_shape, drop_prob=p)

    def to_json(self):
        return {**super().to_json(), "drop_prob": self.drop_prob}


@dataclass(frozen=True, kw_only=True)
class LRNLayer(Layer):
    """Local response normalisation across channels: a_i / (k + alpha/n * sum a_j^2)^beta,
    j in [i - n//2, i + n//2] clipped to the volume (ConvNetJS's window)."""

    type: ClassVar[str] = "lrn"
    fields: ClassVar[frozenset[str]] = frozenset({"k", "n", "alpha", "beta", "out_depth", "out_sx", "out_sy"})
    k: float
    n: int
    alpha: float
    beta: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        k = r.float("k")
        n = r.int("n")
        alpha = r.float("alpha")
        beta = r.float("beta")
        if k <= 0:
            raise r.error("k", "a number > 0 (it keeps the denominator positive)", k)
        if alpha < 0:
            raise r.error("alpha", "a number >= 0", alpha)
        return cls(in_shape=in_shape, out_shape=in_shape, k=k, n=n, alpha=alpha, beta=beta)

    def to_json(self):
        return {**super().to_json(), "k": self.k, "n": self.n, "alpha": self.alpha,
                "beta": self.beta}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class _LossLayer(Layer):
    """Loss layers work on the flattened input (its HWC order) of num_inputs values."""

    is_loss: ClassVar[bool] = True
    fields: ClassVar[frozenset[str]] = frozenset({"num_inputs", "out_depth", "out_sx", "out_sy"})
    min_inputs: ClassVar[int] = 1

    @property
    def num_inputs(self) -> int:
        h, w, d = self.in_shape
        return h * w * d

    @classmethod
    def parse(cls, r, in_shape, expanded):
        h, w, d = in_shape
        n = h * w * d
        if expanded and r.has("num_inputs") and r.int("num_inputs") != n:
            raise r.error("num_inputs", f"{n} (the size of the layer below)", r.raw["num_inputs"])
        if n < cls.min_inputs:
            raise r.error(None, f"at least {cls.min_inputs} inputs", n)
        return cls(in_shape=in_shape, out_shape=(1, 1, n))

    def to_json(self):
        return {**super().to_json(), "num_inputs": self.num_inputs}


class SoftmaxLayer(_LossLayer):
    type: ClassVar[str] = "softmax"
    min_inputs: ClassVar[int] = 2


class SVMLayer(_LossLayer):
    type: ClassVar[str] = "svm"
    min_inputs: ClassVar[int] = 2


class RegressionLayer(_LossLayer):
    type: ClassVar[str] = "regression"


# Every layer type by its JSON name; mlitb.model.modern adds the layers of today's
# models (normalisation, residual blocks, embeddings, attention) when it is imported,
# which mlitb.model.spec does.
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.type: cls
    for cls in (
        InputLayer,
        ConvLayer,
        FullyConnLayer,
        PoolLayer,
        ReluLayer,
        SigmoidLayer,
        TanhLayer,
        MaxoutLayer,
        DropoutLayer,
        LRNLayer,
        SoftmaxLayer,
        SVMLayer,
        RegressionLayer,
    )
}
