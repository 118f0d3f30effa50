"""Growing the output layer by one class (the tracker's "add a new label").

The last parameterised layer is the fc in front of the loss (softmax/svm). It gains
one output neuron: existing weights and biases are kept bit for bit, the new row is
drawn like ConvNetJS initialises (N(0, sqrt(1/num_inputs)), bias = bias_pref) from
a seeded generator. Per-parameter optimizer state grows the same way (zeros for the
new entries), so training continues where it was for every old parameter.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import SpecError
from .layout import segments
from .spec import Spec


def grow_outputs(spec: Spec, params: np.ndarray, seed: int = 0) -> tuple[Spec, np.ndarray, np.ndarray]:
    """-> (new spec, new params, insert) where `insert(old_vector, fill)` maps any
    per-parameter vector (optimizer state) from the old layout to the new one."""
    layers = spec.to_json()
    loss = layers[-1]
    if loss["layer_type"] not in ("softmax", "svm"):
        raise SpecError(
            len(layers) - 1, loss["layer_type"], None, "a softmax or svm output layer to add a class to"
        )
    fc_index = len(layers) - 2
    fc = layers[fc_index]
    if fc["layer_type"] != "fc":
        raise SpecError(fc_index, fc["layer_type"], None, "an fc layer in front of the loss layer")
    n, inputs = fc["out_depth"], fc["num_inputs"]
    fc["out_depth"] = n + 1
    for key in ("out_depth", "num_inputs"):
        loss[key] = n + 1 if key in loss else None
    loss = {k: v for k, v in loss.items() if v is not None}
    layers[-1] = loss
    new_spec = Spec.from_json(layers)
    walk_index = len(spec.walk) - 2  # the fc's index among every layer (blocks' sub-layers count)
    segs = {s.name: s for s in segments(spec) if s.layer == walk_index}
    w, b = segs["filters"], segs["biases"]
    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(inputs) * math.sqrt(1.0 / inputs)).astype(np.float32)
    bias = np.float32(fc.get("bias_pref", 0.0))

    def insert(vector: np.ndarray, fill: np.ndarray | float = 0.0, bias_fill: float = 0.0) -> np.ndarray:
        vector = np.asarray(vector, np.float32)
        extra_w = np.broadcast_to(np.asarray(fill, np.float32), (inputs,))
        return np.concatenate(
            [
                vector[: w.stop],  # everything up to and including the old weights
                extra_w,  # the new neuron's weights (row n of [n + 1, inputs])
                vector[b.offset : b.stop],
                np.array([bias_fill], np.float32),
                vector[b.stop :],
            ]
        )

    new_params = insert(params, row, float(bias))
    assert new_params.size == new_spec.num_params
    return new_spec, new_params, insert
