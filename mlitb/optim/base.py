"""The optimizer interface: in-place steps on flat float32 vectors, exact state bytes.

The master owns optimization (workers only send gradients), so an optimizer is
plain NumPy on the canonical flat parameter vector. Its whole state (step count,
hyperparameters, accumulators) serialises to bytes and back bit-exactly, so a
restarted server or a resumed research closure takes the same next step.

State bytes: b"MLITBOPT", u32 version, u32 header length, UTF-8 JSON header
{"name", "hyper", "schedule", "t", "arrays": [[name, count], ...]}, then each
array as little-endian float32, in header order.
"""

from __future__ import annotations

import json
import struct
from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import ClassVar

import numpy as np

from .schedule import LRSchedule

MAGIC = b"MLITBOPT"
STATE_VERSION = 1


class OptimizerError(ValueError):
    """Bad hyperparameters, a bad gradient or corrupt state bytes."""


class Optimizer(ABC):
    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]] = {}  # hyperparameters besides the schedule
    arrays: ClassVar[tuple[str, ...]] = ()  # per-parameter accumulators

    def __init__(self, num_params: int, schedule: LRSchedule | None = None, **hyper: float):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise OptimizerError(
                f"{self.name}: unknown hyperparameter(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults) or 'none'} besides the learning-rate schedule"
            )
        self.num_params = int(num_params)
        self.schedule = schedule or LRSchedule()
        self.hyper = {**self.defaults, **{k: float(v) for k, v in hyper.items()}}
        for k, v in self.hyper.items():
            _check_hyper(self.name, k, v)
        self.t = 0  # steps taken
        self.state = {a: np.zeros(self.num_params, np.float32) for a in self.arrays}

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.schedule.at(self.t)

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        """params -= update(mean gradient); in place. A bad gradient changes nothing."""
        if params.dtype != np.float32 or grad.shape != params.shape or params.shape != (self.num_params,):
            raise OptimizerError(
                f"{self.name}: expected float32 params and gradient of shape ({self.num_params},), "
                f"got {params.dtype} {params.shape} and {grad.shape}"
            )
        with np.errstate(over="ignore"):
            g = np.asarray(grad, dtype=np.float32)  # cast first: 1e300 is finite only in float64
        if not np.all(np.isfinite(g)):
            raise OptimizerError(
                f"{self.name}: gradient contains NaN or Inf; step refused (beyond float32 counts as Inf)"
            )
        self._update(params, g, np.float32(self.lr))
        self.t += 1

    @abstractmethod
    def _update(self, p: np.ndarray, g: np.ndarray, lr: np.float32) -> None: ...

    # -- state ---------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        header = {
            "name": self.name,
            "hyper": self.hyper,
            "schedule": asdict(self.schedule),
            "t": self.t,
            "num_params": self.num_params,
            "arrays": [[a, self.num_params] for a in self.arrays],
        }
        head = json.dumps(header, sort_keys=True).encode()
        body = b"".join(self.state[a].astype("<f4").tobytes() for a in self.arrays)
        return MAGIC + struct.pack("<II", STATE_VERSION, len(head)) + head + body

    def load_state_bytes(self, data: bytes) -> None:
        """Replace this optimizer's state; the bytes must be of the same kind and size."""
        header, arrays = parse_state(data)
        if header["name"] != self.name:
            raise OptimizerError(f"state is for optimizer {header['name']!r}, not {self.name!r}")
        if header["num_params"] != self.num_params:
            raise OptimizerError(
                f"state is for {header['num_params']} parameters, this model has {self.num_params}"
            )
        expected = [[a, self.num_params] for a in self.arrays]
        if [list(x) for x in header["arrays"]] != expected:
            raise OptimizerError(f"state arrays {header['arrays']} do not match {self.name}'s {expected}")
        try:
            schedule = LRSchedule(**header["schedule"])
        except (TypeError, ValueError) as e:
            raise OptimizerError(f"state has a bad learning-rate schedule: {e}") from None
        hyper = {k: float(v) for k, v in header["hyper"].items()}
        if set(hyper) != set(self.defaults):
            raise OptimizerError(
                f"state has hyperparameters {sorted(hyper)}, {self.name} takes {sorted(self.defaults)}"
            )
        for k, v in hyper.items():
            _check_hyper(self.name, k, v)
        # Everything checked: only now replace the state, so a refused load changes nothing.
        self.schedule, self.hyper, self.t, self.state = schedule, hyper, int(header["t"]), arrays


# Ranges outside which a rule divides by zero or its running means go negative (NaN).
_UNIT_INTERVAL = ("momentum", "ro", "beta1", "beta2")  # must lie in [0, 1)


def _check_hyper(optimizer: str, name: str, value: float) -> None:
    if not np.isfinite(value) or value < 0:
        raise OptimizerError(f"{optimizer}: {name} must be a finite number >= 0, got {value}")
    if name in _UNIT_INTERVAL and value >= 1:
        raise OptimizerError(f"{optimizer}: {name} must be in [0, 1), got {value}")
    if name == "eps" and value == 0:
        raise OptimizerError(f"{optimizer}: eps must be > 0 (it keeps the division finite), got 0")


def parse_state(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:8]) != MAGIC:
        raise OptimizerError("not optimizer state: the bytes do not start with b'MLITBOPT'")
    if len(data) < 16:
        raise OptimizerError("optimizer state is truncated (no header)")
    version, n = struct.unpack_from("<II", data, 8)
    if version != STATE_VERSION:
        raise OptimizerError(f"optimizer state version {version} is not supported (reads {STATE_VERSION})")
    try:
        header = json.loads(bytes(data[16 : 16 + n]))
        names = [(str(a), int(c)) for a, c in header["arrays"]]
        int(header["t"]), int(header["num_params"]), str(header["name"])
    except (ValueError, KeyError, TypeError) as e:
        raise OptimizerError(f"optimizer state header is corrupt: {e}") from None
    offset = 16 + n
    expected = offset + sum(4 * c for _, c in names)
    if len(data) != expected:
        raise OptimizerError(f"optimizer state holds {len(data)} bytes, its header says {expected}")
    arrays = {}
    for a, c in names:
        arrays[a] = np.frombuffer(bytes(data[offset : offset + 4 * c]), dtype="<f4").astype(np.float32)
        offset += 4 * c
    return header, arrays
