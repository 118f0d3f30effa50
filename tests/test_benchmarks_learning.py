"""benchmarks/learning_bench.py's plain baseline and goals, and benchmarks/step_bench.py's
nets: the torch.nn model is the spec's architecture (same outputs as mlitb's executor
from the same weights), the plain loop trains without mlitb, the goals judge honestly."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from mlitb.model.layout import segments
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import learning_bench as lb
from bench_util import torch_nn_model

LAYER_DEFS = json.loads(resources.files("mlitb.examples").joinpath("mnist.json").read_text())["layer_defs"]


def flat_from_torch_nn(model: torch.nn.Sequential, spec: Spec) -> np.ndarray:
    """The model's weights in mlitb's flat layout: conv [out, sy, sx, in], fc inputs in
    HWC order (nn.Flatten is CHW)."""
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    out = np.empty(spec.num_params, np.float32)
    mods = iter(convs + linears)
    current = None
    for seg in segments(spec):
        layer = spec.layers[seg.layer]
        if seg.name == "filters":
            current = next(mods)
            w = current.weight.detach()
            if isinstance(current, torch.nn.Conv2d):
                w = w.permute(0, 2, 3, 1)
            else:
                h, wd, d = layer.in_shape
                w = w.view(w.shape[0], d, h, wd).permute(0, 2, 3, 1)
            out[seg.offset : seg.stop] = w.reshape(-1).numpy()
        else:
            out[seg.offset : seg.stop] = current.bias.detach().numpy()
    return out


def test_torch_nn_model_is_the_specs_architecture():
    spec = Spec.from_json(LAYER_DEFS)
    torch.manual_seed(3)
    model = torch_nn_model(LAYER_DEFS).eval()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params == 5994
    net = TorchNet(spec, flat_from_torch_nn(model, spec))
    x = np.random.default_rng(0).random((7, 28, 28, 1), dtype=np.float32)
    with torch.no_grad():
        plain = torch.softmax(model(torch.from_numpy(x).permute(0, 3, 1, 2)), dim=1).numpy()
    np.testing.assert_allclose(net.predict(x), plain, rtol=1e-4, atol=1e-6)


def test_torch_nn_model_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="dropout"):
        torch_nn_model([*LAYER_DEFS[:-1], {"type": "dropout", "drop_prob": 0.5}, LAYER_DEFS[-1]])
    with pytest.raises(ValueError, match="softmax"):
        torch_nn_model(LAYER_DEFS[:-1])


def test_plain_loop_trains_and_snapshots_state_dicts():
    import learning_bench as lb

    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    out = lb.run_plain(32, 1e-3, 0.6, 0, 0, (x, y), lb.EarlyStop(None, 0.015))
    snaps = out["snapshots"]
    assert out["steps"] > 0 and out["vectors"] >= 32 and out["batch"] == 32 and out["lr"] == 1e-3
    assert snaps[0][0] == 0.0 and snaps[-1][1] == out["steps"]
    assert set(snaps[0][2]) == set(lb.plain_model(0).state_dict())
    assert any(not np.array_equal(snaps[0][2][k], snaps[-1][2][k]) for k in snaps[0][2])


def _result(kind, times, batch=None):
    """A configuration's results as main() leaves them: runs per repeat and their medians."""
    import learning_bench as lb

    runs = [{"repeat": i, "t_2pct": a, "t_1.5pct": b} for i, (a, b) in enumerate(times)]
    median = {k: lb.med_time([r[k] for r in runs]) for k in ("t_2pct", "t_1.5pct")}
    r = {"kind": kind, "runs": runs, "median": median}
    if batch:
        r.update(batch=batch, lr=1e-3)
    return r


def test_goals_compare_the_default_algorithm_with_the_plain_loop():
    import learning_bench as lb

    args = lb.parse_args(["--only", "plain-torch"])
    alg = lb.default_algorithm()
    results = {
        "plain-torch": _result("plain", [(10.0, 20.0), (12.0, 22.0)], batch=32),
        f"mlitb-{alg}-1w": _result("mlitb", [(12.0, 30.0), (14.0, None)]),
        f"mlitb-{alg}-2w": _result("mlitb", [(11.0, 40.0), (11.0, 50.0)]),
    }
    goals = {g["goal"][:2]: g for g in lb.goals_timed(results, 60, args)}
    assert goals["1a"]["result"] == "PASS" and goals["1a"]["ratio"] == pytest.approx(13 / 11)
    assert goals["1a"]["per_repeat_ratios"] == [1.2, pytest.approx(14 / 12, abs=1e-3)]
    # 1 worker's median to 1.5 % is infinite (one repeat never got there): FAIL, no fallback
    assert goals["1b"]["result"] == "FAIL" and goals["1b"]["ratio"] is None
    assert goals["2a"]["result"] == "PASS"
    assert goals["2b"]["result"] == "PASS"  # 45 s against never
    args = lb.parse_args(["--only", "plain-torch", "--set", "verify=false"])
    assert "not the defaults: --set verify=false" in lb.goals_timed(results, 60, args)[0]["detail"]


def test_sweep_picks_the_earliest_to_one_and_a_half_percent():
    import learning_bench as lb

    points = [
        {"t_1.5pct": None, "t_2pct": 5.0, "best_error": 0.016},
        {"t_1.5pct": 14.0, "t_2pct": 8.0, "best_error": 0.014},
        {"t_1.5pct": 14.0, "t_2pct": 7.0, "best_error": 0.015},
    ]
    assert min(points, key=lb.sweep_key) is points[2]


def test_step_bench_ablations_compute_the_same_step():
    """step_bench's ablations (ReLU after the pool, contiguous conv weights) change speed
    only: the loss and the gradient of mlitb's executor stay the same."""
    import step_bench as sb

    spec = Spec.from_json(LAYER_DEFS)
    rng = np.random.default_rng(5)
    net = TorchNet(spec, rng.standard_normal(spec.num_params).astype(np.float32) * 0.3)
    x = rng.random((6, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 6)
    ref, _, loss = net.gradient(x, y)
    before = dict(sb.torch_executor.OPS)
    for patch in (sb.relu_after_pool(net), sb.contiguous_conv_weights()):
        with patch:
            grad, _, patched_loss = net.gradient(x, y)
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
        assert patched_loss == pytest.approx(loss, rel=1e-5)
    assert before == sb.torch_executor.OPS  # the patches end with their block


def test_observer_snapshots_are_the_parameters_as_of_each_tick(monkeypatch):
    """mlitb's curve is sampled at the plain loop's instants: at each whole snapshot_every, the
    newest frame that had arrived (reported at the tick), once per iteration; no frame is
    dropped for arriving early in a second, and the newest frame always ends the curve."""
    monkeypatch.setattr(lb.TASK, "snapshot_every", 1.0)
    obs = lb.Observer("ws://unused", "p", keep={30})
    pre = np.zeros(2, np.float32)
    obs._record(-1.0, 0, pre)  # before t0: the starting point
    obs.set_t0(0.0)
    for t, it in [(0.7, 1), (1.3, 2), (2.04, 3), (2.7, 4), (3.42, 5), (3.6, 30), (6.2, 31)]:
        obs._record(t, it, np.full(2, it, np.float32))
    got = [(t, it) for t, it, _ in obs.snapshots()]
    # tick 1: it 1; 2: it 2; 3: it 4 (3 arrived at 2.04 but 4 is newer by 3.0); 4: it 30; 5, 6: none new;
    # 7: it 31; iteration 30 also at its own time (kept)
    assert got == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 4), (3.6, 30), (4.0, 30), (7.0, 31)]
