"""Normalisation, GELU and global average pooling: the layers residual nets and
transformers are made of, beyond ConvNetJS's.

Shapes are (height, width, depth) as everywhere in the spec; "per position" means per
(y, x), "per channel" per depth index. Both executors (mlitb.model.torch_executor and
the browser's engine/tfjs_engine.js) compute them with the formulas written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .layers import Layer, _Elementwise

_SHAPE = frozenset({"out_depth", "out_sx", "out_sy"})


class GeluLayer(_Elementwise):
    """GELU, the exact form x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (not the tanh
    approximation: both executors have erf)."""

    type: ClassVar[str] = "gelu"


@dataclass(frozen=True, kw_only=True)
class GlobalAvgPoolLayer(Layer):
    """The mean over every position: HxWxD -> 1x1xD."""

    type: ClassVar[str] = "globalavgpool"
    fields: ClassVar[frozenset[str]] = _SHAPE | {"in_depth"}

    @classmethod
    def parse(cls, r, in_shape, expanded):
        return cls(in_shape=in_shape, out_shape=(1, 1, in_shape[2]))


@dataclass(frozen=True, kw_only=True)
class _Norm(Layer):
    """y = (x - mean) / sqrt(var + eps) * gain + bias, var the biased variance; gain starts
    at 1, bias at 0, neither decays."""

    fields: ClassVar[frozenset[str]] = _SHAPE | {"eps"}
    eps: float

    def param_shapes(self):
        d = self.in_shape[2]
        return [("gain", (d,)), ("bias", (d,))]

    def param_init(self, name):
        return ("const", 1.0 if name in ("gain", "running_var") else 0.0)

    def to_json(self):
        return {**super().to_json(), "eps": self.eps}


@dataclass(frozen=True, kw_only=True)
class LayerNormLayer(_Norm):
    """Per position, over the depth axis (a transformer's LayerNorm; on images, the
    channels-last layer norm of ConvNeXt)."""

    type: ClassVar[str] = "layernorm"

    @classmethod
    def parse(cls, r, in_shape, expanded):
        eps = r.float("eps", 1e-5, minimum=1e-12)
        if in_shape[2] < 2:
            raise r.error(None, "an input depth of at least 2 (it normalises over depth)", in_shape[2])
        return cls(in_shape=in_shape, out_shape=in_shape, eps=eps)


@dataclass(frozen=True, kw_only=True)
class BatchNormLayer(_Norm):
    """Per channel, over the batch and every position. Training normalises with the
    batch's own statistics; prediction with the running ones, which are state, not
    trained: each training batch moves them by `momentum` towards its mean and unbiased
    variance (PyTorch's rule), and the master combines the clients' moves as
    docs/model.md, "State that is not trained", says."""

    type: ClassVar[str] = "batchnorm"
    fields: ClassVar[frozenset[str]] = _Norm.fields | {"momentum"}
    buffers: ClassVar[frozenset[str]] = frozenset({"running_mean", "running_var"})
    momentum: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        eps = r.float("eps", 1e-5, minimum=1e-12)
        momentum = r.float("momentum", 0.1, minimum=0.0, below=1.0)
        if momentum <= 0:
            raise r.error("momentum", "a number in (0, 1): the share of a batch in the running statistics",
                          momentum)  # fmt: skip
        return cls(in_shape=in_shape, out_shape=in_shape, eps=eps, momentum=momentum)

    def param_shapes(self):
        d = self.in_shape[2]
        return [*super().param_shapes(), ("running_mean", (d,)), ("running_var", (d,))]

    def to_json(self):
        return {**super().to_json(), "momentum": self.momentum}
