"""Project hyperparameters: one schema for the REST API, the CLI (`--set key=value`),
persistence and the engine. Changeable while a project runs (applied at the next
iteration boundary); out-of-range values are refused with the allowed range.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlitb.optim import OPTIMIZERS, LRSchedule, Optimizer, make_optimizer

OptimizerName = Literal["adagrad", "sgd", "nesterov", "adadelta", "windowgrad", "adam"]
assert set(OptimizerName.__args__) == set(OPTIMIZERS)


class Hyper(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: OptimizerName = "adagrad"
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.01
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0  # lr *= lr_decay every lr_decay_interval steps
    lr_decay_interval: Annotated[int, Field(ge=1)] = 1
    lr_floor: Annotated[float, Field(ge=0)] = 0.0
    l1_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    l2_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None  # sgd / nesterov
    ro: Annotated[float, Field(gt=0, lt=1)] | None = None  # adadelta / windowgrad
    eps: Annotated[float, Field(gt=0, le=1)] | None = None
    beta1: Annotated[float, Field(ge=0, lt=1)] | None = None  # adam
    beta2: Annotated[float, Field(ge=0, lt=1)] | None = None
    iteration_time: Annotated[float, Field(ge=1, le=30)] = 4.0  # T, seconds
    capacity: Annotated[int, Field(ge=1, le=10_000_000)] = 3000  # most ids one client holds
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32  # a hint to workers
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    save_period: Annotated[float, Field(ge=0, le=10)] = 0.0  # s between checkpoints; 0 = every iteration

    @property
    def iteration_ms(self) -> int:
        return round(self.iteration_time * 1000)

    def schedule(self) -> LRSchedule:
        return LRSchedule(self.learning_rate, self.lr_decay, self.lr_decay_interval, self.lr_floor)

    def optimizer_params(self) -> dict[str, float]:
        wanted = OPTIMIZERS[self.optimizer].defaults
        values = {k: getattr(self, k, None) for k in wanted}
        return {k: v for k, v in values.items() if v is not None}

    def make_optimizer(self, num_params: int) -> Optimizer:
        return make_optimizer(self.optimizer, num_params, self.schedule(), **self.optimizer_params())

    def updated(self, changes: dict) -> Hyper:
        return Hyper.model_validate({**self.model_dump(), **changes})


def hyper_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "hyperparameters"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def parse_set(items: list[str]) -> dict:
    """CLI `--set key=value` pairs -> dict with numbers parsed."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out
