"""The benchmarks' figures cannot flatter (issue 25, item 4): the arithmetic of
benchmarks/scaling_bench.py, robustness_bench.py and communication_bench.py on made-up
inputs, no master started."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


# ---------------------------------------------------------------------- scaling_bench
def test_scaling_window_counts_gaps_and_stretch_as_lost(bench):
    sb = bench("scaling_bench")
    rows = [
        {"iteration": 4, "t": 100.0, "seconds": 4.0, "vectors": 800},
        # iteration 5 had no results: no row, its seconds still pass
        {"iteration": 6, "t": 110.0, "seconds": 5.0, "vectors": 800},  # stretched past T = 4
        {"iteration": 7, "t": 114.5, "seconds": 4.0, "vectors": 800},
    ]
    seconds, vectors = sb.wall_window(rows, rows[1:])
    assert seconds == pytest.approx(14.5)  # from the end of iteration 4, not the sum of rounds (9 s)
    assert vectors == 1600
    # without a row before the first measured one: from the first's start
    seconds, _ = sb.wall_window(rows[1:], rows[1:])
    assert seconds == pytest.approx(114.5 - 105.0)


def test_scaling_simulated_client_claims_only_its_ordered_work():
    text = (BENCH / "scaling_bench.py").read_text()
    answer = text[text.index("async def answer(") : text.index("async def beat(")]
    code = [line for line in answer.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in code if "overlap" in line or "monotonic" in line]  # no waiting claimed
    assert "vectors = max(1, round(args.rate * work_ms / 1000))" in answer
    assert 'work_ms = int(m["work_ms"])' in answer


# ---------------------------------------------------------------------- robustness_bench
def _run(attack: str, config: str = "1of4", **kw) -> dict:
    r = {
        "attack": attack, "config": config, "honest": 3,
        "attackers": 0 if attack in ("clean", "noverify") else 1,
        "verify": attack != "noverify", "iterations": 30, "test_error": 0.02, "time_to": {}, "curve": [],
        "banned_after": {}, "first_refusal": {}, "liars": 0, "honest_flagged": 0, "sybils_flagged": 0,
        "honest_clipped": 0, "refused_steps": 0, "audits": [0, 0, 0, 0], "audits_skipped": 0, "held_back": 0,
        "power_median": 1000.0, "iteration_s": 2.0,
    }  # fmt: skip
    r.update(kw)
    return r


def test_robustness_time_to_and_medians(bench):
    rb = bench("robustness_bench")
    curve = [[0.0, 0, 0.9], [1.0, 1, 0.04], [2.0, 2, 0.06], [3.0, 3, 0.019]]
    assert rb.time_to(curve, 0.05) == 1.0
    assert rb.time_to(curve, 0.02) == 3.0
    assert rb.time_to(curve, 0.01) is None
    assert rb.reached(curve, 0.05) == 3  # median of three, as the final figure
    assert rb.med_time([10.0, None, 12.0]) == 12.0  # a run that never got there: infinitely late
    assert rb.med_time([10.0, None, None]) is None


def test_robustness_defence_cost_is_time_to_error_against_verify_off(bench):
    rb = bench("robustness_bench")
    targets = [0.05, 0.02]
    args = SimpleNamespace(goal_error=0.02)

    def results(defended: list, reference: list) -> list[dict]:
        out = [_run("clean", time_to={"0.05": 5.0, "0.02": t}) for t in defended]
        out += [_run("noverify", time_to={"0.05": 5.0, "0.02": t}) for t in reference]
        return out

    for defended, reference, want in (
        ([21.0, 22.0, 30.0], [20.0, 20.0, 25.0], "PASS"),  # 22 / 20 = 1.10
        ([23.0, 24.0, 30.0], [20.0, 20.0, 25.0], "FAIL"),  # 1.2x
        ([None, None, 20.0], [20.0, 20.0, 25.0], "FAIL"),  # the defended project mostly never got there
        ([None, None, None], [None, None, None], "n/a"),
    ):
        rs = results(defended, reference)
        g = rb.goals(rs, rb.summarize(rs, targets), args)[0]
        assert g["result"] == want, g


def test_robustness_audits_skipped_beside_passed_and_failed(bench, capsys):
    rb = bench("robustness_bench")
    rs = [_run("clean", audits=[10, 6, 1, 3], audits_skipped=3, held_back=2) for _ in range(3)]
    summary = rb.summarize(rs, [0.02])
    row = summary[("1of4", "clean")]
    assert (row["audits"], row["audits_passed"], row["audits_failed"], row["audits_skipped"]) == (
        30,
        18,
        3,
        9,
    )
    assert row["runs"] == 3 and row["held_back"] == 6
    rb.print_table(summary, [0.02], 10000)
    out = capsys.readouterr().out
    assert "| skipped |" in out and "10,000 MNIST test images" in out
    info = rb.goals(rs, summary, SimpleNamespace(goal_error=0.02))[-1]
    assert info["result"] == "info" and "9 of 30 audits skipped" in info["detail"]


def test_robustness_defaults_are_honest(bench):
    rb = bench("robustness_bench")
    args = rb.parse_args([])
    assert args.repeats >= 3 and args.test == 10000 and args.train == 60000
    assert 0.02 in args.target_list and args.T is None and args.T_run > 0


# ---------------------------------------------------------------------- communication_bench
def test_communication_runs_project_defaults(bench):
    cb = bench("communication_bench")
    args = cb.parse_args([])
    from mlitb.master.config import Hyper

    assert args.configs["local_sgd"] == {"algorithm": "local_sgd"}
    assert args.configs["local_sgd_int8"] == {"algorithm": "local_sgd", "compression": "int8"}
    assert args.configs["sync_sgd"] == {"algorithm": "sync_sgd"}
    for h in args.configs.values():
        assert cb.effective_hyper(h)["verify"] == Hyper().verify


def test_communication_goal_counts_proofs_and_needs_verification(bench):
    cb = bench("communication_bench")

    def res(both: float, err: float, verify: float = 1.0) -> dict:
        return {"median": {"both": both, "proof": both / 2, "error_end": err, "verify": verify}}

    results = {"sync_sgd/native": res(100.0, 0.03), "local_sgd_int8/native": res(4.0, 0.02)}
    g = cb.goals(results, [])[0]
    assert g["result"] == "PASS" and g["ratio"] == pytest.approx(25.0)
    results["local_sgd_int8/native"] = res(4.0, 0.04)  # fewer bytes but a worse error
    assert cb.goals(results, [])[0]["result"] == "FAIL"
    results["local_sgd_int8/native"] = res(6.0, 0.02)  # 16.7x
    assert cb.goals(results, [])[0]["result"] == "FAIL"
    results["local_sgd_int8/native"] = res(4.0, 0.02, verify=0.0)
    assert cb.goals(results, [])[0]["result"] == "n/a"


def test_communication_window_counts_proofs_and_audits(bench):
    cb = bench("communication_bench")

    def summary(t: float, vectors: int, b_in: int, proofs: int, audits: int) -> dict:
        trainer = {"id": "a", "name": "w", "kind": "native", "backend": "cpu", "role": "trainer",
                   "vectors_processed": vectors, "bytes_in": b_in, "bytes_out": 100, "proof_bytes": proofs,
                   "compute_s": t, "connected_s": t}  # fmt: skip
        tracker = {"role": "tracker", "bytes_in": 5, "bytes_out": 999}
        return {"_t": t, "iteration": int(t), "vectors_processed": vectors, "bytes_in": b_in + 5,
                "bytes_out": 100 + 999, "clients": [trainer, tracker], "audits": audits,
                "audits_passed": audits, "audits_failed": 0, "audits_skipped": 0, "held_back": 0}  # fmt: skip

    w = cb.window(summary(10.0, 1000, 50_000, 40_000, 2), summary(20.0, 2000, 90_000, 70_000, 5))
    assert w["bytes_in"] == 40_000 and w["proof_bytes"] == 30_000
    assert w["up_per_vector"] == pytest.approx(40.0) and w["proof_per_vector"] == pytest.approx(30.0)
    assert w["audits"] == 3 and w["clients"][0]["proof_bytes"] == 30_000


def test_communication_break_even_audit_rate(bench):
    """The rate at which a run's bytes would give 20x: both sides' proofs scaled from the rate
    the run audited at; none when the unaudited bases alone fall short."""
    cb = bench("communication_bench")

    def side(base: float, p1: float, rate: float) -> dict:
        return {"both": base + rate * p1, "proof": rate * p1, "proof_at_rate_1": p1, "audit_rate": rate}

    sync, local = side(0.71, 4.72, 0.25), side(0.029, 1.6, 0.4)
    r = cb.break_even_rate(sync, local)
    assert 0 < r < 0.01
    at_r = (0.71 + r * 4.72) / (0.029 + r * 1.6)
    assert at_r == pytest.approx(20.0)
    assert cb.break_even_rate(sync, side(0.04, 1.6, 0.4)) == 0.0  # 0.71 < 20 x 0.04: never
    assert cb.break_even_rate(sync, side(0.029, 0.1, 0.4)) == 1.0  # cheap local proofs: any rate
    assert cb.break_even_rate(sync, {"both": 0.03, "proof": 0.0, "proof_at_rate_1": None}) is None
    results = {"sync_sgd/native": {"median": {**sync, "error_end": 0.05, "verify": 1.0}},
               "local_sgd_int8/native": {"median": {**local, "error_end": 0.02, "verify": 1.0}}}  # fmt: skip
    g = cb.goals(results, [])[0]
    assert g["break_even_audit_rate"] == pytest.approx(r) and "at most 0.5%" in g["detail"]


# ---------------------------------------------------------------------- privacy_bench
def test_privacy_partition_is_label_skewed_and_disjoint(bench):
    import numpy as np

    pb = bench("privacy_bench")
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    index = pb.partition(labels, 6000, 10, 2, seed=1)
    assert index.shape == (6000, 10) and len(np.unique(index)) > 59_900  # nearly every image, once
    per_device = [len(set(labels[row].tolist())) for row in index]
    assert max(per_device) <= 2 and np.mean(per_device) > 1.5


@pytest.mark.slow
def test_privacy_bench_runs_the_engine_and_reports(bench, tmp_path, capsys):
    """A tiny population through the real Engine: the control learns, the dp run stops at
    its epsilon, the table and the goals are printed and the JSON written."""
    import json

    pb = bench("privacy_bench")
    out = tmp_path / "p.json"
    assert pb.main(["--devices", "300", "--rounds", "8", "--q", "0.2", "--epsilons", "4", "--eval-every", "4",
                    "--out", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    control, private = data["runs"]
    assert control["name"] == "control" and control["rounds"] == 8 and control["test_error"] < 0.8
    assert private["rounds"] == 8 and 3.0 < private["epsilon"] <= 4.0 and private["dp_noise"] > 0
    assert data["goals"][0]["result"] in ("PASS", "FAIL") and "epsilon 4" in capsys.readouterr().out
