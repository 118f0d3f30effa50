"""The PyTorch executor: float64 finite-difference checks for every layer type,
sums (not means), dropout semantics, devices, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlitb.model import Model, decay_multipliers
from mlitb.model.decay import decay_gradient
from mlitb.model.torch_executor import TorchNet


def _net(defs, seed=0, dtype=torch.float64):
    model = Model.from_spec(defs, seed=seed)
    return model, TorchNet(model.spec, model.params.astype(np.float64), dtype=dtype)


def _loss64(net, params, x, y):
    with torch.no_grad():
        net.flat.copy_(torch.as_tensor(params))
        return float(net.loss(x, y))


INPUT = {"type": "input", "out_sx": 5, "out_sy": 4, "out_depth": 3}
HEADS = {
    "softmax": {"type": "softmax", "num_classes": 3},
    "svm": {"type": "svm", "num_classes": 3},
    "regression": {"type": "regression", "num_neurons": 2},
}
BODIES = {
    "conv": [{"type": "conv", "sx": 3, "filters": 2, "stride": 1, "pad": 1}],
    "conv-stride2-pad0": [{"type": "conv", "sx": 2, "sy": 3, "filters": 3, "stride": 2}],
    "conv-stride3-pad2": [{"type": "conv", "sx": 3, "filters": 2, "stride": 3, "pad": 2}],
    "pool": [{"type": "conv", "sx": 1, "filters": 2}, {"type": "pool", "sx": 2, "stride": 2}],
    "pool-pad": [{"type": "conv", "sx": 1, "filters": 2}, {"type": "pool", "sx": 3, "stride": 2, "pad": 1}],
    "fc": [{"type": "fc", "num_neurons": 4}],
    "relu": [{"type": "fc", "num_neurons": 4, "activation": "relu"}],
    "sigmoid": [{"type": "fc", "num_neurons": 4, "activation": "sigmoid"}],
    "tanh": [{"type": "conv", "sx": 2, "filters": 2, "activation": "tanh"}],
    "maxout": [{"type": "conv", "sx": 2, "filters": 4, "activation": "maxout"}],
    "lrn": [
        {"type": "conv", "sx": 1, "filters": 5},
        {"type": "lrn", "k": 1.0, "n": 3, "alpha": 0.5, "beta": 0.75},
    ],
    "lrn-even-n": [
        {"type": "conv", "sx": 1, "filters": 4},
        {"type": "lrn", "k": 2.0, "n": 2, "alpha": 1e-1, "beta": 0.5},
    ],
    "dropout(test)": [{"type": "fc", "num_neurons": 4, "drop_prob": 0.25}],
}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("body", list(BODIES))
def test_gradient_matches_finite_differences(body, head, rng):
    defs = [INPUT, *BODIES[body], HEADS[head]]
    model, net = _net(defs, seed=5)
    x = rng.standard_normal((3, 4, 5, 3))
    y = rng.standard_normal((3, 2)) if head == "regression" else rng.integers(0, 3, 3)
    # train=False: dropout deterministic (its scaling is differentiable all the same)
    grad, count, loss = net.gradient(x, y, train=False)
    assert count == 3
    p0 = model.params.astype(np.float64)
    assert loss == pytest.approx(_loss64(net, p0, x, y))
    eps = 1e-6
    idx = rng.choice(p0.size, size=min(40, p0.size), replace=False)
    for i in idx:
        plus, minus = p0.copy(), p0.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric = (_loss64(net, plus, x, y) - _loss64(net, minus, x, y)) / (2 * eps)
        assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-6), f"param {i}"


def test_gradient_is_a_sum_over_examples(rng):
    _, net = _net([INPUT, {"type": "fc", "num_neurons": 3}, HEADS["softmax"]])
    x = rng.standard_normal((6, 4, 5, 3))
    y = rng.integers(0, 3, 6)
    g_all, n, l_all = net.gradient(x, y)
    parts = [net.gradient(x[i : i + 1], y[i : i + 1]) for i in range(6)]
    np.testing.assert_allclose(g_all, sum(p[0] for p in parts), rtol=1e-5, atol=1e-6)
    assert l_all == pytest.approx(sum(p[2] for p in parts))
    assert n == 6


def test_dropout_training_drops_without_rescaling_and_prediction_scales():
    defs = [
        {"type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 2000},
        {"type": "dropout", "drop_prob": 0.3},
        {"type": "regression", "num_neurons": 1},
    ]
    model = Model.from_spec(defs)
    net = model.executor()
    x = torch.ones(1, 2000, 1, 1)
    net.train(True)
    a = net.spec.layers[1]
    from mlitb.model.torch_executor import OPS

    out = OPS["dropout"](a, x, {}, net)
    kept = out.numpy().ravel()
    assert set(np.unique(kept)) <= {0.0, 1.0}  # no 1/(1-p) rescaling
    assert 0.63 < kept.mean() < 0.77
    net.train(False)
    assert np.allclose(OPS["dropout"](a, x, {}, net).numpy(), 0.3)  # ConvNetJS: x * drop_prob


def test_dropout_is_seeded():
    defs = [INPUT, {"type": "fc", "num_neurons": 8, "drop_prob": 0.5}, HEADS["softmax"]]
    model = Model.from_spec(defs, seed=1)
    x = np.ones((4, 4, 5, 3), np.float32)
    y = np.zeros(4, int)
    g1 = model.executor(seed=42).gradient(x, y)[0]
    g2 = model.executor(seed=42).gradient(x, y)[0]
    g3 = model.executor(seed=43).gradient(x, y)[0]
    assert np.array_equal(g1, g2)
    assert not np.array_equal(g1, g3)


def test_decay_is_added_once_per_call(rng):
    defs = [INPUT, {"type": "conv", "sx": 2, "filters": 2, "l1_decay_mul": 0.5}, HEADS["softmax"]]
    model = Model.from_spec(defs, seed=2)
    net = model.executor()
    x = rng.standard_normal((5, 4, 5, 3)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    plain = net.gradient(x, y)[0]
    decayed = net.gradient(x, y, l1_decay=0.01, l2_decay=0.1)[0]
    l1m, l2m = decay_multipliers(model.spec)
    np.testing.assert_allclose(decayed - plain, decay_gradient(model.params, 0.01, 0.1, l1m, l2m), atol=1e-6)


def test_large_batches_are_chunked_with_the_same_result(rng, monkeypatch):
    import mlitb.model.torch_executor as te

    model = Model.from_spec([INPUT, {"type": "fc", "num_neurons": 3}, HEADS["softmax"]], seed=3)
    x = rng.standard_normal((50, 4, 5, 3)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    whole = model.executor().gradient(x, y)
    monkeypatch.setattr(te, "CHUNK", 7)
    chunked = model.executor().gradient(x, y)
    # Chunks sum in float32 in another order: differences scale with the largest
    # entry (|g| ~ 10 here), not with each entry (CI saw 1.2e-6 on an entry of 8e-3).
    scale = float(np.abs(whole[0]).max())
    np.testing.assert_allclose(whole[0], chunked[0], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(model.predict(x), model.executor().predict(x), atol=1e-6)


def test_bad_inputs_raise_clear_errors(rng):
    model = Model.from_spec([INPUT, {"type": "fc", "num_neurons": 3}, HEADS["softmax"]])
    net = model.executor()
    with pytest.raises(ValueError, match=r"input must be \[N, 4, 5, 3\]"):
        net.gradient(np.zeros((2, 5, 4, 3), np.float32), np.zeros(2, int))
    with pytest.raises(ValueError, match="labels must be in"):
        net.gradient(np.zeros((2, 4, 5, 3), np.float32), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must be"):
        net.gradient(np.zeros((2, 4, 5, 3), np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="parameter vector has shape"):
        TorchNet(model.spec, np.zeros(5, np.float32))


def test_empty_batch_gives_zero_gradient():
    model = Model.from_spec([INPUT, {"type": "fc", "num_neurons": 3}, HEADS["softmax"]])
    g, n, loss = model.executor().gradient(np.zeros((0, 4, 5, 3), np.float32), np.zeros(0, int))
    assert n == 0 and loss == 0.0 and not g.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(rng):
    defs = [INPUT, *BODIES["conv"], {"type": "pool", "sx": 2}, *BODIES["relu"], HEADS["softmax"]]
    model = Model.from_spec(defs, seed=4)
    x = rng.standard_normal((16, 4, 5, 3)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    g_cpu, _, l_cpu = model.executor("cpu").gradient(x, y)
    g_gpu, _, l_gpu = model.executor("cuda").gradient(x, y)
    np.testing.assert_allclose(g_cpu, g_gpu, rtol=1e-3, atol=1e-5)
    assert l_cpu == pytest.approx(l_gpu, rel=1e-4)
    np.testing.assert_allclose(model.predict(x, "cpu"), model.predict(x, "cuda"), atol=1e-5)


def test_a_cuda_device_runs_in_full_float32():
    """cuDNN's default TF32 convolutions (about 1e-3 relative per op on Ampere and later)
    would move an honest GPU worker's rounds beyond the master's replay tolerance: a CUDA
    device turns TF32 off (a device object needs no GPU, so this runs anywhere)."""
    from mlitb.model.torch_executor import resolve_device

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:  # (monkeypatch cannot restore cuda.matmul's attributes: set and put back by hand)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert resolve_device("cpu").type == "cpu"
        assert torch.backends.cudnn.allow_tf32  # a CPU worker changes nothing
        assert resolve_device("cuda:0").type == "cuda"
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
