"""The step: an iteration's accepted results become new parameters, never non-finite ones.

`reduce` closes the iteration (missing trainers noted, held results that got no verdict
left out), asks the learning algorithm for its step (`safe_step`) and writes the
iteration's history row. `safe_step` undoes a step that fails or leaves a parameter or
the optimizer state non-finite and pins it on the results that caused it: the bucket with
the largest mean is dropped, its largest result's sender (the trust policy's `pin`) gets a
`refused_step` error and a rejected count, and the step is tried again with the rest. No
NaN/Inf is ever broadcast or saved, and the loop never stalls."""

from __future__ import annotations

import logging

import numpy as np

from mlitb.master.project.effects import Send
from mlitb.master.project.membership import RECLAIM_AFTER
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

HISTORY_LIMIT = 100_000


def close_iteration(e, now: float) -> list:
    """The trainers that did not answer; the loop is idle until the next boundary."""
    T = e.hyper.iteration_ms
    missing = [c for c in e.clients.values() if c.orders.scheduled == e.iteration]
    for c in missing:
        c.orders.latency.missed(T, e.iteration)
        c.orders.scheduled = None
        c.orders.missed_streak += 1
        if c.orders.missed_streak == RECLAIM_AFTER:  # back to probation at the next boundary
            log.info("project %s: %s missed %d orders: share reclaimed", e.name, c.id, RECLAIM_AFTER)
    e.working = False
    e.outstanding = 0
    e.next_start = max(now, e.iter_started + e.round_s)
    e.trust.step_closing("no verdict on it in time")
    return missing


def safe_step(e) -> bool:
    """The algorithm's step on `e.acc`; False when every result had to go (nothing stepped)."""
    params = e.params.copy()
    state = {k: v.copy() for k, v in e.optimizer.state.items()}
    t = e.optimizer.t
    dropped: set[str] = set()
    while e.acc.weight > 0:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                e.algorithm.step(e.acc, e.params, e.optimizer)
            problem = None if np.isfinite(e.params).all() else "a parameter became NaN or Inf"
            if problem is None and not all(np.isfinite(v).all() for v in e.optimizer.state.values()):
                problem = "the optimizer state became NaN or Inf"
        except (ValueError, ArithmeticError) as exc:  # OptimizerError is a ValueError
            problem = str(exc)
        if problem is None:
            e.algorithm.stepped()
            e.trust.step_taken(dropped)
            return True
        e.params[...] = params
        e.optimizer.state.update({k: v.copy() for k, v in state.items()})  # fresh: steps work in place
        e.optimizer.t = t
        e.counters.refused_steps += 1
        worst = e.acc.worst_bucket()
        gone = e.acc.drop_bucket(worst) if worst is not None else []
        dropped.update(gone)
        culprits = e.trust.pin(gone)
        mates = [c for c in gone if c not in culprits]
        log.warning("project %s: step of iteration %d refused (%s); pinned on %s%s",
                    e.name, e.iteration, problem, ", ".join(culprits) or "nobody",
                    f" (their bucket-mates' results went too, not held against them: {', '.join(mates)})"
                    if mates else "")  # fmt: skip
        for cid in culprits:
            client = e.clients.get(cid)
            if client is not None:
                client.stats.rejected += 1
                e.counters.rejected += 1
                reason = f"your result made the step non-finite ({problem})"
                e.effects.append(Send(cid, msg.error("refused_step", reason)))
        if worst is None:
            break
    e.acc.reset()
    e.trust.step_failed()
    return False


def history_row(e, now: float, missing: int, reduce_ms: float | None) -> dict:
    """The iteration's row (metrics history, dashboard plots, closures)."""
    seconds = max(now - e.iter_started, 1e-6)
    lags = [c.orders.latency.last_ms for c in e.clients.values() if c.orders.latency.last_ms is not None]
    trainers = [c for c in e.clients.values() if c.role == "trainer" and c.admitted]
    n = e.counters
    return {
        "iteration": e.iteration,
        "t": round(now + e.epoch, 3),  # wall-clock seconds
        "seconds": round(seconds, 3),
        "workers": len(trainers),
        "workers_assigned": e.acc.results,
        "missing": missing,
        "vectors": e.acc.vectors,
        "power": round(e.acc.vectors / seconds, 1),
        "train_loss": e.acc.loss / e.acc.vectors,
        "lag_ms_mean": round(float(np.mean(lags)), 1) if lags else None,
        "lag_ms_max": round(float(np.max(lags)), 1) if lags else None,
        "lag_ms_p90": round(float(np.percentile(lags, 90)), 1) if lags else None,
        # per client while few enough to keep rows small (the summary always has them)
        "lags_ms": {
            c.id: round(c.orders.latency.last_ms, 1)
            for c in e.clients.values()
            if c.orders.latency.last_ms is not None
        }
        if len(lags) <= 64
        else None,
        "reduce_ms": None if reduce_ms is None else round(reduce_ms, 3),
        "data_size": e.allocator.registered,
        "data_unallocated": len(e.allocator.pool),
        "rejected": n.rejected,
        "late": n.late,
        "stale": n.stale,
        "bytes_in": n.bytes_in,
        "bytes_out": n.bytes_out,
        "learning_rate": e.optimizer.schedule.at(e.optimizer.t - 1),
        "test_error": None,
        **e.algorithm.history_fields(),  # dp: epsilon spent after this step, the clipping norm
    }


def reduce(e, now: float) -> bool:
    """Close the iteration and step; True when a step was taken (a history row written)."""
    missing = close_iteration(e, now)
    if e.acc.weight <= 0:
        log.info("project %s: iteration %d had no results", e.name, e.iteration)
        return False
    t0 = e.timer() if e.timer else None
    if not safe_step(e):
        return False
    reduce_ms = (e.timer() - t0) * 1000 if t0 is not None else None
    e.history.append(history_row(e, now, len(missing), reduce_ms))
    if len(e.history) > HISTORY_LIMIT:
        del e.history[: len(e.history) - HISTORY_LIMIT]
    e.counters.vectors += e.acc.vectors
    error = last_test_error(e)
    for cid, vectors in e.acc.by_client.items():  # applied: its volunteer's credit
        c = e.clients.get(cid)
        rows = c.relay.rows_for(e.iteration) if c is not None and c.kind == "relay" else None
        if rows:  # a relay's: its volunteers' credit, in the proportions it reported
            e.credit.earn_split(cid, vectors, rows, now + e.epoch, error)
        else:
            e.credit.earn(cid, vectors, now + e.epoch)
    return True


def last_test_error(e) -> float | None:
    """The project's latest test error (the master's own score), None before the first."""
    for row in reversed(e.history[-200:]):
        if row.get("test_error") is not None:
            return row["test_error"]
    return None


def row_of(e, iteration: int) -> dict | None:
    """The history row of the step whose parameters went out as `iteration`: the last step
    before it (iterations without a step broadcast the parameters unchanged). None for an
    iteration not broadcast yet (a tracker may say anything)."""
    if iteration > e.iteration:
        return None
    for row in reversed(e.history):
        if row["iteration"] <= iteration - 1:
            return row
    return None


def tracker_report(e, cid: str, message) -> None:
    """A tracker's report: anyone may join as a tracker, so it is only that tracker's
    figure (its client row, `tracker_error` of the history row); the project's test error
    is the master's own (`master_test`)."""
    if (client := e.clients.get(cid)) is not None:
        client.stats.test_error = message.error
    if (row := row_of(e, message.iteration)) is not None:
        row.update(tracker_error=message.error)
        e.changed()


def master_test(e, iteration: int, error: float, loss: float, count: int) -> None:
    """The master's score of the parameters of `iteration`: the project's test error."""
    if (row := row_of(e, iteration)) is not None:
        row.update(test_error=error, test_loss=loss, test_count=count)
        e.changed()
