"""The native worker's inner optimizer (local_sgd) against mlitb.optim's NumPy rules,
and a whole local round (`local_for`) against the same steps taken by hand.

The browser's inner.js is checked against the same NumPy rules in
tests/test_inner_golden.py, so the two executors take the same inner steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlitb.model.decay import mean_gradient
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers
from mlitb.model.model import Model
from mlitb.model.torch_executor import TorchNet
from mlitb.optim import make_optimizer
from mlitb.optim.schedule import LRSchedule
from mlitb.worker.cache import ItemCache
from mlitb.worker.compute import Sampler, local_for, train_for

SPEC = [
    {"type": "input", "out_sx": 6, "out_sy": 6, "out_depth": 1},
    {"type": "conv", "sx": 3, "filters": 2, "stride": 1, "pad": 1, "activation": "relu", "l2_decay_mul": 2.0},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "softmax", "num_classes": 3},
]
MODEL = Model.from_spec(SPEC, seed=1)
N = MODEL.spec.num_params

CASES = {
    "adam": ({"optimizer": "adam", "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, "adam"),
    "adam-custom": (
        {"optimizer": "adam", "learning_rate": 0.003, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
        "adam",
    ),
    "sgd-momentum": ({"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9}, "sgd"),
    "sgd-plain": ({"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.0}, "sgd"),
}


@pytest.mark.parametrize("decay", [(0.0, 0.0), (1e-3, 1e-2)], ids=["no-decay", "l1-l2"])
@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_inner_steps_match_the_numpy_optimizers(case, decay):
    cfg, name = CASES[case]
    l1, l2 = decay
    cfg = {**cfg, "l1_decay": l1, "l2_decay": l2, "batch_size": 8}
    l1_mul, l2_mul = decay_multipliers(MODEL.spec)
    opt = InnerOptimizer(cfg, N, l1_mul, l2_mul, torch.device("cpu"))
    hyper = {k: cfg[k] for k in ("beta1", "beta2", "eps", "momentum") if k in cfg}
    ref = make_optimizer(name, N, LRSchedule(cfg["learning_rate"]), **hyper)
    rng = np.random.default_rng(0)
    p_np = MODEL.params.copy()
    p_t = torch.tensor(p_np)
    for _ in range(6):
        summed = rng.standard_normal(N).astype(np.float32)
        n = int(rng.integers(1, 40))
        ref.step(p_np, mean_gradient(summed, n, p_np, l1, l2, l1_mul, l2_mul))
        opt.step(p_t, torch.tensor(summed), n)
        # float32 both ways; torch and NumPy may fuse or order a product differently
        np.testing.assert_allclose(p_t.numpy(), p_np, rtol=2e-6, atol=1e-7)
    assert opt.t == 6 and opt.same(cfg) and not opt.same({**cfg, "learning_rate": 1.0})


def test_an_unknown_inner_optimizer_is_refused():
    with pytest.raises(ValueError, match="expected 'adam' or 'sgd'"):
        InnerOptimizer({"optimizer": "lbfgs", "learning_rate": 0.1}, N, *decay_multipliers(MODEL.spec), "cpu")


def _cache(n: int = 40) -> ItemCache:
    rng = np.random.default_rng(3)
    cache = ItemCache((6, 6, 1))
    cache.add(
        np.arange(n, dtype=np.int64),
        rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8),
        rng.integers(0, 3, n),
    )
    return cache


def test_a_local_round_is_its_inner_steps_and_returns_start_minus_end():
    cfg = {
        "optimizer": "adam",
        "learning_rate": 0.01,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "batch_size": 8,
    }
    l1_mul, l2_mul = decay_multipliers(MODEL.spec)
    cache = _cache()
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    opt = InnerOptimizer(cfg, N, l1_mul, l2_mul, net.device_)
    result = local_for(net, cache, Sampler(5), 60_000, 8, opt, max_vectors=36)  # fixed work
    assert result.vectors == 36  # 4 batches of 8 and one trimmed to 4
    # the same by hand: same sampler seed, same batches
    ref_net = TorchNet(MODEL.spec, MODEL.params.copy())
    ref = make_optimizer("adam", N, LRSchedule(0.01))
    p = MODEL.params.copy()
    sampler = Sampler(5)
    done = 0
    for _ in range(5):
        rows = sampler.next(len(cache), 8)[: 36 - done]
        x, y = cache.batch(rows)
        ref_net.set_params(p)
        g, n, _ = ref_net.gradient(x, y)
        ref.step(p, mean_gradient(g, n, p))
        done += n
    np.testing.assert_allclose(result.grad, MODEL.params - p, rtol=1e-4, atol=1e-6)
    assert np.abs(result.grad).max() > 0
    np.testing.assert_allclose(net.get_params(), p, rtol=1e-4, atol=1e-6)  # the net holds the end


def test_fixed_work_gradient_sums_exactly_max_vectors():
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    result = train_for(net, _cache(), Sampler(1), 60_000, 16, max_vectors=20)
    assert result.vectors == 20
