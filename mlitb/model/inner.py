"""The inner optimizer of `local_sgd`: steps a worker takes on its own share between two
rounds with the master, in PyTorch on the worker's device (and the master's, when it
replays a round to verify it: mlitb.master.trust.verification).

The formulas are mlitb.optim's (SGD in ConvNetJS's momentum form, Adam with Kingma &
Ba's bias correction) on the flat float32 vector, and the gradient of a step is
ConvNetJS's per-batch mean with decay, as mlitb.model.decay.mean_gradient:

    g = (summed data gradient + l2 * l2_mul * p + l1 * l1_mul * sign(p)) / n

The browser's engine/inner.js implements the same; tests compare both with the NumPy
optimizers. The state (step count, moments) stays on the worker across rounds, as in
DiLoCo, and starts over when the work order's inner settings change or the model does.
"""

from __future__ import annotations

import numpy as np
import torch

INNER_KEYS = ("optimizer", "learning_rate", "momentum", "beta1", "beta2", "eps", "l1_decay", "l2_decay")


class InnerOptimizer:
    def __init__(
        self,
        cfg: dict,
        num_params: int,
        l1_mul: np.ndarray,
        l2_mul: np.ndarray,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        state_rate: np.ndarray | None = None,
    ) -> None:
        """`dtype` float64 only for the master's second opinion on a replay (the same
        float32 constants, the arithmetic in double: mlitb.master.trust.verification).
        `state_rate` (mlitb.model.layout.state_rates): elements that are state, not trained,
        move by rate x their mean gradient (an exponential moving average), not by Adam."""
        self.cfg = {k: cfg.get(k) for k in INNER_KEYS}
        self.kind = cfg.get("optimizer", "adam")
        if self.kind not in ("adam", "sgd"):
            raise ValueError(f"inner optimizer {self.kind!r}: expected 'adam' or 'sgd'")
        self.lr = float(cfg["learning_rate"])
        self.momentum = float(cfg.get("momentum") or 0.0)
        self.beta1 = float(cfg.get("beta1", 0.9))
        self.beta2 = float(cfg.get("beta2", 0.999))
        self.eps = float(cfg.get("eps", 1e-8))
        self.l1 = float(cfg.get("l1_decay") or 0.0)
        self.l2 = float(cfg.get("l2_decay") or 0.0)
        self.l1_mul = torch.as_tensor(l1_mul, dtype=dtype, device=device)
        self.l2_mul = torch.as_tensor(l2_mul, dtype=dtype, device=device)
        self.state = None  # (indices, rates) of the state elements
        if state_rate is not None:
            idx = torch.as_tensor(np.flatnonzero(state_rate), device=device)
            self.state = (idx, torch.as_tensor(state_rate, dtype=dtype, device=device)[idx])
        self.t = 0  # steps taken
        zeros = lambda: torch.zeros(num_params, dtype=dtype, device=device)  # noqa: E731
        self.m = zeros() if self.kind == "adam" else None
        self.v = zeros() if self.kind == "adam" or self.momentum else None

    def same(self, cfg: dict) -> bool:
        return self.cfg == {k: cfg.get(k) for k in INNER_KEYS}

    @torch.no_grad()
    def step(self, p: torch.Tensor, summed_grad: torch.Tensor, n: int) -> None:
        """p (flat float32, in place) takes one step on a batch of n vectors. A NaN/Inf
        gradient is refused (ValueError) before it touches p or the state."""
        if not torch.isfinite(summed_grad).all():
            raise ValueError("inner step refused: the batch gradient has NaN or Inf values")
        kept = None if self.state is None else p[self.state[0]].clone()
        g = summed_grad.clone()
        if self.l1 or self.l2:  # the decay term first, then added: mean_gradient's rounding
            decay = torch.zeros_like(p)
            if self.l2:
                decay += self._f(self.l2) * self.l2_mul * p
            if self.l1:
                decay += self._f(self.l1) * self.l1_mul * torch.where(p > 0, 1.0, -1.0).to(p.dtype)
            g += decay
        g /= self._f(n)
        lr = self._f(self.lr)
        if self.kind == "sgd":
            if self.momentum == 0:
                p -= lr * g
            else:  # v = m*v - lr*g; p += v
                self.v *= self._f(self.momentum)
                self.v -= lr * g
                p += self.v
        else:
            b1, b2 = self._f(self.beta1), self._f(self.beta2)
            self.m *= b1
            self.m += (1 - b1) * g
            self.v *= b2
            self.v += (1 - b2) * g * g
            t = self.t + 1
            # as mlitb.optim.Adam: (1 - float(float32(beta))**t) in double, then float32
            m_hat = self.m / self._f(1 - float(np.float32(self.beta1)) ** t)
            v_hat = self.v / self._f(1 - float(np.float32(self.beta2)) ** t)
            p -= lr * m_hat / (torch.sqrt(v_hat) + self._f(self.eps))
        if kept is not None:  # state: before - rate x (state - the batch's statistic)
            idx, rate = self.state
            p[idx] = kept - rate * g[idx]
        self.t += 1

    @staticmethod
    def _f(x: float) -> torch.Tensor:
        """A float32 scalar, so that every product rounds as NumPy's float32 does."""
        return torch.tensor(x, dtype=torch.float32)
