"""Making a closure from a project's state: the manifest, the arrays, and the claim.

The claim is measured here, at export, with the PyTorch executor on the project's
test sets and the exported parameters - not copied from a tracker's report, which
may be for older parameters or from another executor - so `verify` recomputes the
very same number. Nothing in the manifest depends on when it is exported: the
`created` time is the time of the captured iteration, so exporting the same state
twice gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from mlitb import __version__
from mlitb.model.spec import Spec
from mlitb.optim import Optimizer
from mlitb.optim.base import parse_state

from .closure import FORMAT, FORMAT_VERSION, PARAMS, Closure
from .testset import TOLERANCE, TestSet, score, tolerance_items
from .verify import label_map_for

# The metric columns a closure keeps per iteration (the master's rows hold more).
METRIC_COLUMNS = (
    "iteration", "t", "seconds", "workers", "workers_assigned", "vectors", "power", "train_loss",
    "test_error", "test_loss", "learning_rate", "lag_ms_mean", "epsilon",
)  # fmt: skip


@dataclass
class ProjectState:
    """What a closure captures of a project; the master fills it from its Engine."""

    name: str
    description: str
    created: float  # unix seconds
    spec: Spec
    labels: list[str]
    params: np.ndarray
    optimizer: Optimizer
    hyper: dict
    iteration: int
    totals: dict  # vectors, rejected, late, contributors {kind: clients}
    sources: list[dict]  # dataset, role, items, label_map, info {name, shape, content_hash, ...}
    history: list[dict]
    data_url: str = ""
    # its volunteers by credit (mlitb.master.project.credit.Ledger.table); none for a dp
    # project, whose closure must not say who took part
    credit: list[dict] = field(default_factory=list)
    macs_per_vector: int = 0


CREDIT_FIELDS = ("volunteer", "name", "kind", "credit", "share", "vectors", "forfeited")  # per volunteer


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_closure(
    state: ProjectState, test_sets: dict[int, TestSet], embed_test: bool = False, device: str = "cpu"
) -> Closure:
    """`test_sets`: dataset id -> its items, for every test source (fetched by the caller)."""
    header, arrays = parse_state(state.optimizer.state_bytes())
    spec = state.spec
    captured = max([state.created, *[r.get("t", 0) for r in state.history[-1:]]])
    train, test, embedded = [], [], {}
    for source in state.sources:
        info = source.get("info", {})
        entry = {
            "name": info.get("name", f"dataset {source['dataset']}"),
            "dataset": source["dataset"],
            "url": source.get("url", state.data_url),
            "items": source["items"],
            "shape": list(info.get("shape", spec.input_shape)),
            "content_hash": info.get("content_hash", ""),
            "label_names": list(info.get("label_names", [])),
            "label_counts": dict(info.get("labels", {})),
            "label_map": list(source["label_map"]),
        }
        if source["role"] == "test":
            ts = test_sets.get(source["dataset"])
            if ts is not None:  # describe exactly the items the claim is measured on
                entry.update(
                    items=ts.items,
                    shape=list(ts.shape),
                    content_hash=ts.content_hash(),
                    label_names=list(ts.label_names),
                    label_counts=ts.label_counts(),
                    # from the names, as verify recomputes it (the set may have gained labels)
                    label_map=label_map_for(state.labels, ts.label_names),
                )
            k = len(test)
            if embed_test and ts is not None:
                entry["embedded"] = {
                    "pixels": f"testsets/{k}/pixels.npy",
                    "labels": f"testsets/{k}/labels.npy",
                }
                embedded[k] = ts
            else:
                entry["embedded"] = None
            test.append(entry)
        else:
            train.append(entry)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlitb_version": __version__,
        "created": iso(captured),
        "project": {"name": state.name, "description": state.description, "created": iso(state.created)},
        "model": {
            "spec": spec.to_json(),
            "input_shape": list(spec.input_shape),
            "labels": list(state.labels),
            "num_params": spec.num_params,
            "num_outputs": spec.num_outputs,
            "loss": spec.loss,
            "layout": "mlitb flat float32, ConvNetJS getParamsAndGrads order (docs/model.md)",
            "params": {"member": PARAMS, "dtype": "<f4", "shape": [spec.num_params]},
        },
        "training": {
            "optimizer": header["name"],
            "hyper": dict(state.hyper),
            "optimizer_state": {
                "name": header["name"],
                "t": header["t"],
                "hyper": header["hyper"],
                "schedule": header["schedule"],
                "num_params": header["num_params"],
                "arrays": [{"name": a, "member": f"optimizer/{a}.npy"} for a, _ in header["arrays"]],
            },
            "next_learning_rate": state.optimizer.lr,
            "seed": state.hyper.get("seed", 0),
            "iteration": state.iteration,
            "vectors_processed": int(state.totals.get("vectors", 0)),
            "rejected_results": int(state.totals.get("rejected", 0)),
            "late_results": int(state.totals.get("late", 0)),
            "contributors": dict(sorted(state.totals.get("contributors", {}).items())),
            "clients": int(sum(state.totals.get("contributors", {}).values())),
            "credit": {
                "unit": "GMAC: 1e9 multiply-adds of applied training work (forward + backward)",
                "macs_per_vector": state.macs_per_vector,
                "volunteers": [{k: r[k] for k in CREDIT_FIELDS} for r in state.credit],
            },
        },
        "data": {"train": train, "test": test},
        "privacy": privacy_record(state.hyper, state.totals.get("privacy") or {}, state.history),
        "metrics": [{k: r.get(k) for k in METRIC_COLUMNS if k in r} for r in state.history],
        "claim": None,
    }
    closure = Closure(manifest, np.ascontiguousarray(state.params, np.float32), arrays, embedded)
    manifest["claim"] = _claim(closure, test, test_sets, state, device)
    return closure


def privacy_record(hyper: dict, state: dict, history: list[dict] | None = None) -> dict:
    """Where the training data was and, under differential privacy, the guarantee the
    project's ledger gives (mlitb.master.privacy): every figure needed to check it, and the
    steps taken without dp (history rows without an epsilon), which it does not cover."""
    device = hyper.get("data_source", "server") == "device"
    out: dict = {
        "data_source": "device" if device else "server",
        "training_data": "held on the volunteers' devices, never seen by the master: this closure "
        "cannot re-check how the model was trained, only its test score"
        if device
        else "the data server's items listed under data.train (content hashes)",
        "dp": hyper.get("dp", "off"),
    }
    ledger = state.get("ledger")
    if ledger:  # a project that ran under dp at some point: its rounds count whatever it runs now
        from mlitb.master.privacy import accountant

        book = accountant.Ledger.from_json(ledger)
        out["guarantee"] = {
            "mechanism": "DP-FedAvg, central (the master clipped each update and added Gaussian noise)",
            "neighbouring": "add or remove one device (all of its data)",
            "epsilon": book.spent(),
            "delta": book.delta,
            "rounds": book.rounds,
            "runs": book.runs,  # [sample rate q, noise multiplier z, rounds] in order
            "clip": state.get("clip"),
            "clip_rule": "fixed"
            if hyper.get("dp_clip")
            else f"adaptive, quantile {hyper.get('dp_clip_quantile')}",
            "budget": hyper.get("dp_epsilon"),
            "accountant": book.kind,
            "accountant_library": accountant.library_version(),
            "steps_with_dp": int(state.get("steps", 0)),
            "steps_without_dp": sum(1 for r in history or [] if "epsilon" not in r),
        }
        if out["guarantee"]["steps_without_dp"]:
            out["guarantee"]["caveat"] = (
                "some steps were taken with dp off: the guarantee covers only the rounds in the ledger, "
                "not what those steps released"
            )
    return out


def _claim(closure: Closure, tests: list[dict], test_sets: dict[int, TestSet], state: ProjectState, device):
    model = closure.model()
    measured = []
    for k, entry in enumerate(tests):
        ts = test_sets.get(entry["dataset"])
        if ts is None or ts.items == 0:
            continue
        s = score(model, ts, entry["label_map"], device)
        if s.count:
            measured.append(
                {"index": k, "name": entry["name"], "content_hash": entry["content_hash"], **s.to_json()}
            )
    if not measured:
        return None
    errors = sum(m["errors"] for m in measured)
    count = sum(m["count"] for m in measured)
    return {
        "metric": "test_error",
        "value": round(errors / count, 6),
        "errors": errors,
        "count": count,
        "iteration": state.iteration,
        "test_sets": measured,
        "executor": "pytorch",
        "device": "cpu" if device == "cpu" else str(device),
        "tolerance": TOLERANCE,
        "tolerance_rule": "per test set, recomputed errors within max(1, ceil(tolerance * count)) "
        "items of the claimed errors",
        "tolerance_items": tolerance_items(count),
    }
