"""Per-client latency and work time, as the MLitB thesis prototype scheduled them.

lag = return time - send time - work time (ms): everything that is not computing
(parameters down, result up, queueing). A client is given work time T - lag so that
all results arrive together at the end of the iteration. Lag is an exponential moving
average; a client whose lag stays above 2/3 of T for `BENCH_AFTER` iterations is
benched (not scheduled, kept connected, reported) and probed again every
`PROBE_EVERY` iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.5  # weight of the newest measurement
BENCH_FRACTION = 2 / 3
BENCH_AFTER = 3
PROBE_EVERY = 10
MIN_WORK_MS = 50


@dataclass
class Latency:
    lag_ms: float | None = None  # moving average; None until measured
    last_ms: float | None = None
    slow_streak: int = 0
    benched: bool = False
    benched_at: int = 0

    def observe(self, lag_ms: float, iteration_ms: int, iteration: int) -> None:
        lag_ms = max(0.0, lag_ms)
        self.last_ms = lag_ms
        self.lag_ms = lag_ms if self.lag_ms is None else ALPHA * lag_ms + (1 - ALPHA) * self.lag_ms
        if self.lag_ms > BENCH_FRACTION * iteration_ms:
            self.slow_streak += 1
            if self.slow_streak >= BENCH_AFTER and not self.benched:
                self.benched, self.benched_at = True, iteration
        else:
            self.slow_streak = 0
            self.benched = False

    def missed(self, iteration_ms: int, iteration: int) -> None:
        """No result by the deadline: count it as a lag of a whole iteration."""
        self.observe(float(iteration_ms), iteration_ms, iteration)

    def work_ms(self, iteration_ms: int) -> int:
        lag = self.lag_ms or 0.0
        return int(max(MIN_WORK_MS, min(iteration_ms, iteration_ms - lag)))

    def schedulable(self, iteration: int) -> bool:
        """Benched clients get a probe every PROBE_EVERY iterations to measure them again."""
        return not self.benched or (iteration - self.benched_at) % PROBE_EVERY == 0
