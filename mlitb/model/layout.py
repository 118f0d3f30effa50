"""The canonical flat float32 parameter vector of a spec.

Every component (optimizers, the wire protocol, both executors, every file format)
addresses parameters through this one layout, documented in docs/model.md:

* layers in spec order; within a layer its weights, then its biases;
* conv weights `[filters, sy, sx, in_depth]` (ConvNetJS filter Vol order
  ((sx*y)+x)*depth+d, one filter after another);
* fc weights `[num_neurons, num_inputs]`, the input index being the HWC flattening
  ((sx*y)+x)*depth+d of the volume below;
* biases `[out_depth]`;
* the layers of today's models (mlitb.model.norm_layers, sequence_layers, residual):
  their arrays as their `param_shapes` name them, a residual block's projection before
  its sub-layers (`Spec.walk` order); batchnorm's running statistics are in the vector
  too, as state that is not trained (`state_rates`).

So the vector is exactly ConvNetJS's `getParamsAndGrads()` concatenated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import Spec


@dataclass(frozen=True)
class Segment:
    """One parameter array inside the flat vector."""

    layer: int  # index into spec.walk (every layer depth-first; spec.layers when no blocks)
    name: str  # "filters", "biases", or a newer layer's array name ("gain", "qkv", ...)
    shape: tuple[int, ...]
    offset: int  # first element, in float32 elements

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size


def segments(spec: Spec) -> list[Segment]:
    out, offset = [], 0
    for i, layer in enumerate(spec.walk):
        for name, shape in layer.param_shapes():
            seg = Segment(i, name, tuple(shape), offset)
            out.append(seg)
            offset = seg.stop
    return out


def decay_multipliers(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (l1_mul, l2_mul), float32; biases get 0, as in ConvNetJS (and norms'
    gains, positions and state: Layer.decay_muls)."""
    l1 = np.zeros(spec.num_params, np.float32)
    l2 = np.zeros(spec.num_params, np.float32)
    for seg in segments(spec):
        l1[seg.offset : seg.stop], l2[seg.offset : seg.stop] = spec.walk[seg.layer].decay_muls(seg.name)
    return l1, l2


SHIFT_THROUGH = ("pool", "globalavgpool")  # a per-channel constant added before them comes out of them


def fixed_arrays(spec: Spec) -> list[tuple]:
    """(layer, array name) of every per-channel bias a batchnorm removes: the batch mean
    cancels a constant added to a channel, so such a bias has an exact gradient of 0 (and
    rounding noise in its place, which Adam would turn into full steps, differently in each
    executor). It is one whose output reaches a batchnorm through max or average pooling
    only: a conv's or fc's biases, a batchnorm's bias, a residual block's projection biases,
    and, when the block's sum goes on to a batchnorm, its last sub-layer's. Neither executor
    gives them a gradient (docs/model.md, "Arrays that stay fixed")."""
    out: list[tuple] = []

    def scan(layers, tail_feeds_bn: bool) -> None:
        for i, layer in enumerate(layers):
            j = i + 1
            while j < len(layers) and layers[j].type in SHIFT_THROUGH:
                j += 1
            feeds = layers[j].type == "batchnorm" if j < len(layers) else tail_feeds_bn
            if feeds and layer.type in ("conv", "fc"):
                out.append((layer, "biases"))
            elif feeds and layer.type == "batchnorm":
                out.append((layer, "bias"))
            elif feeds and layer.type == "residual" and layer.stride:
                out.append((layer, "biases"))
            scan(layer.children(), feeds and layer.type == "residual")

    scan(spec.layers, False)
    return out


def state_rates(spec: Spec) -> np.ndarray | None:
    """Per element, float32: 0 for trained parameters; for state that is not trained
    (batchnorm's running statistics) the share of a batch in it (the layer's momentum).
    None when the spec has no such state. Such an element's "gradient" is n x (state -
    the batch's statistic), and every optimizer steps it by exactly `rate x gradient / n`
    (an exponential moving average), never by its own rule: docs/model.md, "State that
    is not trained"."""
    rates = None
    for seg in segments(spec):
        layer = spec.walk[seg.layer]
        if seg.name in layer.buffers:
            rates = np.zeros(spec.num_params, np.float32) if rates is None else rates
            rates[seg.offset : seg.stop] = layer.momentum
    return rates


def init_params(spec: Spec, seed: int = 0) -> np.ndarray:
    """ConvNetJS initialisation: weights N(0, sqrt(1/fan_in)), biases bias_pref; newer
    layers as their `param_init` says (norm gains 1, embeddings N(0, 0.02)).

    fan_in is one filter's size (sx*sy*in_depth) or an fc's num_inputs. Draws come
    from NumPy's PCG64 in layout order, so a seed gives the same vector everywhere.
    """
    rng = np.random.default_rng(seed)
    params = np.empty(spec.num_params, np.float32)
    for seg in segments(spec):
        view = params[seg.offset : seg.stop]
        rule, value = spec.walk[seg.layer].param_init(seg.name)
        if rule == "fan_in":
            view[:] = rng.standard_normal(seg.size) * math.sqrt(1.0 / math.prod(seg.shape[1:]))
        elif rule == "normal":
            view[:] = rng.standard_normal(seg.size) * value
        else:
            view[:] = value
    return params
