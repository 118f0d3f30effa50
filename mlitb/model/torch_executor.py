"""The PyTorch executor: runs a `Spec` from its flat parameter vector.

The whole parameter vector is one `torch.nn.Parameter`; every layer reads its
weights as views of it (through `layout.segments`, never a copy of the layout
rules), so a backward pass leaves the gradient already in the canonical flat
layout. Activations are NCHW inside; inputs arrive NHWC (as data and ConvNetJS
Vols are stored) and fc/loss layers flatten in HWC order, like ConvNetJS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import dropout as masks
from .decay import decay_gradient
from .layers import Layer
from .layout import Segment, decay_multipliers, segments
from .spec import Spec

CHUNK = 1024  # examples per forward pass; bounds activation memory


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on ("auto": CUDA when there is one). On CUDA, TF32 is turned off
    for this process: PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) on
    Ampere and later GPUs by default, about 1e-3 relative error per op, which moves a
    round far beyond what the master's float32 replay accepts (docs/security.md), and
    off the golden vectors. Full float32 costs some GPU speed; honest results must replay."""
    dev = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device in (None, "auto")
        else torch.device(device)
    )
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return dev


def _flatten_hwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def _conv(layer, x, w, b, net):
    weight = w.permute(0, 3, 1, 2)  # [out, in, sy, sx]
    return F.conv2d(x, weight, b, stride=layer.stride, padding=layer.pad)


def _fc(layer, x, w, b, net):
    y = F.linear(_flatten_hwc(x), w, b)
    return y.view(y.shape[0], -1, 1, 1)


def _pool(layer, x, w, b, net):
    if layer.pad:  # padded positions never win the max, as in ConvNetJS
        p = layer.pad
        x = F.pad(x, (p, p, p, p), value=float("-inf"))
    if net.pool_router is not None:  # verification's rerouting of near-tied windows (master/ties.py)
        return net.pool_router(next(i for i, lay in enumerate(net.spec.layers) if lay is layer), layer, x)
    return F.max_pool2d(x, (layer.sy, layer.sx), layer.stride)


def _maxout(layer, x, w, b, net):
    n, c, h, wd = x.shape
    g = layer.group_size
    groups = c // g
    return x[:, : groups * g].reshape(n, groups, g, h, wd).max(dim=2).values


def _dropout(layer, x, w, b, net):
    if net.training:  # drop with probability p, no rescaling (ConvNetJS)
        return x * net.dropout_keep(layer, x).to(x.dtype)
    return x * layer.drop_prob  # ConvNetJS's test-time scaling


def _lrn(layer, x, w, b, net):
    n2 = layer.n // 2
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, n2, n2))  # zero-pad the channel axis
    window = F.avg_pool3d(sq, (2 * n2 + 1, 1, 1), stride=1).squeeze(1) * (2 * n2 + 1)
    return x / (layer.k + layer.alpha / layer.n * window).pow(layer.beta)


def _identity(layer, x, w, b, net):
    return x


OPS: dict[str, Callable] = {
    "input": _identity,
    "conv": _conv,
    "fc": _fc,
    "pool": _pool,
    "relu": lambda layer, x, w, b, net: F.relu(x),
    "sigmoid": lambda layer, x, w, b, net: torch.sigmoid(x),
    "tanh": lambda layer, x, w, b, net: torch.tanh(x),
    "maxout": _maxout,
    "dropout": _dropout,
    "lrn": _lrn,
    "softmax": _identity,
    "svm": _identity,
    "regression": _identity,
}


class TorchNet(torch.nn.Module):
    """A spec plus one flat parameter vector, on one device, in one dtype."""

    def __init__(
        self,
        spec: Spec,
        params: np.ndarray,
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if params.shape != (spec.num_params,):
            raise ValueError(
                f"parameter vector has shape {params.shape}, the spec needs ({spec.num_params},)"
            )
        self.spec = spec
        self.device_ = resolve_device(device)
        self.dtype_ = dtype
        self.flat = torch.nn.Parameter(torch.as_tensor(params, dtype=dtype, device=self.device_))
        # dropout masks (mlitb.model.dropout): a function of (seed, step, layer, element); every
        # training forward uses dropout_step, then it advances by one (dropout_at sets both)
        self.dropout_seed = int(seed) & masks.M32
        self.dropout_step = 0
        self.has_dropout = any(layer.type == "dropout" for layer in spec.layers)
        self._index = {id(layer): i for i, layer in enumerate(spec.layers)}
        self._row0 = 0  # the first example of the chunk forwarded (gradient's chunks)
        self._hashed: dict = {}  # (layer, shape, row0, device) -> lowbias32 of the canonical indices
        by_layer: dict[int, dict[str, Segment]] = {}
        for seg in segments(spec):
            by_layer.setdefault(seg.layer, {})[seg.name] = seg
        self._segs = by_layer
        self._l1_mul, self._l2_mul = decay_multipliers(spec)
        self.pool_router = None  # callable(layer index, layer, x) -> pooled x, else F.max_pool2d

    # -- dropout ------------------------------------------------------------------
    def dropout_at(self, seed: int, step: int) -> None:
        """The masks of the next training forward: those of (seed, step)."""
        self.dropout_seed, self.dropout_step = int(seed) & masks.M32, int(step) & masks.M32

    def dropout_keep(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        """The keep mask (bool, x's NCHW shape) of `layer` for this forward."""
        i = self._index[id(layer)]
        n, c, h, w = x.shape
        cache = (i, (n, c, h, w), self._row0, x.device)
        hashed = self._hashed.get(cache)
        if hashed is None:  # lowbias32 of the canonical NHWC index, as an NCHW tensor
            e = torch.arange(n * h * w * c, dtype=torch.int64, device=x.device) + self._row0 * h * w * c
            hashed = masks.lowbias32(e & masks.M32).view(n, h, w, c).permute(0, 3, 1, 2)
            if len(self._hashed) > 64:
                self._hashed.clear()
            self._hashed[cache] = hashed
        k = masks.key(self.dropout_seed, self.dropout_step, i)
        return masks.lowbias32(hashed ^ k) >= masks.threshold(layer.drop_prob)

    # -- parameters -------------------------------------------------------------
    def set_params(self, params: np.ndarray) -> None:
        if params.shape != tuple(self.flat.shape):
            raise ValueError(f"expected {tuple(self.flat.shape)} parameters, got {params.shape}")
        with torch.no_grad():
            self.flat.copy_(torch.as_tensor(params, dtype=self.dtype_))

    def get_params(self) -> np.ndarray:
        return self.flat.detach().cpu().numpy().astype(np.float32)

    def _weights(self, i: int, layer: Layer):
        segs = self._segs.get(i)
        if not segs:
            return None, None
        w, b = segs["filters"], segs["biases"]
        return self.flat[w.offset : w.stop].view(w.shape), self.flat[b.offset : b.stop]

    # -- forward ---------------------------------------------------------------
    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=self.dtype_, device=self.device_)
        h, w, d = self.spec.input_shape
        if t.dim() != 4 or tuple(t.shape[1:]) != (h, w, d):
            raise ValueError(f"input must be [N, {h}, {w}, {d}] (NHWC), got {list(t.shape)}")
        return t.permute(0, 3, 1, 2)

    def scores(self, x_nchw: torch.Tensor) -> torch.Tensor:
        """Activations entering the loss layer, flattened HWC: [N, outputs]."""
        a = x_nchw
        for i, layer in enumerate(self.spec.layers):
            w, b = self._weights(i, layer)
            a = OPS[layer.type](layer, a, w, b, self)
        if self.training and self.has_dropout:
            self.dropout_step = (self.dropout_step + 1) & masks.M32
        return _flatten_hwc(a)

    def forward(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, svm scores or regression outputs: [N, outputs]."""
        s = self.scores(self._tensor(x))
        return F.softmax(s, dim=1) if self.spec.loss == "softmax" else s

    def loss(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Summed (not mean) data loss of the batch, ConvNetJS's per-example costs.

        softmax: -log p_y; svm: sum_i max(0, s_i - s_y + 1) over all i (so it includes
        the constant 1 of i = y, as ConvNetJS reports it); regression: 0.5 * |out - y|^2,
        whose gradient out - y is ConvNetJS's (it reports 2 * |out - y|^2 as the loss).
        """
        s = self.scores(self._tensor(x))
        kind = self.spec.loss
        if kind == "regression":
            target = torch.as_tensor(y, dtype=self.dtype_, device=self.device_)
            if tuple(target.shape) != tuple(s.shape):
                raise ValueError(f"regression targets must be {list(s.shape)}, got {list(target.shape)}")
            return 0.5 * ((s - target) ** 2).sum()
        labels = torch.as_tensor(y, dtype=torch.long, device=self.device_)
        if labels.shape != (s.shape[0],):
            raise ValueError(f"labels must be [{s.shape[0]}] class indices, got {list(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= s.shape[1]):
            raise ValueError(f"labels must be in [0, {s.shape[1]}), got {labels.min()}..{labels.max()}")
        if kind == "softmax":
            return F.cross_entropy(s, labels, reduction="sum")
        s_y = s.gather(1, labels[:, None])
        return F.relu(s - s_y + 1.0).sum()

    # -- the worker's map step ---------------------------------------------------
    def gradient(
        self,
        x: np.ndarray,
        y: np.ndarray,
        l1_decay: float = 0.0,
        l2_decay: float = 0.0,
        train: bool = True,
    ) -> tuple[np.ndarray, int, float]:
        """(summed gradient as flat float32, count, summed loss) over the batch.

        Sums, not means: the master averages over every worker's count. Decay (if
        given) is added once, as ConvNetJS adds it once per batch; a distributed
        worker passes none and the master adds it once per reduce instead.
        """
        n = len(x)
        self.train(train)
        if self.flat.grad is not None:
            self.flat.grad = None
        total = 0.0
        step = self.dropout_step  # one step: its chunks are one batch to the dropout masks
        try:
            for start in range(0, n, CHUNK):
                self.dropout_step, self._row0 = step, start
                loss = self.loss(x[start : start + CHUNK], y[start : start + CHUNK])
                loss.backward()
                total += float(loss.detach())
        finally:
            self._row0 = 0
        self.train(False)
        if self.flat.grad is None:
            grad = np.zeros(self.spec.num_params, np.float32)
        else:
            grad = self.flat.grad.detach().cpu().numpy().astype(np.float32)
            self.flat.grad = None
        if l1_decay or l2_decay:
            grad += decay_gradient(self.get_params(), l1_decay, l2_decay, self._l1_mul, self._l2_mul)
        return grad, n, total

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self.train(False)
        outs = [self.forward(x[i : i + CHUNK]).cpu().numpy() for i in range(0, len(x), CHUNK)]
        if not outs:
            return np.zeros((0, self.spec.num_outputs), np.float32)
        return np.concatenate(outs).astype(np.float32)
