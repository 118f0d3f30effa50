"""The browser's inner optimizers (engine/inner.js) against mlitb.optim, bit for bit.

`local_sgd` trainers take inner optimizer steps on their own data. In a browser that is
mlitb/web/static/engine/inner.js; its rules are mlitb.optim's NumPy SGD and Adam and
mlitb.model.decay.mean_gradient written out in float32 with Math.fround. Golden vectors:
the parameters after each of several consecutive steps (random summed gradients and
counts, state carried from step to step) from the Python optimizers; node recomputes
them and must match **bit for bit** (no ulp of slack: float32 +, -, *, /, sqrt computed in
double and rounded once are exactly float32's, and Adam's bias correction uses the same
double power the Python takes). The decay multipliers come from a real spec.

A whole local round is checked too: 5 inner Adam steps with the TF.js engine (cpu
backend) through inner.js's LocalRound, against the same round with the PyTorch
executor and mlitb.optim; the deltas agree to 1e-4 relative, so browser and native
local rounds are the same computation.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import ROOT, run_node

from mlitb.model.decay import mean_gradient
from mlitb.model.layout import decay_multipliers, init_params, state_rates
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet
from mlitb.optim import LRSchedule, make_optimizer

pytestmark = pytest.mark.node
SCRIPT = ROOT / "tests" / "js" / "inner_golden.js"
STEPS = 6

# a small conv net; the second conv and the first fc carry their own decay multipliers
NET = [
    {"type": "input", "out_sx": 6, "out_sy": 5, "out_depth": 2},
    {"type": "conv", "sx": 3, "filters": 3, "stride": 1, "pad": 1, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {
        "type": "conv",
        "sx": 2,
        "filters": 4,
        "stride": 1,
        "pad": 1,
        "activation": "tanh",
        "l1_decay_mul": 0.5,
        "l2_decay_mul": 2.5,
    },
    {"type": "fc", "num_neurons": 5, "activation": "sigmoid", "l1_decay_mul": 1.5, "l2_decay_mul": 0.25},
    {"type": "softmax", "num_classes": 3},
]

DECAY = {"l1_decay": 1e-3, "l2_decay": 5e-2}
CASES: dict[str, dict] = {
    "sgd momentum 0.9": {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9},
    "sgd momentum 0.9, l1+l2": {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, **DECAY},
    "sgd momentum 0": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0},
    "sgd momentum 0, l2": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0, "l2_decay": 0.1},
    "sgd momentum 0, l1": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0, "l1_decay": 0.01},
    "adam defaults": {"optimizer": "adam", "learning_rate": 0.001},
    "adam defaults, l1+l2": {"optimizer": "adam", "learning_rate": 0.001, **DECAY},
    "adam custom betas": {
        "optimizer": "adam",
        "learning_rate": 0.01,
        "beta1": 0.8,
        "beta2": 0.95,
        "eps": 1e-6,
    },
    "adam custom betas, l1+l2": {
        "optimizer": "adam",
        "learning_rate": 0.003,
        "beta1": 0.5,
        "beta2": 0.9,
        "eps": 1e-4,
        **DECAY,
    },
}


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode()


def f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


def python_optimizer(inner: dict, n: int):
    hyper = {k: inner[k] for k in ("momentum", "beta1", "beta2", "eps") if k in inner}
    return make_optimizer(inner["optimizer"], n, LRSchedule(inner["learning_rate"]), **hyper)


def golden_steps(inner: dict, seed: int) -> tuple[dict, list[np.ndarray]]:
    spec = Spec.from_json(NET)
    mul1, mul2 = decay_multipliers(spec)
    rng = np.random.default_rng(seed)
    params = init_params(spec, seed) + rng.normal(0, 0.05, spec.num_params).astype(np.float32)
    params[::7] = 0  # sign(0) = -1 in the l1 term
    params[1::11] *= -1
    opt = python_optimizer(inner, spec.num_params)
    p = params.copy()
    steps, expected = [], []
    for k in range(STEPS):
        n = int(rng.integers(1, 400))
        grad = (rng.normal(0, 1, spec.num_params) * n * 10.0 ** rng.integers(-4, 1)).astype(np.float32)
        grad[rng.random(spec.num_params) < 0.05] = 0  # dead units
        if k == 2:
            grad[:5] = [1e-30, -1e-30, 3e-8, -3e-8, 1e15]  # tiny and huge values
        g = mean_gradient(grad, n, p, inner.get("l1_decay", 0.0), inner.get("l2_decay", 0.0), mul1, mul2)
        opt.step(p, g)
        steps.append({"grad": b64(grad), "n": n})
        expected.append(p.copy())
    task = {"kind": "steps", "layers": spec.to_json(), "inner": inner, "params": b64(params), "steps": steps}
    return task, expected


@pytest.fixture(scope="module")
def step_results() -> dict[str, tuple[list[np.ndarray], dict]]:
    made = {name: golden_steps(inner, i) for i, (name, inner) in enumerate(CASES.items())}
    out = run_node(SCRIPT, {"tasks": [task for task, _ in made.values()]})["results"]
    return {name: (expected, got) for (name, (_, expected)), got in zip(made.items(), out, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_inner_steps_match_python_bit_for_bit(step_results, name):
    expected, got = step_results[name]
    assert "error" not in got, got.get("error")
    assert got["t"] == STEPS
    assert len(got["params"]) == STEPS
    for k, (want, text) in enumerate(zip(expected, got["params"], strict=True)):
        have = f32(text)
        bad = np.flatnonzero(have.view(np.uint32) != want.view(np.uint32))
        first = bad[0] if bad.size else 0
        assert bad.size == 0, (
            f"step {k + 1}: {bad.size} elements differ, first at {first}: {have[first]!r} != {want[first]!r}"
        )


def test_decay_multipliers_match_layout(step_results):
    _, got = step_results["sgd momentum 0.9"]
    mul1, mul2 = decay_multipliers(Spec.from_json(NET))
    assert np.array_equal(f32(got["mul_l1"]), mul1)
    assert np.array_equal(f32(got["mul_l2"]), mul2)
    # biases 0, conv/fc weights their layer's (definitions default to l1 0, l2 1)
    assert set(np.unique(mul1).tolist()) == {0.0, 0.5, 1.5}
    assert set(np.unique(mul2).tolist()) == {0.0, 0.25, 1.0, 2.5}


def test_same_config_and_refused_step():
    base = {"optimizer": "adam", "learning_rate": 0.001, "batch_size": 16}
    others = [
        dict(base),
        {**base, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},  # the defaults, spelled out
        {**base, "learning_rate": 0.002},
        {**base, "batch_size": 32},  # not an optimizer setting: the state stays
        {**base, "optimizer": "sgd"},
        {**base, "l2_decay": 1e-4},
        {**base, "beta2": 0.99},
        {**base, "optimizer": "rmsprop"},
    ]
    tasks = [
        {"kind": "same", "inner": base, "others": others},
        {
            "kind": "refuse",
            "inner": base,
            "params": b64(np.ones(3, np.float32)),
            "grad": b64(np.array([1, np.nan, 2], np.float32)),
            "n": 2,
        },
        {"kind": "steps", "layers": [], "inner": {"optimizer": "lbfgs"}, "params": "", "steps": []},
    ]
    same, refused, unknown = run_node(SCRIPT, {"tasks": tasks})["results"]
    assert same["same"] == [True, True, False, True, False, False, False, False]
    assert "NaN" in refused["error"] and refused["unchanged"] and refused["t"] == 0
    assert "lbfgs" in unknown["error"]


# --------------------------------------------------------------------------- a local round
ROUND_NET = [
    {"type": "input", "out_sx": 8, "out_sy": 7, "out_depth": 2},
    {"type": "conv", "sx": 3, "filters": 4, "stride": 1, "pad": 1, "activation": "relu", "l2_decay_mul": 2.0},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "conv", "sx": 3, "filters": 3, "stride": 1, "pad": 1, "activation": "tanh"},
    {"type": "fc", "num_neurons": 6, "activation": "sigmoid"},
    {"type": "softmax", "num_classes": 4},
]
ROUNDS = {
    "adam": {"optimizer": "adam", "learning_rate": 0.01, "batch_size": 8, "l2_decay": 1e-3},
    "sgd momentum": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9, "batch_size": 8},
}


DROPOUT_NET = [
    *ROUND_NET[:2],
    {"type": "dropout", "drop_prob": 0.3},
    *ROUND_NET[2:4],
    {"type": "fc", "num_neurons": 6, "activation": "sigmoid", "drop_prob": 0.5},
    ROUND_NET[5],
]


def golden_round(inner: dict, seed: int, defs: list | None = None, dropout: int | None = None):
    """A local round -> (task, start - end, summed loss); `dropout`: the seed of a dropout net's
    masks, step s of the round drawing those of (seed, s) as a trainer's record does."""
    spec = Spec.from_json(defs or ROUND_NET)
    mul1, mul2 = decay_multipliers(spec)
    rng = np.random.default_rng(seed)
    start = init_params(spec, seed) + rng.normal(0, 0.05, spec.num_params).astype(np.float32)
    sizes = [8, 8, 8, 8, 5]  # 5 inner steps, the last batch trimmed (fixed-work mode)
    batches = [
        (rng.random((n, *spec.input_shape), dtype=np.float32), rng.integers(0, spec.num_outputs, n))
        for n in sizes
    ]
    net = TorchNet(spec, start.copy())  # TorchNet's parameter shares the array's memory
    opt = python_optimizer(inner, spec.num_params)
    p, loss = start.copy(), 0.0
    for s, (x, y) in enumerate(batches):
        net.set_params(p)
        if dropout is not None:
            net.dropout_at(dropout, s)
        grad, count, batch_loss = net.gradient(x, y, train=True)
        g = mean_gradient(grad, count, p, inner.get("l1_decay", 0.0), inner.get("l2_decay", 0.0), mul1, mul2)
        opt.step(p, g)
        loss += batch_loss
    task = {
        "kind": "round",
        "layers": spec.to_json(),
        "inner": inner,
        "params": b64(start),
        "batches": [{"x": b64(x), "y": y.tolist(), "n": len(y)} for x, y in batches],
        **({"dropout": dropout} if dropout is not None else {}),
    }
    return task, start - p, loss


@pytest.mark.parametrize("name", [*ROUNDS, "adam, dropout"])
def test_local_round_tfjs_matches_pytorch(name):
    if name == "adam, dropout":  # the seeded masks: a dropout net's round is the same computation too
        task, want, loss = golden_round(ROUNDS["adam"], 7, DROPOUT_NET, dropout=0xDEADBEEF)
    else:
        task, want, loss = golden_round(ROUNDS[name], 7)
    (got,) = run_node(SCRIPT, {"tasks": [task]})["results"]
    assert "error" not in got, got.get("error")
    assert got["steps"] == 5 and got["vectors"] == 37 and got["unchanged"]
    assert got["tensors"] <= 1, "the engine leaks tensors"
    delta = f32(got["delta"])
    assert delta.shape == want.shape
    assert np.abs(want).max() > 1e-3  # the round moved the parameters
    err = float(np.abs(delta - want).max()) / float(np.abs(want).max())
    assert err <= 1e-4, err
    assert abs(got["loss"] - loss) <= 1e-4 * max(1.0, abs(loss))


# ------------------------------------------------- batchnorm's state, which is not trained
BN_NET = [
    {"type": "input", "out_sx": 6, "out_sy": 5, "out_depth": 2},
    {"type": "conv", "sx": 3, "filters": 3, "pad": 1},
    {"type": "batchnorm", "activation": "relu", "momentum": 0.2},
    {
        "type": "residual",
        "layers": [{"type": "conv", "sx": 3, "filters": 3, "pad": 1}, {"type": "batchnorm"}],
    },
    {"type": "globalavgpool"},
    {"type": "softmax", "num_classes": 3},
]


@pytest.mark.parametrize(
    "inner", [CASES["adam defaults, l1+l2"], CASES["sgd momentum 0.9"]], ids=["adam", "sgd"]
)
def test_state_moves_by_its_own_rule_bit_for_bit(inner):
    """Each step moves batchnorm's running statistics by state - rate x their mean gradient
    (mlitb.model.layout.state_rates), not by Adam or momentum, in float32 as Python does."""
    spec = Spec.from_json(BN_NET)
    mul1, mul2 = decay_multipliers(spec)
    rate = state_rates(spec)
    idx = np.flatnonzero(rate)
    rng = np.random.default_rng(3)
    params = init_params(spec, 3) + rng.normal(0, 0.05, spec.num_params).astype(np.float32)
    opt = python_optimizer(inner, spec.num_params)
    p, steps, expected = params.copy(), [], []
    for _ in range(STEPS):
        n = int(rng.integers(1, 50))
        grad = (rng.normal(0, 1, spec.num_params) * n).astype(np.float32)
        g = mean_gradient(grad, n, p, inner.get("l1_decay", 0.0), inner.get("l2_decay", 0.0), mul1, mul2)
        kept = p[idx].copy()
        opt.step(p, g)
        p[idx] = kept - rate[idx] * g[idx]  # float32 throughout
        steps.append({"grad": b64(grad), "n": n})
        expected.append(p.copy())
    task = {"kind": "steps", "layers": spec.to_json(), "inner": inner, "params": b64(params), "steps": steps}
    (got,) = run_node(SCRIPT, {"tasks": [task]})["results"]
    assert "error" not in got, got.get("error")
    assert np.array_equal(f32(got["mul_l1"]), mul1) and np.array_equal(f32(got["mul_l2"]), mul2)
    for k, (want, text) in enumerate(zip(expected, got["params"], strict=True)):
        have = f32(text)
        assert np.array_equal(have.view(np.uint32), want.view(np.uint32)), f"step {k + 1}"


def test_a_batchnorm_round_in_tfjs_is_a_native_workers_round():
    """5 inner Adam steps of a residual batchnorm net: the TF.js engine with inner.js, and
    PyTorch with the native worker's InnerOptimizer (mlitb.model.inner), give the same change,
    the running statistics included."""
    import torch

    from mlitb.model.inner import InnerOptimizer

    inner = ROUNDS["adam"]
    spec = Spec.from_json(BN_NET)
    rng = np.random.default_rng(5)
    start = init_params(spec, 5) + rng.normal(0, 0.05, spec.num_params).astype(np.float32)
    batches = [
        (rng.random((n, *spec.input_shape), dtype=np.float32), rng.integers(0, 3, n)) for n in (8, 8, 6)
    ]
    net = TorchNet(spec, start.copy())
    opt = InnerOptimizer(inner, spec.num_params, *decay_multipliers(spec), torch.device("cpu"),
                         state_rate=state_rates(spec))  # fmt: skip
    loss = 0.0
    for x, y in batches:
        net.flat.grad = None
        batch = net.loss(x, y)
        batch.backward()
        opt.step(net.flat.data, net.flat.grad, len(y))
        loss += float(batch.detach())
    want = start - net.get_params()
    task = {"kind": "round", "layers": spec.to_json(), "inner": inner, "params": b64(start),
            "batches": [{"x": b64(x), "y": y.tolist(), "n": len(y)} for x, y in batches]}  # fmt: skip
    (got,) = run_node(SCRIPT, {"tasks": [task]})["results"]
    assert "error" not in got, got.get("error")
    delta = f32(got["delta"])
    idx = np.flatnonzero(state_rates(spec))
    assert np.abs(want[idx]).max() > 1e-3  # the running statistics moved
    err = float(np.abs(delta - want).max()) / float(np.abs(want).max())
    assert err <= 1e-4, err
    assert abs(got["loss"] - loss) <= 1e-4 * max(1.0, abs(loss))
