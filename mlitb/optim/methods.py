"""The update rules, ConvNetJS's formulas on flat float32 vectors.

g is the mean gradient of the reduce (decay included, see mlitb.model.decay);
every rule changes p in place. Formulas follow ConvNetJS's Trainer, except Adam,
whose bias correction ConvNetJS gets wrong (it multiplies the moments by
(1 - beta^t) instead of dividing); ours is Kingma & Ba's.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Optimizer

f32 = np.float32


class AdaGrad(Optimizer):
    """gsum += g^2; p -= lr / sqrt(gsum + eps) * g.  MLitB's default optimizer."""

    name = "adagrad"
    defaults: ClassVar[dict[str, float]] = {"eps": 1e-6}
    arrays = ("gsum",)

    def _update(self, p, g, lr):
        gsum = self.state["gsum"]
        gsum += g * g
        p -= lr / np.sqrt(gsum + f32(self.hyper["eps"])) * g


class SGD(Optimizer):
    """dx = momentum * v - lr * g; v = dx; p += dx (plain SGD when momentum is 0)."""

    name = "sgd"
    defaults: ClassVar[dict[str, float]] = {"momentum": 0.9}
    arrays = ("v",)

    def _update(self, p, g, lr):
        m = f32(self.hyper["momentum"])
        if m == 0:
            p -= lr * g
            return
        v = self.state["v"]
        v *= m
        v -= lr * g
        p += v


class Nesterov(Optimizer):
    """ConvNetJS's Nesterov form: v' = m*v + lr*g; p += m*v - (1 + m)*v'."""

    name = "nesterov"
    defaults: ClassVar[dict[str, float]] = {"momentum": 0.9}
    arrays = ("v",)

    def _update(self, p, g, lr):
        m = f32(self.hyper["momentum"])
        v = self.state["v"]
        prev = v.copy()
        v *= m
        v += lr * g
        p += m * prev - (f32(1) + m) * v


class WindowGrad(Optimizer):
    """AdaGrad over a moving window: gsum = ro*gsum + (1-ro)*g^2; p -= lr/sqrt(gsum+eps)*g."""

    name = "windowgrad"
    defaults: ClassVar[dict[str, float]] = {"ro": 0.95, "eps": 1e-6}
    arrays = ("gsum",)

    def _update(self, p, g, lr):
        ro = f32(self.hyper["ro"])
        gsum = self.state["gsum"]
        gsum *= ro
        gsum += (f32(1) - ro) * g * g
        p -= lr / np.sqrt(gsum + f32(self.hyper["eps"])) * g


class AdaDelta(Optimizer):
    """Zeiler's AdaDelta (no learning rate): dx = -sqrt((xsum+eps)/(gsum+eps)) * g."""

    name = "adadelta"
    defaults: ClassVar[dict[str, float]] = {"ro": 0.95, "eps": 1e-6}
    arrays = ("gsum", "xsum")

    def _update(self, p, g, lr):
        ro, eps = f32(self.hyper["ro"]), f32(self.hyper["eps"])
        gsum, xsum = self.state["gsum"], self.state["xsum"]
        gsum *= ro
        gsum += (f32(1) - ro) * g * g
        dx = -np.sqrt((xsum + eps) / (gsum + eps)) * g
        xsum *= ro
        xsum += (f32(1) - ro) * dx * dx
        p += dx


class Adam(Optimizer):
    """m, v moments with correct bias correction: p -= lr * m_hat / (sqrt(v_hat) + eps)."""

    name = "adam"
    defaults: ClassVar[dict[str, float]] = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    arrays = ("m", "v")

    def _update(self, p, g, lr):
        b1, b2 = f32(self.hyper["beta1"]), f32(self.hyper["beta2"])
        m, v = self.state["m"], self.state["v"]
        m *= b1
        m += (f32(1) - b1) * g
        v *= b2
        v += (f32(1) - b2) * g * g
        t = self.t + 1
        m_hat = m / f32(1 - float(b1) ** t)
        v_hat = v / f32(1 - float(b2) ** t)
        p -= lr * m_hat / (np.sqrt(v_hat) + f32(self.hyper["eps"]))
