"""Near-tied max-pool windows: where executors that agree to the last bit still compute
different gradients, and how verification allows for it (docs/security.md, "Replay
tolerance").

A max-pool sends a window's whole gradient to its largest input. When the two largest
differ by about one unit in the last place, which one wins depends on the order each
executor summed the convolution in: XNNPACK (TF.js wasm) and PyTorch disagree there now
and then. Measured on 2026-12-02 (MNIST convnet, a TF.js wasm tab, local SGD, every
result audited): every step has a window or so whose top two are within 1e-5 of each
other; in 1 of 346 segments (two runs of 7 and 9 minutes) the tab routed one the other
way (a gap of 8e-8), and that single window put a 16-step segment 4.7 % (p) off the
master's replay, while all other segments replayed within 1e-3. The float64 second
opinion cannot see this: both of the master's replays route the window alike.

So when a segment still misses, it is replayed again with near-tied windows routed to
their runner-up (`search`): greedy, one window at a time, kept when it lands the replay
within the tolerance or cuts its error by 10 % (two honest misroutings in one segment
leave 1/sqrt(2) of the error after the first is found), at most MAX_FLIPS of them. The
captured segment replays within 5.5e-6 after one window (0.8 s of CPU, 4 replays in
all); a lie costs the master 1 + (windows tried) more replays when no window helps.

A lie does not shrink to the tolerance by rerouting windows whose top two differ by
less than GAP (a replay of wrong labels or forged checkpoints is off by far more than a
window's gradient): a trainer gains at most the choice of MAX_FLIPS windows' routing in
a replayed segment. A claimed checkpoint forged so that many windows are near-tied
(weights near 0) would make the search slow and wide: a replay that meets more than
MAX_DENSITY of its windows near-tied (an honest one: ~1 in 30,000) is not searched, and
the segment fails.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GAP = 1e-5  # (top - runner-up) / |top| under which a window counts as near-tied
MAX_CANDIDATES = 12  # near-tied windows tried per round, smallest gaps first
MAX_FLIPS = 3  # windows rerouted at most: the search costs <= 1 + 36 more replays of a segment
KEEP = 0.9  # a rerouted window that does not pass the segment must cut its error by 10 %
MAX_DENSITY = 1e-3  # near-tied windows / windows (+ MAX_CANDIDATES) above which a replay is not searched

Key = tuple[int, int, int, int]  # (step, layer index, row = item * channels + channel, window)


class PoolRouter:
    """A max-pool for TorchNet (its `pool_router`): PyTorch's routing (the first maximum
    of each window in row-major order, as F.max_pool2d) except windows in `flips`, which
    take their runner-up. Notes the MAX_CANDIDATES nearest ties of each call in `found`
    as (gap, key), and counts near ties and windows (`near`, `windows`).

    Keys assume one forward per step (verification's replay): rows index the step's batch."""

    def __init__(self, flips: frozenset[Key] = frozenset()) -> None:
        self.flips = flips
        by_call: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for step, index, row, win in flips:
            by_call.setdefault((step, index), []).append((row, win))
        self._flips = {k: torch.tensor(v, dtype=torch.long) for k, v in by_call.items()}
        self.step = 0  # set by the replay before each step
        self.found: list[tuple[float, Key]] = []
        self.near = 0
        self.windows = 0

    def __call__(self, index: int, layer, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ky, kx, s = layer.sy, layer.sx, layer.stride
        oh, ow = (h - ky) // s + 1, (w - kx) // s + 1
        plane = x.reshape(n * c, h * w)
        with torch.no_grad():
            u = F.unfold(x.reshape(n * c, 1, h, w), (ky, kx), stride=s)  # [n*c, ky*kx, oh*ow]
            choice = u.argmax(dim=1)  # [n*c, oh*ow]: the first maximum
            self.windows += choice.numel()
            if ky * kx > 1:
                top = torch.topk(u, 2, dim=1)
                gap = (top.values[:, 0] - top.values[:, 1]) / top.values[:, 0].abs().clamp_min(1e-30)
                near = torch.isfinite(gap) & (gap > 0) & (gap < GAP)
                at = near.nonzero()  # [k, 2]: (row, window)
                self.near += len(at)
                gaps = gap[near]
                nearest = torch.topk(gaps, min(MAX_CANDIDATES, len(gaps)), largest=False).indices
                for i in nearest.tolist():
                    row, win = at[i].tolist()
                    self.found.append((float(gaps[i]), (self.step, index, row, win)))
                flip = self._flips.get((self.step, index))
                if flip is not None:
                    rows, wins = flip[:, 0], flip[:, 1]
                    choice[rows, wins] = top.indices[rows, 1, wins]
            # the chosen element's place in its plane: the gradient lands where max_pool2d's does
            wy, wx = torch.div(choice, kx, rounding_mode="floor"), choice % kx
            at_ = torch.arange(oh * ow)
            pos = (at_ // ow * s + wy) * w + (at_ % ow * s + wx)
        return plane.gather(1, pos).reshape(n, c, oh, ow)


def search(replay: Callable[[PoolRouter], float], allowed: float) -> tuple[float, int, str]:
    """The smallest error `replay(router)` reaches by rerouting near-tied windows, how
    many it rerouted, and why it stopped short ("" if it did not); stops as soon as the
    error is within `allowed`."""
    router = PoolRouter()
    best = replay(router)
    flips: frozenset[Key] = frozenset()
    for _ in range(MAX_FLIPS):
        if best <= allowed:
            break
        if router.near > MAX_DENSITY * router.windows + MAX_CANDIDATES:
            return best, len(flips), (f"{router.near} of {router.windows} max-pool windows near-tied "
                                      f"(an honest replay: ~1 in 30,000): not searched")  # fmt: skip
        tried = sorted(set(router.found))
        candidates = [key for _, key in tried if key not in flips][:MAX_CANDIDATES]
        winner = None
        for key in candidates:
            trial = PoolRouter(flips | {key})
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
