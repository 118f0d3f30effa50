"""Verification: does the file hold what it says, and does the model score what it claims?

Checks, each reported with what was expected and what was found:
  1. every member against SHA256SUMS (a changed weight, label or manifest shows here);
  2. each test set's label map recomputed from the model's label names (a relabelled
     output cannot hide behind a stale map);
  3. each claimed test set, found embedded, in a zip or on a data server, hashes to the
     recorded content hash (the very data the claim was made on);
  4. the test error recomputed with the PyTorch executor equals the claim within the
     stated tolerance (docs/closure.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .closure import Closure
from .errors import ClosureError
from .testset import TestSet, from_server, from_zip, score, tolerance_items


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            "scores": self.scores,
        }


def label_map_for(labels: list[str], dataset_labels: list[str]) -> list[int]:
    index = {n: i for i, n in enumerate(labels)}
    return [index.get(n, -1) for n in dataset_labels]


def verify(
    closure: Closure,
    zips: list[str | Path] = (),
    server: str | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Report:
    report = Report()
    say = progress or (lambda _text: None)
    say("checksums")
    problems = closure.archive.checksum_problems() if closure.archive else ["no archive to check"]
    report.add(
        "checksums",
        not problems,
        "; ".join(problems) if problems else f"{len(closure.archive.sums)} members match SHA256SUMS",
    )
    claim = closure.claim
    if not claim:
        report.add("claim", True, "the closure makes no claim (no test set): nothing to recompute")
        return report
    training = closure.manifest["training"]
    report.add(
        "claim iteration",
        claim.get("iteration") == training["iteration"],
        f"claim made at iteration {claim.get('iteration')}, "
        f"parameters are from iteration {training['iteration']}",
    )
    _check_totals(report, claim)
    tests = closure.manifest["data"]["test"]
    model = closure.model()
    zip_sets: dict[str, TestSet] = {}
    for claimed in claim.get("test_sets", []):
        k = claimed.get("index")
        if not isinstance(k, int) or not 0 <= k < len(tests):
            report.add("claim", False, f"the claim names test set {k!r}; the manifest lists {len(tests)}")
            continue
        entry = tests[k]
        where = f"test set {entry['name']!r}"
        expected_map = label_map_for(closure.labels, entry["label_names"])
        if not report.add(
            f"{where} label map",
            expected_map == list(entry["label_map"]),
            "matches the model's labels"
            if expected_map == list(entry["label_map"])
            else f"recorded {entry['label_map'][:12]}, the model's labels {closure.labels[:12]} give "
            f"{expected_map[:12]}: labels were changed",
        ):
            continue
        try:
            say(f"loading {where}")
            ts = _find(closure, k, entry, zips, server, zip_sets)
        except ClosureError as exc:
            report.add(f"{where} data", False, exc.message)
            continue
        say(f"hashing {where}")
        actual = ts.content_hash()
        if not report.add(
            f"{where} content hash",
            actual == entry["content_hash"],
            f"{actual} as recorded"
            if actual == entry["content_hash"]
            else f"recorded {entry['content_hash']}, the data hashes to {actual}: not the same test set "
            "(items, labels or label names differ)",
        ):
            continue
        say(f"scoring {where} ({ts.items} items, {device})")
        s = score(model, ts, expected_map, device)
        tol = tolerance_items(s.count)
        c_errors, c_count = int(claimed["errors"]), int(claimed["count"])
        ok = s.count == c_count and abs(s.errors - c_errors) <= tol
        report.scores.append({"test_set": entry["name"], **s.to_json(), "claimed": claimed})
        report.add(
            f"{where} test error",
            ok,
            f"recomputed {s.errors}/{s.count} = {s.error:.4%}, claimed {c_errors}/{c_count} = "
            f"{c_errors / max(c_count, 1):.4%} (tolerance {tol} item{'s' if tol > 1 else ''})"
            + ("" if ok else ": the parameters do not give the claimed result"),
        )
    return report


def _find(
    closure: Closure, k: int, entry: dict, zips, server: str | None, cache: dict[str, TestSet]
) -> TestSet:
    if k in closure.test_sets:
        return closure.test_sets[k]
    shape = tuple(entry["shape"])
    for z in zips:
        key = f"{z}|{shape}"
        if key not in cache:
            cache[key] = from_zip(z, shape)
        if cache[key].content_hash() == entry["content_hash"]:
            return cache[key]
    if server:
        return from_server(server, entry["content_hash"], entry["name"])
    if zips:
        raise ClosureError(
            f"test set {entry['name']!r} ({entry['content_hash']}) is not embedded and none of the zips "
            f"given hashes to it; fix: pass the zip it was made from, or --server with that dataset"
        )
    raise ClosureError(
        f"test set {entry['name']!r} is not embedded in the file; fix: pass --server URL (a data server "
        "holding it) or --data ZIP"
    )


def _check_totals(report: Report, claim: dict) -> None:
    """The headline (what `inspect` and the zoo show) must be the sum of the per-set claims,
    which are the ones recomputed."""
    sets = claim.get("test_sets", [])
    try:
        errors, count = sum(int(t["errors"]) for t in sets), sum(int(t["count"]) for t in sets)
        value, h_errors, h_count = float(claim["value"]), int(claim["errors"]), int(claim["count"])
    except (KeyError, TypeError, ValueError) as exc:
        report.add("claim totals", False, f"the claim is malformed ({exc!r})")
        return
    ok = (h_errors, h_count) == (errors, count) and count > 0 and abs(value - errors / count) <= 1e-6
    report.add(
        "claim totals",
        ok,
        f"{h_errors}/{h_count} = {value:.4%} is the sum over {len(sets)} test set(s)"
        if ok
        else f"the headline claim says {h_errors}/{h_count} = {value:.4%}, the per-set claims add up to "
        f"{errors}/{count}" + (f" = {errors / count:.4%}" if count else "") + ": the claim was changed",
    )
