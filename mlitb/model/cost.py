"""What one training vector costs: the multiply-adds of its forward and backward pass.

Volunteer credit (mlitb.master.project.credit) is accepted vectors x this cost, so that a
vector of a 818k-parameter transformer window counts for what it took to compute (about
165 M multiply-adds), not the same as a 28x28 image through a 6k-parameter net (2 M).

Counted, not estimated by hand per layer: PyTorch's FLOP formulas (the registry behind
torch.utils.flop_counter) count the floating point operations of the matrix products and
convolutions (forward, gradient of the input and of the weights) that the native executor
runs for one example; a multiply-add is two of them. Element-wise work (activations,
normalisation, softmax) is not counted, as in the usual FLOP counts of models (it is a
small part and memory-bound). The count depends only on the spec, so it is the same number
on every master for the same model.
"""

from __future__ import annotations

import functools
import json

import numpy as np

from .layout import init_params
from .spec import Spec


def multiply_adds(spec: Spec) -> int:
    """Multiply-adds of one training vector (forward + backward) of `spec`, >= 1."""
    return _counted(json.dumps(spec.to_json(), sort_keys=True))


def _counter():
    """A dispatch mode that adds up PyTorch's FLOP formulas (torch.utils.flop_counter's
    registry) of the ops it sees. Not FlopCounterMode itself: that one installs global
    module hooks (its module tracker), which a master's audit replays running in other
    threads at the same moment would run into; a dispatch mode is the calling thread's only."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    return Counter()


@functools.lru_cache(maxsize=64)
def _counted(spec_json: str) -> int:
    import torch

    from .torch_executor import TorchNet

    spec = Spec.from_json(json.loads(spec_json))
    n = 2  # two examples: batch norm's statistics need more than one; counts are per example
    x = np.zeros((n, *spec.input_shape), np.float32)  # token ids 0 for a sequence model
    y = np.zeros((n, spec.positions) if spec.positions > 1 else n, np.int64)
    if spec.loss == "regression":
        y = np.zeros((n, spec.num_outputs), np.float32)
    with torch.no_grad():
        net = TorchNet(spec, init_params(spec, 0))
    with _counter() as counter:
        net.gradient(x, y)
    return max(1, round(counter.flops / 2 / n))
