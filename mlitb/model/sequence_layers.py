"""Token sequences: embeddings, learned positions, multi-head self-attention and the
softmax at every position of a language model.

A sequence of T tokens is the volume 1xTx1 of token ids (exact in float32 below 2^24);
`embedding` turns it into 1xTxE, and every later layer sees T positions of E channels.
Layers that work per position (layernorm, a 1x1 conv as the per-position linear map)
need nothing new. Attention reads every position of its input volume as one token, in
the volume's HWC order, so it also runs over the HxW positions of an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .layers import Layer, _LossLayer

_SHAPE = frozenset({"out_depth", "out_sx", "out_sy"})
MAX_VOCAB = 65_536  # token ids travel as uint16 (mlitb.data text items)
EMBED_STD = 0.02  # N(0, 0.02), GPT-2's initialisation of both embedding tables
MAX_SCORES = 4_000_000  # attention scores (heads x T x T) per example: 16 MB of float32


@dataclass(frozen=True, kw_only=True)
class EmbeddingLayer(Layer):
    """Token ids (the input's depth 1) -> their rows of a vocab x dim table."""

    type: ClassVar[str] = "embedding"
    fields: ClassVar[frozenset[str]] = _SHAPE | {"vocab", "dim", "l2_decay_mul"}
    vocab: int
    l2_decay_mul: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        vocab = r.int("vocab", minimum=2)
        if vocab > MAX_VOCAB:
            raise r.error("vocab", f"at most {MAX_VOCAB:,} tokens", vocab, "use a smaller vocabulary")
        dim = r.int("out_depth" if expanded else "dim")
        h, w, d = in_shape
        if d != 1:
            first = '{"type": "input", "out_sx": CONTEXT, "out_sy": 1, "out_depth": 1}'
            raise r.error(None, "an input of depth 1 (one token id per position)", f"{h}x{w}x{d}",
                          f"start with {first}")  # fmt: skip
        mul = r.float("l2_decay_mul", 1.0, minimum=0.0)
        return cls(in_shape=in_shape, out_shape=(h, w, dim), vocab=vocab, l2_decay_mul=mul)

    def param_shapes(self):
        return [("weights", (self.vocab, self.out_shape[2]))]

    def param_init(self, name):
        return ("normal", EMBED_STD)

    def decay_muls(self, name):
        return (0.0, self.l2_decay_mul)

    def to_json(self):
        return {**super().to_json(), "vocab": self.vocab, "l2_decay_mul": self.l2_decay_mul}


@dataclass(frozen=True, kw_only=True)
class PositionEmbeddingLayer(Layer):
    """Adds a learned vector per position (positions x depth), as GPT-2 does."""

    type: ClassVar[str] = "posembedding"
    fields: ClassVar[frozenset[str]] = _SHAPE

    @classmethod
    def parse(cls, r, in_shape, expanded):
        return cls(in_shape=in_shape, out_shape=in_shape)

    def param_shapes(self):
        h, w, d = self.in_shape
        return [("weights", (h * w, d))]

    def param_init(self, name):
        return ("normal", EMBED_STD)


@dataclass(frozen=True, kw_only=True)
class AttentionLayer(Layer):
    """Multi-head self-attention over the input's positions: q, k, v = x Wqkv^T + b split
    into `heads` heads of depth / heads; softmax(q k^T / sqrt(depth / heads)) v, future
    positions masked when `causal`; the heads concatenated and mapped by Wout, bout.
    Arrays: qkv [3D, D], qkv_biases [3D], out [D, D], out_biases [D]."""

    type: ClassVar[str] = "attention"
    fields: ClassVar[frozenset[str]] = _SHAPE | {"heads", "causal", "l2_decay_mul"}
    heads: int
    causal: bool
    l2_decay_mul: float

    @classmethod
    def parse(cls, r, in_shape, expanded):
        heads = r.int("heads", 1)
        causal = r.bool("causal", False)
        d = in_shape[2]
        if d % heads:
            divisors = [k for k in range(1, d + 1) if d % k == 0]
            raise r.error("heads", f"a divisor of the input depth {d} (each head gets depth / heads)", heads,
                          f"use one of {', '.join(map(str, divisors[:12]))}")  # fmt: skip
        mul = r.float("l2_decay_mul", 1.0, minimum=0.0)
        t = in_shape[0] * in_shape[1]
        if heads * t * t > MAX_SCORES:  # the heads x T x T scores of one example, like an output
            raise r.error(
                None, f"at most {MAX_SCORES:,} attention scores per example (heads x positions^2)",
                f"{heads} x {t}^2 = {heads * t * t:,}", "attend over fewer positions, or fewer heads",
            )  # fmt: skip
        return cls(in_shape=in_shape, out_shape=in_shape, heads=heads, causal=causal, l2_decay_mul=mul)

    @property
    def positions(self) -> int:
        return self.in_shape[0] * self.in_shape[1]

    def param_shapes(self):
        d = self.in_shape[2]
        return [("qkv", (3 * d, d)), ("qkv_biases", (3 * d,)), ("out", (d, d)), ("out_biases", (d,))]

    def param_init(self, name):
        return ("fan_in", 0.0) if name in ("qkv", "out") else ("const", 0.0)

    def decay_muls(self, name):
        return (0.0, self.l2_decay_mul) if name in ("qkv", "out") else (0.0, 0.0)

    def to_json(self):
        return {**super().to_json(), "heads": self.heads, "causal": self.causal,
                "l2_decay_mul": self.l2_decay_mul}  # fmt: skip


class SeqSoftmaxLayer(_LossLayer):
    """A softmax over the depth at every position: next-token prediction. Targets are one
    class per position; the loss is the summed -log p of every position's target, and
    reported per position (nats per token). Definitions: `num_classes` inserts the
    per-position linear map before it (a 1x1 conv of num_classes filters)."""

    type: ClassVar[str] = "seqsoftmax"
    min_inputs: ClassVar[int] = 2

    @classmethod
    def parse(cls, r, in_shape, expanded):
        d = in_shape[2]
        if d < 2:
            raise r.error(None, "at least 2 classes per position (the depth of the layer below)", d)
        return cls(in_shape=in_shape, out_shape=in_shape)

    @property
    def positions(self) -> int:
        return self.in_shape[0] * self.in_shape[1]

    def to_json(self):
        return {**Layer.to_json(self), "num_inputs": self.num_inputs}
