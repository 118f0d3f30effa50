"""Server-side optimizers on flat float32 vectors (the master steps; workers never do)."""

from __future__ import annotations

from .base import Optimizer, OptimizerError, parse_state
from .methods import SGD, AdaDelta, AdaGrad, Adam, Nesterov, WindowGrad
from .schedule import LRSchedule

# Names as in specs, the REST API and ConvNetJS's `method` option.
OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (AdaGrad, SGD, Nesterov, AdaDelta, WindowGrad, Adam)
}


def make_optimizer(
    name: str, num_params: int, schedule: LRSchedule | None = None, **hyper: float
) -> Optimizer:
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise OptimizerError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return cls(num_params, schedule, **hyper)


def optimizer_from_bytes(data: bytes) -> Optimizer:
    header, _ = parse_state(data)
    opt = make_optimizer(header["name"], int(header["num_params"]))
    opt.load_state_bytes(data)
    return opt


__all__ = [
    "OPTIMIZERS",
    "LRSchedule",
    "Optimizer",
    "OptimizerError",
    "make_optimizer",
    "optimizer_from_bytes",
]
