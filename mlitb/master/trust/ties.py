"""Near ties: where executors that agree to a few units in the last place still compute
different gradients, and how verification allows for it (docs/security.md, "Replay
tolerance"). Two kinds, both places where a gradient jumps:

- a max-pool window whose two largest inputs nearly agree: the pool sends the window's
  whole gradient to its largest input, and which one wins depends on the order each
  executor summed the convolution in;
- a ReLU input within a few units in the last place of 0: its gradient passes or not.

Max-pools, measured on 2026-12-02 (MNIST convnet, a TF.js wasm tab, local SGD, every
result audited): every step has a window or so whose top two are within 1e-5 of each
other; in 1 of 346 segments (two runs of 7 and 9 minutes) the tab routed one the other
way (a gap of 8e-8), and that single window put a 16-step segment 4.7 % (p) off the
master's replay, while all other segments replayed within 1e-3.
ReLUs, measured on 2026-12-07 (the residual batch-norm net of tests/test_modern_models_e2e
at initialisation, one or two Adam steps on a TF.js wasm engine in node, 20 seeds): TF.js
wasm sums long reductions (batch norm's statistics, a conv's filter gradient over N x H x
W places) in float32 one after another, so its activations are about 1e-5 of their
largest off PyTorch's (TF.js cpu: 1e-7); a batch has one or two ReLU inputs that close
to 0 (an input at 4e-7 of the largest); in 2 of the 20 that gate went the other way, the
gradient of a few weights changed sign, and Adam's first step (lr x g / |g|) moved them
by 2 lr: the one-step segment replayed 1.5 % off. The float64 second opinion sees
neither: both of the master's replays route alike.

So when a segment still misses, it is replayed again with near ties taken the other way
(`search`): greedy, one at a time, kept when it lands the replay within the tolerance or
cuts its error by 10 % (two honest misroutings in one segment leave 1/sqrt(2) of the
error after the first is found), at most MAX_FLIPS of them. The captured max-pool
segment replays within 5.5e-6 after one window (0.8 s of CPU, 4 replays in all); a lie
costs the master 1 + (ties tried) more replays when no tie helps.

A lie does not shrink to the tolerance by flipping near ties (a replay of wrong labels or
forged checkpoints is off by far more than one window's or one gate's gradient): a
trainer gains at most the choice of MAX_FLIPS ties in a replayed segment. A claimed
checkpoint forged so that many places are near-tied (weights near 0) would make the
search slow and wide: a replay that meets more than MAX_DENSITY of its places near-tied
(an honest one: ~1 in 10,000) is not searched, and the segment fails.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GAP = 1e-5  # near-tied: a window's (top - runner-up) / |top|; a ReLU input's |x| / max |x| of its layer
MAX_CANDIDATES = 12  # near ties tried per round, smallest gaps first
MAX_FLIPS = 3  # ties taken the other way at most: the search costs <= 1 + 36 more replays of a segment
KEEP = 0.9  # a flipped tie that does not pass the segment must cut its error by 10 %
MAX_DENSITY = 1e-3  # near ties / places (+ MAX_CANDIDATES) above which a replay is not searched

# (step, layer index, a, b): a max-pool window is (row = item * channels + channel, window);
# a ReLU gate is (its input's flat NCHW index, GATE)
Key = tuple[int, int, int, int]
GATE = -1


class Router:
    """TorchNet's max-pools and ReLUs during a replay (its `router`): PyTorch's own (a
    window's first maximum in row-major order, as F.max_pool2d; a ReLU's gradient where
    x > 0) except the ties in `flips`: such a window takes its runner-up, such a gate
    the other side. Notes the MAX_CANDIDATES nearest ties of each call in `found` as
    (gap, key), and counts near ties and places (`near`, `windows`).

    Keys assume one forward per step (verification's replay): rows index the step's batch."""

    def __init__(self, flips: frozenset[Key] = frozenset()) -> None:
        self.flips = flips
        windows: dict[tuple[int, int], list[tuple[int, int]]] = {}
        gates: dict[tuple[int, int], list[int]] = {}
        for step, index, a, b in flips:
            if b == GATE:
                gates.setdefault((step, index), []).append(a)
            else:
                windows.setdefault((step, index), []).append((a, b))
        self._flips = {k: torch.tensor(v, dtype=torch.long) for k, v in windows.items()}
        self._gates = {k: torch.tensor(v, dtype=torch.long) for k, v in gates.items()}
        self.step = 0  # set by the replay before each step
        self.found: list[tuple[float, Key]] = []
        self.near = 0
        self.windows = 0

    def _note(self, index: int, gaps: torch.Tensor, places: int, where) -> None:
        """Near ties among `gaps` (one per place): counted, the nearest noted as keys."""
        near = torch.isfinite(gaps) & (gaps > 0) & (gaps < GAP)
        self.windows += places
        at = near.nonzero()
        self.near += len(at)
        close = gaps[near]
        for i in torch.topk(close, min(MAX_CANDIDATES, len(close)), largest=False).indices.tolist():
            self.found.append((float(close[i]), (self.step, index, *where(at[i].tolist()))))

    def relu(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """F.relu, except flipped gates: there x passes if x <= 0 and is cut if x > 0 (the
        value moves by |x|, a few ulps of the layer's largest; the gradient is the point)."""
        with torch.no_grad():
            flat = x.detach().reshape(-1)
            scale = flat.abs().max().clamp_min(1e-30)
            self._note(index, flat.abs() / scale, flat.numel(), lambda at: (at[0], GATE))
            flip = self._gates.get((self.step, index))
            if flip is not None:
                gate = flat > 0
                gate[flip] = ~gate[flip]
        return F.relu(x) if flip is None else x * gate.reshape(x.shape).to(x.dtype)

    def __call__(self, index: int, layer, x: torch.Tensor) -> torch.Tensor:
        """The max-pool `layer` (spec.walk[index]) of x (NCHW, already padded)."""
        n, c, h, w = x.shape
        ky, kx, s = layer.sy, layer.sx, layer.stride
        oh, ow = (h - ky) // s + 1, (w - kx) // s + 1
        plane = x.reshape(n * c, h * w)
        with torch.no_grad():
            u = F.unfold(x.reshape(n * c, 1, h, w), (ky, kx), stride=s)  # [n*c, ky*kx, oh*ow]
            choice = u.argmax(dim=1)  # [n*c, oh*ow]: the first maximum
            if ky * kx == 1:
                self.windows += choice.numel()
            else:
                top = torch.topk(u, 2, dim=1)
                gap = (top.values[:, 0] - top.values[:, 1]) / top.values[:, 0].abs().clamp_min(1e-30)
                self._note(index, gap, choice.numel(), lambda at: (at[0], at[1]))  # at: (row, window)
                flip = self._flips.get((self.step, index))
                if flip is not None:
                    rows, wins = flip[:, 0], flip[:, 1]
                    choice[rows, wins] = top.indices[rows, 1, wins]
            # the chosen element's place in its plane: the gradient lands where max_pool2d's does
            wy, wx = torch.div(choice, kx, rounding_mode="floor"), choice % kx
            at_ = torch.arange(oh * ow)
            pos = (at_ // ow * s + wy) * w + (at_ % ow * s + wx)
        return plane.gather(1, pos).reshape(n, c, oh, ow)


def search(replay: Callable[[Router], float], allowed: float) -> tuple[float, int, str]:
    """The smallest error `replay(router)` reaches by taking near ties the other way, how
    many it took, and why it stopped short ("" if it did not); stops as soon as the error
    is within `allowed`."""
    router = Router()
    best = replay(router)
    flips: frozenset[Key] = frozenset()
    for _ in range(MAX_FLIPS):
        if best <= allowed:
            break
        if router.near > MAX_DENSITY * router.windows + MAX_CANDIDATES:
            return best, len(flips), (f"{router.near} of {router.windows} max-pool windows and ReLU "
                                      f"inputs near-tied (honest: ~1 in 10,000): not searched")  # fmt: skip
        tried = sorted(set(router.found))
        candidates = [key for _, key in tried if key not in flips][:MAX_CANDIDATES]
        winner = None
        for key in candidates:
            trial = Router(flips | {key})
            err = replay(trial)
            if (err <= allowed or err < KEEP * best) and (winner is None or err < winner[0]):
                winner = (err, trial)
                if err <= allowed:
                    break
        if winner is None:
            break
        best, router = winner
        flips = router.flips
    return best, len(flips), ""
