"""Near-tied max-pool windows (mlitb.master.trust.ties): the router is PyTorch's max-pool until
told otherwise, and verification passes a round whose executor routed a near-tied window
the other way (as a TF.js wasm tab did: one window with a gap of 8e-8 put a segment 4.7 %
off), while a lie still fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_verification import job_for

from mlitb.master.trust import replay, ties
from mlitb.master.trust.replay import replay_segment
from mlitb.master.trust.verification import ProofInvalid
from mlitb.model.model import Model
from mlitb.model.torch_executor import TorchNet
from mlitb.protocol import codecs

ADAM = {"optimizer": "adam", "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
        "l1_decay": 0.0, "l2_decay": 0.0, "batch_size": 1}  # fmt: skip


class Pool:  # what the router reads of a pool layer
    def __init__(self, k: int, stride: int) -> None:
        self.sx = self.sy = k
        self.stride = stride


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("k,stride", [(2, 2), (3, 3), (3, 2), (2, 1), (2, 3)])
def test_the_router_without_flips_is_pytorchs_max_pool(k, stride, quantized):
    """The same values and bit for bit the same gradients, with exact ties (quantized
    inputs) and with overlapping windows (stride < size: gradients add up in one place)."""
    rng = np.random.default_rng(k * 10 + stride)
    raw = rng.integers(-3, 4, (2, 3, 9, 9)) / 4 if quantized else rng.normal(size=(2, 3, 9, 9))
    x = torch.tensor(raw.astype(np.float32), requires_grad=True)
    dy = torch.tensor(rng.normal(size=F.max_pool2d(x, k, stride).shape).astype(np.float32))
    want = F.max_pool2d(x, k, stride)
    (gw,) = torch.autograd.grad(want, x, dy)
    router = ties.Router()
    got = router(0, Pool(k, stride), x)
    (gg,) = torch.autograd.grad(got, x, dy)
    assert torch.equal(got, want) and torch.equal(gg, gw)
    assert router.found == []  # exact ties are not near ties: identical inputs, identical gradients


def test_a_near_tied_window_is_found_and_can_be_rerouted():
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 1] = 1.0
    x[0, 0, 1, 0] = float(np.nextafter(np.float32(1.0), np.float32(0)))  # one unit in the last place below
    x.requires_grad_(True)
    router = ties.Router()
    router.step = 7
    (g,) = torch.autograd.grad(router(4, Pool(2, 2), x).sum(), x)
    assert [key for _, key in router.found] == [(7, 4, 0, 0)] and g[0, 0, 0, 1] == 1
    flipped = ties.Router(frozenset({(7, 4, 0, 0)}))
    flipped.step = 7
    (g,) = torch.autograd.grad(flipped(4, Pool(2, 2), x).sum(), x)
    assert g[0, 0, 1, 0] == 1 and g[0, 0, 0, 1] == 0


# A 1x1 convolution over two channels: two pixels whose channels differ but whose
# outputs nearly agree make a near tie whose two routings give very different gradients.
SPEC = [
    {"type": "input", "out_sx": 4, "out_sy": 4, "out_depth": 2},
    {"type": "conv", "sx": 1, "filters": 1, "stride": 1, "pad": 0, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "softmax", "num_classes": 3},
]
STEPS = 6


def _setup():
    model = Model.from_spec(SPEC, seed=5)
    net = TorchNet(model.spec, model.params.copy(), device="cpu")
    arrays = net._arrays(1)  # layer 1's arrays, by name
    w = arrays["filters"].detach().numpy().astype(np.float64)
    w = w.reshape(2)  # filters [1, 1, 1, 2]
    rng = np.random.default_rng(0)
    x = np.full((4, 4, 2), -5.0 * np.sign(w))  # every pixel's output negative: relu gives 0
    p = rng.normal(size=2)
    p = p * (2.0 / float(p @ w)) if abs(float(p @ w)) > 0.1 else w * (2.0 / float(w @ w))  # output 2 + b
    q = p + 3.0 * np.array([w[1], -w[0]]) / float(w @ w)  # same output, other pixel
    q = q - 2e-6 * w / float(w @ w)  # a little below p: a near tie
    x[0, 1], x[1, 0] = p, q
    items = {0: (x.astype(np.float32), 1)}
    keys = np.zeros(STEPS, np.int64)

    def fetch(ks):
        return np.stack([items[int(k)][0] for k in ks]), np.array([items[int(k)][1] for k in ks], np.int64)

    return model, net, keys, fetch


def _claim(model, net, keys, fetch, flips=frozenset()):
    """A round of STEPS Adam steps on the crafted item, as an executor routing `flips`
    the other way would record it: (job, batches, ckpts, values)."""
    n = model.spec.num_params
    start = np.stack([model.params, np.zeros(n, np.float32), np.zeros(n, np.float32)])
    batches = [1] * STEPS
    ckpts = [{"step": 0, "t": 0}, {"step": STEPS, "t": STEPS}]
    job = job_for("local", np.zeros(n), STEPS, model.params.copy(), inner=ADAM)
    job.dtype = codecs.FLOAT32
    values = np.stack([start, start])
    end = replay._run_segment(job, net, batches, keys, ckpts, values, 0, fetch, 1.0, 1.0,
                                    ties.Router(flips))  # fmt: skip
    values[1] = np.stack([end["p"], end["m"], end["v"]])
    return job, batches, ckpts, values


def test_a_round_that_routed_a_near_tie_the_other_way_passes_and_a_lie_does_not(monkeypatch):
    model, net, keys, fetch = _setup()
    probe = ties.Router()
    net.router = probe
    net.loss(*fetch(keys[:1]))
    net.router = None
    assert len(probe.found) == 1, probe.found  # the crafted window, at step 0
    key = probe.found[0][1]
    job, batches, ckpts, values = _claim(model, net, keys, fetch, frozenset({key}))

    def replay(values):
        return replay_segment(job, net, batches, keys, ckpts, values, 0, fetch, 1.0, 1.0, 0.01)

    with monkeypatch.context() as m:  # without the search: the honest other routing is far off
        m.setattr(ties, "MAX_FLIPS", 0)
        with pytest.raises(ProofInvalid, match="does not replay"):
            replay(values)
    assert replay(values) < 1e-5  # found and rerouted: the claim replays exactly
    lie = values.copy()
    lie[1, 0] += 0.05 * (values[1, 0] - values[0, 0])  # the end moved 5 % of the way further
    with pytest.raises(ProofInvalid, match="at best with near-tied"):
        replay(lie)


def _synthetic(effects: dict, base: float, near: int = 2, windows: int = 10_000):
    """A replay whose error is |base_vector - sum of the rerouted windows' effects|:
    `effects` maps a window's key to its effect (a vector), as if rerouting it undid it."""
    target = sum(effects.values())

    def replay(router: ties.Router) -> float:
        router.found = [(1e-7 * (i + 1), key) for i, key in enumerate(effects)]
        router.near, router.windows = near, windows
        undone = sum((effects[k] for k in router.flips), np.zeros_like(target))
        return float(np.linalg.norm(target - undone)) + base

    return replay


def test_two_honest_misroutings_in_one_segment_are_both_found():
    """Two windows routed the other way, orthogonal effects: finding one leaves 1/sqrt(2)
    of the error, which must not stop the search (a 30 % rule would)."""
    effects = {(1, 2, 0, 0): np.array([1.0, 0.0]), (5, 2, 3, 1): np.array([0.0, 1.0])}
    best, flips, why = ties.search(_synthetic(effects, 1e-6), allowed=1e-3)
    assert best < 1e-3 and flips == 2 and why == ""


def test_a_window_that_passes_the_segment_is_kept_whatever_its_cut():
    effects = {(0, 2, 0, 0): np.array([0.03])}
    best, flips, _ = ties.search(_synthetic(effects, 0.9e-2), allowed=1e-2)  # 3.9e-2 -> 0.9e-2
    assert flips == 1 and best <= 1e-2


def test_a_replay_full_of_near_ties_is_not_searched():
    """A forged checkpoint (weights near 0) can make most windows near-tied: the search
    would be slow and wide, so such a segment fails as it stands."""
    effects = {(0, 2, i, 0): np.array([1.0]) for i in range(5)}
    best, flips, why = ties.search(_synthetic(effects, 0.0, near=5_000, windows=10_000), allowed=1e-2)
    assert flips == 0 and best == 5.0 and "near-tied" in why and "not searched" in why


# A 1x1 convolution whose first filter is open at one pixel only, by a hair: its ReLU input
# there is ~1e-6 of the layer's largest. An executor whose rounding puts it on the other
# side of 0 gives that filter no gradient at all, and Adam's first step (lr x g / |g|)
# moves it by a full lr in one executor and not at all in the other (as a TF.js wasm tab
# on the residual net did: 2026-12-07, 7 of 100 first steps banned before the search).
RELU_SPEC = [
    {"type": "input", "out_sx": 2, "out_sy": 2, "out_depth": 2},
    {"type": "conv", "sx": 1, "filters": 3, "stride": 1, "pad": 0, "activation": "relu"},
    {"type": "softmax", "num_classes": 3},
]


def test_a_round_that_took_a_relu_input_near_0_the_other_way_passes_and_a_lie_does_not(monkeypatch):
    model = Model.from_spec(RELU_SPEC, seed=5)
    net = TorchNet(model.spec, model.params.copy(), device="cpu")
    a = net._arrays(1)
    w = a["filters"].detach().numpy().astype(np.float64).reshape(3, 2)
    b = a["biases"].detach().numpy().astype(np.float64)
    x = np.zeros((2, 2, 2))
    for i, (r, c) in enumerate([(0, 1), (1, 0), (1, 1)]):  # filter 0 shut here, the others open
        x[r, c] = -3.0 * w[0] / (w[0] @ w[0]) + 2.0 * w[1 + i % 2] / (w[1 + i % 2] @ w[1 + i % 2])
    x[0, 0] = w[0] * (1e-6 - b[0]) / (w[0] @ w[0])  # filter 0's input here: 1e-6
    keys = np.zeros(1, np.int64)
    items = {0: (x.astype(np.float32), 1)}

    def fetch(ks):
        return np.stack([items[int(k)][0] for k in ks]), np.array([items[int(k)][1] for k in ks], np.int64)

    probe = ties.Router()
    net.router = probe
    net.loss(*fetch(keys))
    net.router = None
    gates = [key for _, key in probe.found if key[3] == ties.GATE]
    assert len(gates) == 1 and gates[0][:2] == (0, 2), probe.found  # step 0, the ReLU layer (walk index 2)
    n = model.spec.num_params
    start = np.stack([model.params, np.zeros(n, np.float32), np.zeros(n, np.float32)])
    job = job_for("local", np.zeros(n), 1, model.params.copy(), inner=ADAM)
    job.dtype = codecs.FLOAT32
    batches, ckpts, values = [1], [{"step": 0, "t": 0}, {"step": 1, "t": 1}], np.stack([start, start])
    end = replay._run_segment(job, net, batches, keys, ckpts, values, 0, fetch, 1.0, 1.0,
                              ties.Router(frozenset(gates)))  # fmt: skip
    values[1] = np.stack([end["p"], end["m"], end["v"]])

    def check(values):
        return replay_segment(job, net, batches, keys, ckpts, values, 0, fetch, 1.0, 1.0, 0.01)

    with monkeypatch.context() as m:  # without the search: the other side of 0 is far off
        m.setattr(ties, "MAX_FLIPS", 0)
        with pytest.raises(ProofInvalid, match="does not replay"):
            check(values)
    assert check(values) < 1e-5  # found and flipped: the claim replays exactly
    lie = values.copy()
    lie[1, 0] += 0.05 * (values[1, 0] - values[0, 0])
    with pytest.raises(ProofInvalid, match="at best with near-tied"):
        check(lie)


def test_the_relu_without_flips_is_pytorchs_and_a_flip_moves_only_its_gradient():
    x = torch.tensor([[-2.0, -1e-9, 0.0, 1e-9, 3.0]], requires_grad=True)
    router = ties.Router()
    router.step = 4
    y = router.relu(7, x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, F.relu(x)) and g.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]
    assert sorted(key for _, key in router.found) == [(4, 7, 1, ties.GATE), (4, 7, 3, ties.GATE)]  # not the 0
    flipped = ties.Router(frozenset({(4, 7, 1, ties.GATE), (4, 7, 3, ties.GATE)}))
    flipped.step = 4
    y = flipped.relu(7, x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [[0.0, 1.0, 0.0, 0.0, 1.0]]
    assert float((y - F.relu(x)).detach().abs().max()) <= 1e-9  # the value moves by |x| at most
