"""The canonical flat float32 parameter vector of a spec.

Every component (optimizers, the wire protocol, both executors, every file format)
addresses parameters through this one layout, documented in docs/model.md:

* layers in spec order; within a layer its weights, then its biases;
* conv weights `[filters, sy, sx, in_depth]` (ConvNetJS filter Vol order
  ((sx*y)+x)*depth+d, one filter after another);
* fc weights `[num_neurons, num_inputs]`, the input index being the HWC flattening
  ((sx*y)+x)*depth+d of the volume below;
* biases `[out_depth]`.

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

    layer: int  # index into spec.layers
    name: str  # "filters" or "biases"
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
    for i, layer in enumerate(spec.layers):
        for name, shape in layer.param_shapes():
            seg = Segment(i, name, tuple(shape), offset)
            out.append(seg)
            offset = seg.stop
    return out


def decay_multipliers(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (l1_mul, l2_mul), float32; biases get 0, as in ConvNetJS."""
    l1 = np.zeros(spec.num_params, np.float32)
    l2 = np.zeros(spec.num_params, np.float32)
    for seg in segments(spec):
        if seg.name == "filters":
            layer = spec.layers[seg.layer]
            l1[seg.offset : seg.stop] = layer.l1_decay_mul
            l2[seg.offset : seg.stop] = layer.l2_decay_mul
    return l1, l2


def init_params(spec: Spec, seed: int = 0) -> np.ndarray:
    """ConvNetJS initialisation: weights N(0, sqrt(1/fan_in)), biases bias_pref.

    fan_in is one filter's size (sx*sy*in_depth) or an fc's num_inputs. Draws come
    from NumPy's PCG64 in layout order, so a seed gives the same vector everywhere.
    """
    rng = np.random.default_rng(seed)
    params = np.empty(spec.num_params, np.float32)
    for seg in segments(spec):
        view = params[seg.offset : seg.stop]
        if seg.name == "filters":
            fan_in = math.prod(seg.shape[1:])
            view[:] = rng.standard_normal(seg.size) * math.sqrt(1.0 / fan_in)
        else:
            view[:] = spec.layers[seg.layer].bias_pref
    return params
