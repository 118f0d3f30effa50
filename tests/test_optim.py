"""Server-side optimizers: formulas, ConvNetJS's Trainer, torch's Adam, state bytes, validation."""

from __future__ import annotations

import itertools
import json
import math
import re
import struct

import numpy as np
import pytest
import torch
from conftest import run_convnetjs

from mlitb.model import Model, decay_multipliers, jsonfloats
from mlitb.model.decay import mean_gradient
from mlitb.optim import (
    OPTIMIZERS,
    LRSchedule,
    OptimizerError,
    make_optimizer,
    optimizer_from_bytes,
)
from mlitb.optim.base import MAGIC, STATE_VERSION, parse_state

N = 257  # an odd size, so nothing lines up by accident
STEPS = 7
# Halves every 2 steps down to a floor it reaches at step 6: 0.05 .05 .025 .025 .0125 .0125 .01
SCHEDULE = LRSchedule(lr=0.05, factor=0.5, interval=2, floor=0.01)
LRS = [0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.01, 0.01]  # written out, not from SCHEDULE

# The documented defaults (ConvNetJS's Trainer's, Kingma & Ba's for Adam).
DEFAULTS = {
    "adagrad": {"eps": 1e-6},
    "sgd": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "windowgrad": {"ro": 0.95, "eps": 1e-6},
    "adadelta": {"ro": 0.95, "eps": 1e-6},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}

# Non-default hyperparameters, so a rule that ignores one is caught.
CASES = [
    ("adagrad", {}),
    ("adagrad", {"eps": 1e-4}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.7}),
    ("sgd", {"momentum": 0.0}),
    ("nesterov", {}),
    ("nesterov", {"momentum": 0.6}),
    ("windowgrad", {}),
    ("windowgrad", {"ro": 0.8, "eps": 1e-5}),
    ("adadelta", {}),
    ("adadelta", {"ro": 0.8, "eps": 1e-4}),
    ("adam", {}),
    ("adam", {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6}),
]


def case_id(case) -> str:
    name, hyper = case
    return name + "".join(f"-{k}={v}" for k, v in hyper.items())


def data(seed: int = 7, n: int = N, steps: int = STEPS):
    """float32 params and a gradient per step; magnitudes spread over 1e-6..1."""
    rng = np.random.default_rng(seed)
    p0 = (rng.standard_normal(n) * 0.5).astype(np.float32)
    scale = np.logspace(-6, 0, n)
    grads = [(rng.standard_normal(n) * scale).astype(np.float32) for _ in range(steps)]
    grads[1][::5] = 0.0  # some exact zeros as well
    return p0, grads


def reference(name: str, hyper: dict, p0: np.ndarray, grads: list):
    """The documented rules, written out plainly in float64."""
    h = {**DEFAULTS[name], **hyper}
    p = p0.astype(np.float64)
    a = np.zeros_like(p)  # gsum / v / m
    b = np.zeros_like(p)  # xsum / adam's v
    for t, g32 in enumerate(grads):
        g = g32.astype(np.float64)
        lr = LRS[t]
        if name == "adagrad":
            a = a + g * g
            p = p - lr / np.sqrt(a + h["eps"]) * g
        elif name == "sgd":
            if h["momentum"] == 0:
                p = p - lr * g
            else:
                a = h["momentum"] * a - lr * g
                p = p + a
        elif name == "nesterov":
            prev = a
            a = h["momentum"] * a + lr * g
            p = p + h["momentum"] * prev - (1 + h["momentum"]) * a
        elif name == "windowgrad":
            a = h["ro"] * a + (1 - h["ro"]) * g * g
            p = p - lr / np.sqrt(a + h["eps"]) * g
        elif name == "adadelta":  # no learning rate
            a = h["ro"] * a + (1 - h["ro"]) * g * g
            dx = -np.sqrt((b + h["eps"]) / (a + h["eps"])) * g
            b = h["ro"] * b + (1 - h["ro"]) * dx * dx
            p = p + dx
        elif name == "adam":
            k = t + 1
            a = h["beta1"] * a + (1 - h["beta1"]) * g
            b = h["beta2"] * b + (1 - h["beta2"]) * g * g
            m_hat = a / (1 - h["beta1"] ** k)
            v_hat = b / (1 - h["beta2"] ** k)
            p = p - lr * m_hat / (np.sqrt(v_hat) + h["eps"])
        else:
            raise AssertionError(name)
    names = {"adagrad": ("gsum",), "sgd": ("v",), "nesterov": ("v",), "windowgrad": ("gsum",)}
    names |= {"adadelta": ("gsum", "xsum"), "adam": ("m", "v")}
    return p, dict(zip(names[name], (a, b), strict=False))


def run(name: str, hyper: dict, schedule: LRSchedule | None, p0: np.ndarray, grads: list):
    opt = make_optimizer(name, p0.size, schedule, **hyper)
    p = p0.copy()
    for g in grads:
        opt.step(p, g)
    return p, opt


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def craft(header: dict, body: bytes, version: int = STATE_VERSION) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<II", version, len(head)) + head + body


# -- the update rules --------------------------------------------------------------------


def test_registry_and_defaults():
    assert set(OPTIMIZERS) == set(DEFAULTS)
    for name, cls in OPTIMIZERS.items():
        assert cls.name == name
        assert cls.defaults == DEFAULTS[name], name


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_float64_formula(case):
    name, hyper = case
    p0, grads = data()
    p, opt = run(name, hyper, SCHEDULE, p0, grads)
    want_p, want_state = reference(name, hyper, p0, grads)
    assert p.dtype == np.float32 and opt.t == STEPS
    np.testing.assert_allclose(p, want_p, rtol=1e-5, atol=1e-6)
    # The displacement too, so a large p0 cannot hide a wrong update.
    np.testing.assert_allclose(p - p0, want_p - p0, rtol=1e-4, atol=1e-6)
    assert set(opt.state) == set(want_state)
    for k, v in want_state.items():
        assert opt.state[k].dtype == np.float32
        # 2e-5: Adam's 1 - f32(0.999) is 1.3e-5 below 0.001, so its v runs that much low
        np.testing.assert_allclose(opt.state[k], v, rtol=2e-5, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"adadelta"}))
def test_schedule_is_used(name):
    """The same run with a constant learning rate ends elsewhere; opt.lr follows the schedule."""
    p0, grads = data()
    p, opt = run(name, {}, SCHEDULE, p0, grads)
    assert opt.lr == SCHEDULE.at(STEPS) == 0.01
    p_const, _ = run(name, {}, LRSchedule(lr=0.05), p0, grads)
    assert np.max(np.abs(p - p_const)) > 1e-3


def test_adadelta_ignores_the_learning_rate():
    p0, grads = data()
    p1, _ = run("adadelta", {}, SCHEDULE, p0, grads)
    p2, _ = run("adadelta", {}, LRSchedule(lr=123.0), p0, grads)
    assert np.array_equal(bits(p1), bits(p2))


def test_default_schedule_is_constant_001():
    opt = make_optimizer("sgd", 3)
    assert opt.schedule == LRSchedule() and opt.lr == 0.01
    p = np.zeros(3, np.float32)
    for _ in range(5):
        opt.step(p, np.ones(3, np.float32))
    assert opt.lr == 0.01


# -- Adam against torch ----------------------------------------------------------------


@pytest.mark.parametrize(
    "hyper", [{}, {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6}], ids=["defaults", "custom"]
)
def test_adam_matches_torch(hyper):
    h = {**DEFAULTS["adam"], **hyper}
    p0, grads = data(steps=8)
    p, _ = run("adam", hyper, SCHEDULE, p0, grads)

    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.Adam([tp], lr=SCHEDULE.lr, betas=(h["beta1"], h["beta2"]), eps=h["eps"])
    for t, g in enumerate(grads):
        for group in topt.param_groups:
            group["lr"] = LRS[t]
        tp.grad = torch.tensor(g)
        topt.step()
    want = tp.detach().numpy()
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p - p0, want - p0, rtol=1e-4, atol=1e-6)

    # ConvNetJS's Adam multiplies the moments by (1 - beta^t): this comparison would catch it.
    m = np.zeros(N)
    v = np.zeros(N)
    q = p0.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        m = h["beta1"] * m + (1 - h["beta1"]) * g
        v = h["beta2"] * v + (1 - h["beta2"]) * g.astype(np.float64) ** 2
        q = q - LRS[t - 1] * m * (1 - h["beta1"] ** t) / (np.sqrt(v * (1 - h["beta2"] ** t)) + h["eps"])
    assert np.max(np.abs(q - want)) > 1e-2


# -- ConvNetJS's Trainer -----------------------------------------------------------------

CNJS_NET = [
    {"type": "input", "out_sx": 6, "out_sy": 5, "out_depth": 2},
    # l1_decay_mul 1 (ConvNetJS's makeLayers default is 0), so l1 decay is exercised
    {"type": "conv", "sx": 3, "filters": 3, "stride": 1, "pad": 1, "activation": "relu", "l1_decay_mul": 1.0},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "conv", "sx": 2, "filters": 4, "stride": 1, "pad": 0, "activation": "tanh"},
    {"type": "fc", "num_neurons": 5, "activation": "sigmoid", "l2_decay_mul": 0.5, "l1_decay_mul": 0.5},
    {"type": "softmax", "num_classes": 3},
]
L1, L2 = 0.01, 0.02

CNJS_CASES = [
    ("adagrad", {"eps": 1e-5}, {"eps": 1e-5}),
    ("sgd", {"momentum": 0.9}, {"momentum": 0.9}),
    ("sgd", {"momentum": 0.0}, {"momentum": 0.0}),
    ("windowgrad", {"ro": 0.9, "eps": 1e-5}, {"ro": 0.9, "eps": 1e-5}),
    ("adadelta", {"ro": 0.9, "eps": 1e-4}, {"ro": 0.9, "eps": 1e-4}),
    # ConvNetJS's own defaults on both sides
    ("adagrad", {}, {}),
    ("windowgrad", {}, {}),
    ("adadelta", {}, {}),
]


@pytest.mark.node
@pytest.mark.parametrize(
    ("method", "trainer", "hyper"), CNJS_CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CNJS_CASES)]
)
def test_one_step_matches_convnetjs_trainer(method, trainer, hyper):
    lr = 0.05
    model = Model.from_spec(CNJS_NET, seed=3)
    h, w, d = model.spec.input_shape
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, h, w, d)).astype(np.float32)
    y = np.array([0, 2, 1, 2])

    net = json.loads(jsonfloats.dumps(model.to_json("convnetjs")))
    answer = run_convnetjs(
        {
            "task": "train_step",
            "net": net,
            "x": [xi.ravel().tolist() for xi in x],  # NHWC: Vol order ((sx*y)+x)*depth+d
            "y": y.tolist(),
            "shape": [h, w, d],
            "trainer": {"method": method, "learning_rate": lr, "l1_decay": L1, "l2_decay": L2, **trainer},
        }
    )
    want = Model.from_json(answer["net"]).params

    grad, n, loss = model.executor().gradient(x, y)
    assert n == 4 and loss > 0
    l1_mul, l2_mul = decay_multipliers(model.spec)
    assert l1_mul.any() and l2_mul.any()

    def step(l1: float, l2: float) -> np.ndarray:
        params = model.params.copy()
        g = mean_gradient(grad, n, params, l1, l2, l1_mul, l2_mul)
        make_optimizer(method, model.num_params, LRSchedule(lr=lr), **hyper).step(params, g)
        return params

    got = step(L1, L2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.max(np.abs(want - model.params)) > 1e-3  # the step did move the weights
    # and the decay mattered: leaving either term out misses ConvNetJS's result
    assert np.max(np.abs(step(0.0, L2) - want)) > 1e-4
    assert np.max(np.abs(step(L1, 0.0) - want)) > 1e-4


# -- state bytes -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_state_bytes_round_trip_and_resume(case):
    name, hyper = case
    p0, grads = data(steps=6)
    p, opt = run(name, hyper, SCHEDULE, p0, grads[:3])
    blob = opt.state_bytes()
    assert blob.startswith(MAGIC) and struct.unpack_from("<I", blob, 8)[0] == STATE_VERSION

    restored = optimizer_from_bytes(blob)
    assert type(restored) is type(opt)
    assert restored.state_bytes() == blob
    assert (restored.t, restored.hyper, restored.schedule) == (opt.t, opt.hyper, opt.schedule)
    for k in opt.state:
        assert np.array_equal(bits(restored.state[k]), bits(opt.state[k]))

    # loading into a fresh optimizer made with other settings replaces them all
    other = make_optimizer(name, N)
    other.load_state_bytes(blob)
    assert other.state_bytes() == blob

    # all three continue exactly like the original
    runs = []
    for o in (opt, restored, other):
        q = p.copy()
        for g in grads[3:]:
            o.step(q, g)
        runs.append((bits(q), o.state_bytes()))
    for q, b in runs[1:]:
        assert np.array_equal(q, runs[0][0])
        assert b == runs[0][1]


def test_state_bytes_of_fresh_optimizer():
    blob = make_optimizer("adadelta", 5).state_bytes()
    header, arrays = parse_state(blob)
    assert header["name"] == "adadelta" and header["t"] == 0 and header["num_params"] == 5
    assert [a for a, _ in header["arrays"]] == ["gsum", "xsum"]
    assert all(v.dtype == np.float32 and v.shape == (5,) and not v.any() for v in arrays.values())
    # the body is the arrays as little-endian float32, after the header
    assert len(blob) == 16 + struct.unpack_from("<I", blob, 12)[0] + 2 * 5 * 4


def _good_state() -> bytes:
    p0, grads = data(n=10, steps=2)
    _, opt = run("adam", {}, SCHEDULE, p0, grads)
    return opt.state_bytes()


def _corrupt_cases():
    good = _good_state()
    n = struct.unpack_from("<I", good, 12)[0]
    header, _ = parse_state(good)
    body = good[16 + n :]
    return [
        ("bad-magic", b"MLITBOPX" + good[8:], "do not start with b'MLITBOPT'"),
        ("empty", b"", "do not start with"),
        ("not-bytes", "MLITBOPT" + "x" * 40, "do not start with"),
        ("magic-only", good[:8], "truncated"),
        ("truncated-in-prefix", good[:13], "truncated"),
        ("truncated-in-header", good[: 16 + n // 2], "header is corrupt"),
        ("truncated-in-body", good[:-1], f"holds {len(good) - 1} bytes, its header says {len(good)}"),
        ("extra-byte", good + b"\0", "its header says"),
        ("version-2", good[:8] + struct.pack("<I", 2) + good[12:], "version 2 is not supported"),
        ("version-0", good[:8] + struct.pack("<I", 0) + good[12:], "version 0 is not supported"),
        ("header-not-json", craft(header, body)[:16] + b"{" * n + body, "header is corrupt"),
        ("header-a-list", craft([1, 2], b""), "header is corrupt"),  # type: ignore[arg-type]
        ("header-no-t", craft({k: v for k, v in header.items() if k != "t"}, body), "header is corrupt"),
        ("header-no-arrays", craft({k: v for k, v in header.items() if k != "arrays"}, body), "corrupt"),
        ("unknown-name", craft({**header, "name": "rmsprop"}, body), "unknown optimizer 'rmsprop'"),
    ]


@pytest.mark.parametrize(
    ("blob", "message"), [c[1:] for c in _corrupt_cases()], ids=[c[0] for c in _corrupt_cases()]
)
def test_corrupt_state_refused(blob, message):
    with pytest.raises(OptimizerError, match=re.escape(message)):
        optimizer_from_bytes(blob)
    opt = make_optimizer("adam", 10)
    before = opt.state_bytes()
    with pytest.raises(OptimizerError):
        opt.load_state_bytes(blob)
    assert opt.state_bytes() == before  # a refused load changes nothing


def test_state_of_another_kind_or_size_refused():
    blob = _good_state()  # adam, 10 parameters
    opt = make_optimizer("adagrad", 10)
    with pytest.raises(OptimizerError, match="state is for optimizer 'adam', not 'adagrad'"):
        opt.load_state_bytes(blob)
    opt = make_optimizer("adam", 11)
    before = opt.state_bytes()
    with pytest.raises(OptimizerError, match="state is for 10 parameters, this model has 11"):
        opt.load_state_bytes(blob)
    assert opt.state_bytes() == before


def _crafted(**changes) -> bytes:
    """A valid adam state for 10 parameters, with header fields replaced."""
    header, arrays = parse_state(_good_state())
    body = b"".join(v.astype("<f4").tobytes() for v in arrays.values())
    if "arrays" in changes:
        body = b"\0" * (4 * sum(c for _, c in changes["arrays"]))
    return craft({**header, **changes}, body)


def _hyper(**kw) -> dict:
    return {**DEFAULTS["adam"], **kw}


BAD_HYPER_STATES = {
    "negative": (_hyper(eps=-1.0), "eps must be a finite number >= 0"),
    "beta1=1": (_hyper(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    "unknown": (_hyper(bogus=1.0), "state has hyperparameters"),
    "missing": ({"beta1": 0.9, "eps": 1e-8}, "state has hyperparameters"),
}


@pytest.mark.parametrize(("hyper", "message"), BAD_HYPER_STATES.values(), ids=BAD_HYPER_STATES.keys())
def test_state_with_bad_hyperparameters_refused(hyper, message):
    blob = _crafted(hyper=hyper)
    with pytest.raises(OptimizerError, match=message):
        make_optimizer("adam", 10).load_state_bytes(blob)
    with pytest.raises(OptimizerError, match=message):
        optimizer_from_bytes(blob)


@pytest.mark.parametrize("hyper", [h for h, _ in BAD_HYPER_STATES.values()], ids=BAD_HYPER_STATES.keys())
def test_refused_state_load_changes_nothing(hyper):
    opt = make_optimizer("adam", 10)  # the default schedule; the state has SCHEDULE
    before = opt.state_bytes()
    with pytest.raises(OptimizerError):
        opt.load_state_bytes(_crafted(hyper=hyper))
    assert opt.state_bytes() == before


@pytest.mark.parametrize(
    "arrays",
    [[["m", 3], ["v", 3]], [["m", 10]], [["m", 10], ["w", 10]], [["m", 10], ["v", 10], ["x", 10]], []],
    ids=["too-short", "missing", "renamed", "extra", "none"],
)
def test_state_with_wrong_arrays_refused(arrays):
    opt = make_optimizer("adam", 10)
    with pytest.raises(OptimizerError):
        opt.load_state_bytes(_crafted(arrays=arrays))


def test_state_with_bad_schedule_refused():
    header, _ = parse_state(_good_state())
    blob = _crafted(schedule={**header["schedule"], "factor": 2.0})
    with pytest.raises(OptimizerError, match="factor"):
        make_optimizer("adam", 10).load_state_bytes(blob)


# -- gradient and parameter checks -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_refused(name, bad):
    p0, grads = data(n=10, steps=3)
    p, opt = run(name, {}, SCHEDULE, p0, grads[:2])
    before_p, before_state = p.copy(), opt.state_bytes()
    g = grads[2].copy()
    g[4] = bad
    with pytest.raises(OptimizerError, match="NaN or Inf; step refused"):
        opt.step(p, g)
    assert np.array_equal(bits(p), bits(before_p))
    assert opt.state_bytes() == before_state  # t and accumulators unchanged
    opt.step(p, grads[2])  # and it still works afterwards
    assert opt.t == 3


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradient_overflowing_float32_refused(name):
    opt = make_optimizer(name, 3, momentum=0.0) if name == "sgd" else make_optimizer(name, 3)
    p = np.ones(3, np.float32)
    with np.errstate(all="ignore"), pytest.raises(OptimizerError):
        opt.step(p, np.array([1e300, 0.0, 0.0]))
    assert np.all(p == 1) and opt.t == 0


@pytest.mark.parametrize(
    ("params", "grad"),
    [
        (np.zeros(10, np.float64), np.zeros(10, np.float32)),
        (np.zeros(10, np.float16), np.zeros(10, np.float32)),
        (np.zeros(10, np.int32), np.zeros(10, np.float32)),
        (np.zeros(10, np.float32), np.zeros(11, np.float32)),
        (np.zeros(10, np.float32), np.zeros(9, np.float32)),
        (np.zeros(10, np.float32), np.zeros((10, 1), np.float32)),
        (np.zeros((10, 1), np.float32), np.zeros((10, 1), np.float32)),
        (np.zeros(11, np.float32), np.zeros(11, np.float32)),
        (np.zeros(0, np.float32), np.zeros(0, np.float32)),
    ],
    ids=[
        "f64-params",
        "f16-params",
        "int-params",
        "long-grad",
        "short-grad",
        "2d-grad",
        "2d-both",
        "wrong-size",
        "empty",
    ],
)
def test_wrong_shape_or_dtype_refused(params, grad):
    opt = make_optimizer("adagrad", 10)
    before = params.copy()
    with pytest.raises(OptimizerError, match=r"expected float32 params and gradient of shape \(10,\)"):
        opt.step(params, grad)
    assert np.array_equal(params, before) and opt.t == 0


def test_unknown_optimizer_refused():
    with pytest.raises(OptimizerError, match="unknown optimizer 'rmsprop'; use one of adagrad, sgd"):
        make_optimizer("rmsprop", 10)
    with pytest.raises(OptimizerError, match="unknown optimizer 'Adam'"):
        make_optimizer("Adam", 10)


@pytest.mark.parametrize(
    ("name", "hyper"),
    [
        ("adagrad", {"momentum": 0.9}),
        ("sgd", {"lr": 0.1}),
        ("adadelta", {"learning_rate": 1.0}),
        ("adam", {"beta_1": 0.9}),
        ("nesterov", {"eps": 1e-6}),
    ],
)
def test_unknown_hyperparameter_refused(name, hyper):
    key = next(iter(hyper))
    with pytest.raises(OptimizerError, match=rf"{name}: unknown hyperparameter\(s\) \['{key}'\]"):
        make_optimizer(name, 10, **hyper)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(("name", "key"), [("adagrad", "eps"), ("sgd", "momentum"), ("adam", "beta2")])
def test_invalid_hyperparameter_value_refused(name, key, value):
    with pytest.raises(OptimizerError, match=f"{key} must be a finite number >= 0"):
        make_optimizer(name, 10, **{key: value})


@pytest.mark.parametrize(
    ("name", "hyper", "message"),
    [
        ("adam", {"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),  # bias correction divides by 0
        ("adam", {"beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
        ("adam", {"beta1": 1.5}, r"beta1 must be in \[0, 1\)"),
        ("windowgrad", {"ro": 1.5}, r"ro must be in \[0, 1\)"),  # running mean goes negative: NaN
        ("adadelta", {"ro": 2.0}, r"ro must be in \[0, 1\)"),
        ("sgd", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ("nesterov", {"momentum": 3.0}, r"momentum must be in \[0, 1\)"),
        ("adagrad", {"eps": 0.0}, "eps must be > 0"),
    ],
    ids=[
        "adam-beta1=1",
        "adam-beta2=1",
        "adam-beta1=1.5",
        "windowgrad-ro=1.5",
        "adadelta-ro=2",
        "sgd-momentum=1",
        "nesterov-momentum=3",
        "adagrad-eps=0",
    ],
)
def test_hyperparameter_out_of_range_refused(name, hyper, message):
    with pytest.raises(OptimizerError, match=f"{name}: {message}"):
        make_optimizer(name, 3, **hyper)


# -- the learning-rate schedule ----------------------------------------------------------


def test_schedule_like_the_mlitb_prototype():
    s = LRSchedule(lr=0.01, factor=0.999, interval=2, floor=1e-5)
    assert s.at(0) == s.at(1) == 0.01
    assert s.at(2) == s.at(3) == pytest.approx(0.01 * 0.999)
    assert s.at(200) == pytest.approx(0.01 * 0.999**100)
    # 0.01 * 0.999^k first drops below 1e-5 at k = 6905, i.e. at step 13810
    k = math.ceil(math.log(1e-3) / math.log(0.999))
    assert k == 6905
    assert s.at(2 * k - 1) == pytest.approx(0.01 * 0.999 ** (k - 1)) and s.at(2 * k - 1) > 1e-5
    assert s.at(2 * k) == 1e-5
    assert s.at(10**9) == 1e-5
    values = [s.at(t) for t in range(0, 20000, 7)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_schedule_defaults_and_no_floor():
    s = LRSchedule()
    assert (s.lr, s.factor, s.interval, s.floor) == (0.01, 1.0, 1, 0.0)
    assert s.at(0) == s.at(10**6) == 0.01
    s = LRSchedule(lr=1.0, factor=0.5)
    assert [s.at(t) for t in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert s.at(10**4) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, "lr must be a finite number >= 0"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0"),
        ({"lr": float("inf")}, "lr must be a finite number >= 0"),
        ({"lr": True}, "lr must be a finite number >= 0"),
        ({"lr": "0.1"}, "lr must be a finite number >= 0"),
        ({"lr": None}, "lr must be a finite number >= 0"),
        ({"factor": 0}, r"factor must be in \(0, 1\]"),
        ({"factor": 1.5}, r"factor must be in \(0, 1\]"),
        ({"factor": -0.5}, "factor must be a finite number >= 0"),
        ({"factor": float("nan")}, "factor must be a finite number >= 0"),
        ({"interval": 0}, "interval must be an integer >= 1"),
        ({"interval": -2}, "interval must be an integer >= 1"),
        ({"interval": 1.5}, "interval must be an integer >= 1"),
        ({"interval": 2.0}, "interval must be an integer >= 1"),
        ({"interval": True}, "interval must be an integer >= 1"),
        ({"floor": -1e-5}, "floor must be a finite number >= 0"),
        ({"floor": float("inf")}, "floor must be a finite number >= 0"),
    ],
)
def test_schedule_validation(kwargs, message):
    with pytest.raises(ValueError, match="learning-rate schedule: " + message):
        LRSchedule(**kwargs)


def test_schedule_is_immutable():
    s = LRSchedule()
    with pytest.raises(AttributeError):
        s.lr = 1.0  # type: ignore[misc]
