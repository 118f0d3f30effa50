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
master's replay, while all other segments replayed within 1e-3. The float64 second opinion cannot see this: both of the
master's replays route the window alike.

So when a segment still misses, it is replayed again with near-tied windows routed to
their runner-up (`search`): greedy, one window at a time, kept only when it brings the
end state much closer to the claim (by KEEP), at most MAX_FLIPS of them. The captured
segment replays within 5.5e-6 after one window (0.8 s of CPU, 4 replays in all); a lie
costs the master at most 1 + MAX_CANDIDATES more replays when no window helps (2 s for
that segment made 20 % longer). Rerouting a window whose top
two differ by less than GAP changes nothing a trainer could exploit, and a lie does not
shrink to the tolerance by it (a replay of wrong labels or forged checkpoints is off by
far more than a window's gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GAP = 1e-5  # (top - runner-up) / |top| under which a window counts as near-tied
MAX_CANDIDATES = 12  # near-tied windows tried per round, smallest gaps first
MAX_FLIPS = 3  # windows rerouted at most: the search costs <= 36 more replays of a segment
KEEP = 0.7  # a rerouted window is kept only if it cuts the error by 30 % (an honest one: 1e4x)

Key = tuple[int, int, int, int]  # (step, layer index, row = item * channels + channel, window)


class PoolRouter:
    """A max-pool for TorchNet (its `pool_router`): PyTorch's routing (the first maximum
    of each window, as F.max_pool2d) except windows in `flips`, which take their
    runner-up; notes the near-tied windows it meets in `found` as (gap, key)."""

    def __init__(self, flips: frozenset[Key] = frozenset()) -> None:
        self.flips = flips
        self.step = 0  # set by the replay before each step
        self.found: list[tuple[float, Key]] = []

    def __call__(self, index: int, layer, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ky, kx, s = layer.sy, layer.sx, layer.stride
        oh, ow = (h - ky) // s + 1, (w - kx) // s + 1
        u = F.unfold(x.reshape(n * c, 1, h, w), (ky, kx), stride=s)  # [n*c, ky*kx, oh*ow]
        with torch.no_grad():
            choice = u.argmax(dim=1)  # [n*c, oh*ow]: the first maximum
            if ky * kx > 1:
                top = torch.topk(u, 2, dim=1)
                gap = (top.values[:, 0] - top.values[:, 1]) / top.values[:, 0].abs().clamp_min(1e-30)
                near = torch.isfinite(gap) & (gap > 0) & (gap < GAP)
                for row, win in near.nonzero().tolist():
                    key = (self.step, index, row, win)
                    self.found.append((float(gap[row, win]), key))
                    if key in self.flips:
                        choice[row, win] = top.indices[row, 1, win]
        return u.gather(1, choice[:, None, :]).reshape(n, c, oh, ow)


def search(replay: Callable[[PoolRouter], float], allowed: float) -> tuple[float, int]:
    """The smallest error `replay(router)` reaches by rerouting near-tied windows, and how
    many it rerouted; stops as soon as the error is within `allowed`."""
    router = PoolRouter()
    best = replay(router)
    flips: frozenset[Key] = frozenset()
    for _ in range(MAX_FLIPS):
        if best <= allowed:
            break
        tried = sorted(set(router.found))
        candidates = [key for _, key in tried if key not in flips][:MAX_CANDIDATES]
        winner = None
        for key in candidates:
            trial = PoolRouter(flips | {key})
            err = replay(trial)
            if err < KEEP * best and (winner is None or err < winner[0]):
                winner = (err, trial)
                if err <= allowed:
                    break
        if winner is None:
            break
        best, router = winner
        flips = router.flips
    return best, len(flips)
