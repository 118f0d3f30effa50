"""The PyTorch executor: runs a `Spec` from its flat parameter vector.

The whole parameter vector is one `torch.nn.Parameter`; every layer reads its
weights as views of it (through `layout.segments`, never a copy of the layout
rules), so a backward pass leaves the gradient already in the canonical flat
layout. Activations are NCHW inside; inputs arrive NHWC (as data and ConvNetJS
Vols are stored) and fc/loss layers flatten in HWC order, like ConvNetJS.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import dropout as masks
from .decay import decay_gradient
from .layers import Layer
from .layout import Segment, decay_multipliers, fixed_arrays, segments
from .spec import Spec

CHUNK = 1024  # examples per forward pass at most; bounds activation memory
CHUNK_VALUES = 1 << 26  # activation values per chunk at most (256 MB of float32): larger models, fewer


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


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias, stride: int, pad: int) -> torch.Tensor:
    """F.conv2d (x NCHW, weight [out, in, sy, sx]), except a 1x1 kernel: the places it reads
    (every stride-th row and column) times the weights as one matrix. Why: PyTorch 2.13's
    oneDNN gets a strided 1x1 convolution's weight gradient wrong on AVX2 CPUs (60-80 % off
    on 2 threads, and on 1 thread it writes past its buffers: the heap corruption that
    aborted whole test runs), and residual blocks' projections are exactly that case; a
    transformer's MLP (1x1 convs over [N, D, 1, T]) trains 1.2x faster as plain matmuls."""
    if weight.shape[2:] != (1, 1):
        return F.conv2d(x, weight, bias, stride=stride, padding=pad)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    # picked in NHWC order (as oneDNN keeps the activations): its gradient comes back in that
    # order too, and a ReLU's backward on mixed orders is 15x slower than on one
    picked = x.permute(0, 2, 3, 1)
    if stride > 1:
        picked = picked[:, ::stride, ::stride]  # [N, H', W', in]
    y = F.linear(picked, weight.reshape(weight.shape[0], -1), bias)  # [N, H', W', out]
    return y.permute(0, 3, 1, 2)


def _nhwc(f: Callable, x: torch.Tensor) -> torch.Tensor:
    """An elementwise f on x's NHWC view (contiguous where the activations are kept that
    way): PyTorch's kernels on the NCHW view of the same memory are 1.7x slower."""
    return f(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv(layer, x, p, net):
    weight = p["filters"].permute(0, 3, 1, 2)  # [out, in, sy, sx]
    return conv2d(x, weight, net.fixed(layer, "biases", p), layer.stride, layer.pad)


def _fc(layer, x, p, net):
    y = F.linear(_flatten_hwc(x), p["filters"], net.fixed(layer, "biases", p))
    return y.view(y.shape[0], -1, 1, 1)


def _pool(layer, x, p, net):
    if layer.pad:  # padded positions never win the max, as in ConvNetJS
        pad = layer.pad
        x = F.pad(x, (pad, pad, pad, pad), value=float("-inf"))
    if net.router is not None:  # verification's rerouting of near-tied windows (master/trust/ties.py)
        return net.router(net.index_of(layer), layer, x)
    return F.max_pool2d(x, (layer.sy, layer.sx), layer.stride)


def _relu(layer, x, p, net):
    if net.router is not None:  # verification's flips of near-0 inputs (master/trust/ties.py)
        return net.router.relu(net.index_of(layer), x)
    return F.relu(x)


def _maxout(layer, x, p, net):
    n, c, h, wd = x.shape
    g = layer.group_size
    groups = c // g
    return x[:, : groups * g].reshape(n, groups, g, h, wd).max(dim=2).values


def _dropout(layer, x, p, net):
    if net.training:  # drop with probability p, no rescaling (ConvNetJS)
        return x * net.dropout_keep(layer, x).to(x.dtype)
    return x * layer.drop_prob  # ConvNetJS's test-time scaling


def _lrn(layer, x, p, net):
    n2 = layer.n // 2
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, n2, n2))  # zero-pad the channel axis
    window = F.avg_pool3d(sq, (2 * n2 + 1, 1, 1), stride=1).squeeze(1) * (2 * n2 + 1)
    return x / (layer.k + layer.alpha / layer.n * window).pow(layer.beta)


def _identity(layer, x, p, net):
    return x


def _layernorm(layer, x, p, net):
    y = F.layer_norm(x.permute(0, 2, 3, 1), (layer.in_shape[2],), p["gain"], p["bias"], layer.eps)
    return y.permute(0, 3, 1, 2)


def _batchnorm(layer, x, p, net):
    """Training: the batch's statistics, and the state's pull towards them (a loss term
    whose gradient is n x (state - statistic): TorchNet.state_loss). Prediction: the
    running statistics. Both through PyTorch's fused batch norm (native_batch_norm in
    training: one kernel each way, where normalising by hand took five elementwise passes)."""
    bias = net.fixed(layer, "bias", p)
    if not net.training:
        rm, rv = p["running_mean"].detach(), p["running_var"].detach().clamp_min(0)
        return F.batch_norm(x, rm, rv, p["gain"], bias, False, 0.0, layer.eps)
    # normalised by the biased variance; also returns the batch's mean and 1 / sqrt(var + eps)
    # (torch.var_mean would take 3x as long as the whole batch norm)
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, p["gain"], bias, None, None, True, 0.0, layer.eps)
    with torch.no_grad():
        count = x.shape[0] * x.shape[2] * x.shape[3]  # values per channel in the batch
        var = (invstd.pow(-2) - layer.eps).clamp_min(0)  # biased, to ~1e-7 of var + eps
        var = var * (count / (count - 1)) if count > 1 else var  # unbiased: the running one's
    pull = ((p["running_mean"] - mean) ** 2).sum() + ((p["running_var"] - var) ** 2).sum()
    net.add_state_loss(0.5 * x.shape[0] * pull)
    return y


def _globalavgpool(layer, x, p, net):
    return x.permute(0, 2, 3, 1).mean((1, 2), keepdim=True).permute(0, 3, 1, 2)  # gradient NHWC too


def _embedding(layer, x, p, net):
    n, _, h, w = x.shape
    ids = x.reshape(n, h * w)
    bad = lambda: ids.min() < 0 or ids.max() >= layer.vocab or (ids != ids.round()).any()  # noqa: E731
    if not torch.jit.is_tracing() and ids.numel() and bad():  # a token id is an integer below the vocab
        raise ValueError(f"token ids must be integers in [0, {layer.vocab}), got {ids.min()}..{ids.max()}")
    out = F.embedding(ids.long(), p["weights"])  # [N, T, D]
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)  # NCHW in NHWC order, as the convs keep it


def _posembedding(layer, x, p, net):
    _, d, h, w = x.shape
    return x + p["weights"].t().reshape(1, d, h, w)


def _attention(layer, x, p, net):
    n, d, h, w = x.shape
    t, heads = h * w, layer.heads
    seq = x.flatten(2).transpose(1, 2)  # [N, T, D], positions in HWC order
    b = p["qkv_biases"]  # the key's bias adds q.b to every score of a row: softmax removes it,
    b = torch.cat([b[:d], b[d : 2 * d].detach(), b[2 * d :]])  # so it stays fixed (docs/model.md)
    q, k, v = F.linear(seq, p["qkv"], b).split(d, dim=2)
    split = lambda z: z.view(n, t, heads, d // heads).transpose(1, 2)  # noqa: E731  [N, heads, T, D/heads]
    q, k, v = split(q), split(k), split(v)
    # softmax(q k^T / sqrt(D/heads), the future masked when causal) v, fused: PyTorch's
    # flash kernel on CPU, 1.1x faster for the whole charlm step than the four ops
    y = F.scaled_dot_product_attention(q, k, v, is_causal=bool(layer.causal))  # [N, heads, T, D/heads]
    y = y.transpose(1, 2).reshape(n, t, d)
    y = F.linear(y, p["out"], p["out_biases"])  # [N, T, D]
    return y.view(n, h, w, d).permute(0, 3, 1, 2)  # NHWC order kept (no copy back to NCHW)


def _residual(layer, x, p, net):
    y = net.run(layer.layers, x)
    if not layer.stride:
        return y + x
    weight = p["filters"].permute(0, 3, 1, 2)  # the 1x1 projection shortcut
    return y + conv2d(x, weight, net.fixed(layer, "biases", p), layer.stride, 0)


OPS: dict[str, Callable] = {
    "input": _identity,
    "conv": _conv,
    "fc": _fc,
    "pool": _pool,
    "relu": _relu,
    "sigmoid": lambda layer, x, p, net: torch.sigmoid(x),
    "tanh": lambda layer, x, p, net: torch.tanh(x),
    "gelu": lambda layer, x, p, net: _nhwc(F.gelu, x),  # exact (erf)
    "maxout": _maxout,
    "dropout": _dropout,
    "lrn": _lrn,
    "layernorm": _layernorm,
    "batchnorm": _batchnorm,
    "globalavgpool": _globalavgpool,
    "embedding": _embedding,
    "posembedding": _posembedding,
    "attention": _attention,
    "residual": _residual,
    "softmax": _identity,
    "seqsoftmax": _identity,
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
        self.has_dropout = any(layer.type == "dropout" for layer in spec.walk)
        self._index = {id(layer): i for i, layer in enumerate(spec.walk)}  # layout / dropout index
        self._fixed = {(id(layer), name) for layer, name in fixed_arrays(spec)}
        # a batch norm net's gradient takes the whole batch at once (its statistics are the
        # batch's, as in TF.js); other passes go in chunks (`chunk`)
        self._batch_coupled = any(layer.type == "batchnorm" for layer in spec.walk)
        self._row0 = 0  # the first example of the chunk forwarded (gradient's chunks)
        self._hashed: dict = {}  # (layer, shape, row0, device) -> lowbias32 of the canonical indices
        by_layer: dict[int, dict[str, Segment]] = {}
        for seg in segments(spec):
            by_layer.setdefault(seg.layer, {})[seg.name] = seg
        self._segs = by_layer
        # the flat vector is cut by ONE split per forward (its backward is one concatenation),
        # not a slice per array: each slice's backward wrote a zero vector of every parameter
        # and added it (60 arrays of a 818k-parameter transformer: 0.1 s a batch)
        ordered = sorted(segments(spec), key=lambda g: g.offset)
        bounds = [g.offset for g in ordered] + [spec.num_params]
        self._cuts = [(g.layer, g.name) for g in ordered]
        self._sizes = [b - a for a, b in itertools.pairwise(bounds)]
        tiled = all(g.stop == b for g, b in zip(ordered, bounds[1:], strict=True))
        if ordered and (ordered[0].offset != 0 or not tiled):
            raise AssertionError("the layout's arrays do not tile the flat vector")  # layout.py's invariant
        self._parts: dict[tuple[int, str], torch.Tensor] | None = None
        self._l1_mul, self._l2_mul = decay_multipliers(spec)
        # verification's near ties (mlitb.master.trust.ties.Router): router(layer index, layer,
        # x) -> max-pooled x and router.relu(layer index, x) -> x's ReLU; None: PyTorch's own
        self.router = None
        # batchnorm's pull of its running statistics towards this batch's (a sum over its
        # layers, built by a training forward; `loss` adds its gradient, not its value)
        self.state_loss: torch.Tensor | None = None

    def fixed(self, layer: Layer, name: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Array `name` of `layer`, without a gradient where a batchnorm removes it (its
        exact gradient is 0, and the rounding noise in its place would be turned into full
        steps by Adam, differently by each executor: layout.fixed_arrays)."""
        return p[name].detach() if (id(layer), name) in self._fixed else p[name]

    @property
    def chunk(self) -> int:
        """Examples per forward pass: CHUNK, fewer for a model whose activations are large."""
        return max(1, min(CHUNK, CHUNK_VALUES // max(self.spec.values_per_example, 1)))

    def index_of(self, layer: Layer) -> int:
        """`layer`'s index in spec.walk (the layout's and the dropout masks')."""
        return self._index[id(layer)]

    def add_state_loss(self, term: torch.Tensor) -> None:
        self.state_loss = term if self.state_loss is None else self.state_loss + term

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

    def _arrays(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's arrays as views of the flat vector (of this forward's split), by name."""
        segs = self._segs.get(i)
        if not segs:
            return {}
        if self._parts is None:
            return {name: self.flat[g.offset : g.stop].view(g.shape) for name, g in segs.items()}
        return {name: self._parts[(i, name)].view(g.shape) for name, g in segs.items()}

    # -- forward ---------------------------------------------------------------
    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=self.dtype_, device=self.device_)
        h, w, d = self.spec.input_shape
        if t.dim() != 4 or tuple(t.shape[1:]) != (h, w, d):
            raise ValueError(f"input must be [N, {h}, {w}, {d}] (NHWC), got {list(t.shape)}")
        return t.permute(0, 3, 1, 2)

    def scores(self, x_nchw: torch.Tensor) -> torch.Tensor:
        """Activations entering the loss layer, flattened HWC: [N, outputs]."""
        self.state_loss = None
        if self._sizes:
            self._parts = dict(zip(self._cuts, torch.split(self.flat, self._sizes), strict=True))
        try:
            a = self.run(self.spec.layers, x_nchw)
        finally:
            self._parts = None
        if self.training and self.has_dropout:
            self.dropout_step = (self.dropout_step + 1) & masks.M32
        return _flatten_hwc(a)

    def run(self, layers, a: torch.Tensor) -> torch.Tensor:
        """`layers` in order on NCHW activations (the spec's, or a residual block's)."""
        for layer in layers:
            a = OPS[layer.type](layer, a, self._arrays(self._index[id(layer)]), self)
        return a

    def forward(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, svm scores or regression outputs: [N, outputs]; a
        sequence's per-position probabilities: [N, positions, classes]."""
        s = self.scores(self._tensor(x))
        if self.spec.loss == "seqsoftmax":
            return F.softmax(s.view(s.shape[0], self.spec.positions, -1), dim=2)
        return F.softmax(s, dim=1) if self.spec.loss == "softmax" else s

    def loss(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Summed (not mean) data loss of the batch, ConvNetJS's per-example costs.

        softmax: -log p_y; svm: sum_i max(0, s_i - s_y + 1) over all i (so it includes
        the constant 1 of i = y, as ConvNetJS reports it); regression: 0.5 * |out - y|^2,
        whose gradient out - y is ConvNetJS's (it reports 2 * |out - y|^2 as the loss);
        seqsoftmax: -log p of every position's target ([N, positions] class indices),
        summed over positions too. In training, batchnorm's state pull joins the gradient
        but not the value (x - x.detach() is exactly 0).
        """
        s = self.scores(self._tensor(x))
        data = self._data_loss(s, y)
        if self.state_loss is not None and self.training:
            data = data + (self.state_loss - self.state_loss.detach())
        return data

    def _data_loss(self, s: torch.Tensor, y) -> torch.Tensor:
        kind = self.spec.loss
        if kind == "regression":
            target = torch.as_tensor(y, dtype=self.dtype_, device=self.device_)
            if tuple(target.shape) != tuple(s.shape):
                raise ValueError(f"regression targets must be {list(s.shape)}, got {list(target.shape)}")
            return 0.5 * ((s - target) ** 2).sum()
        labels = torch.as_tensor(y, dtype=torch.long, device=self.device_)
        if kind == "seqsoftmax":
            t = self.spec.positions
            if labels.shape != (s.shape[0], t):
                raise ValueError(f"targets must be [{s.shape[0]}, {t}] token ids, got {list(labels.shape)}")
            s = s.view(s.shape[0] * t, -1)
            labels = labels.reshape(-1)
        elif labels.shape != (s.shape[0],):
            raise ValueError(f"labels must be [{s.shape[0]}] class indices, got {list(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= s.shape[1]):
            raise ValueError(f"labels must be in [0, {s.shape[1]}), got {labels.min()}..{labels.max()}")
        if kind in ("softmax", "seqsoftmax"):
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
            chunk = max(n, 1) if self._batch_coupled else self.chunk
            for start in range(0, n, chunk):
                self.dropout_step, self._row0 = step, start
                loss = self.loss(x[start : start + chunk], y[start : start + chunk])
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
        outs = [self.forward(x[i : i + self.chunk]).cpu().numpy() for i in range(0, len(x), self.chunk)]
        if not outs:
            return np.zeros((0, self.spec.num_outputs), np.float32)
        return np.concatenate(outs).astype(np.float32)
