"""The learning benchmark's tasks (benchmarks/learning_bench.py --task NAME): for each, the
data, mlitb's built-in model, the plain PyTorch loop's own model and batches, and the score
both are judged by.

- mnist: the paper's demo (MNIST, the `mnist` example, 5,994 parameters); test error on all
  10,000 test images; thresholds 7 %, 2 %, 1.5 % (goals at 2 % and 1.5 %).
- fashion: Fashion-MNIST (Debian's dataset-fashion-mnist), the `fashion` example (a
  residual batch-norm net with global average pooling); test error on all 10,000 test
  images; thresholds 12 %, 10 %, 9 % (goals at 12 % and 10 %; every mlitb run to 9 %).
- charlm: tiny Shakespeare (../shared/data/tinyshakespeare.txt, or --text FILE; never in
  the repository), the `charlm` example (4 transformer layers, 128 wide, 4 heads, context
  64); validation loss in nats per character on every window of the text's last tenth
  (the windows mlitb's data server makes: 65 characters, stride 64); thresholds 2.0,
  1.75, 1.6 (goals at 2.0 and 1.75; every mlitb run to 1.6).

The plain loops are written as a PyTorch user would, independent of mlitb's executor and
optimizers: their own nn.Module per task (mnist: bench_util.torch_nn_model of the spec's
JSON; fashion: a hand-written ResNet-style module; charlm: a hand-written nanoGPT-style
module), nn.CrossEntropyLoss, torch.optim (Adam; AdamW with nanoGPT's betas for the
language model), batches from tensors in memory (images: shuffled epochs; text: nanoGPT's
random windows of the training part). Only the data files are read through mlitb's
readers (the IDX reader; for text, nothing: the plain loop encodes the text itself).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_util import ROOT, data_auth, idx_zip, mnist_zip, torch_nn_model, upload_zip

EVAL_BATCH = 1000  # images per forward when scoring
TEXT_EVAL_BATCH = 128  # windows per forward when scoring
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass
class Task:
    """What one benchmark task measures; subclasses bring the data and the models."""

    name: str
    example: str  # mlitb's built-in spec
    metric: str  # what a snapshot is scored by (lower is better)
    thresholds: tuple[float, ...]  # descending: the table's "time to" columns
    timed: tuple[float, float]  # goals 1a/2a and 1b/2b: time to these
    target: float | None  # goal 0: every mlitb run gets at or below it (None: no such goal)
    snapshot_every: float  # s of wall time between snapshots (each costs a scoring pass)
    duration: float  # s per run at most (--duration's default)
    sweep_batches: str
    sweep_lrs: str
    sweep_duration: float

    @property
    def stop(self) -> float:
        """A run may end early once a snapshot is at or below this (the last threshold)."""
        return self.thresholds[-1]

    def thr_key(self, thr: float) -> str:
        return f"t_{thr * 100:g}pct" if self.percent else f"t_{thr:g}"

    @property
    def percent(self) -> bool:
        return self.metric == "test error"

    def fmt(self, v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v * 100:.2f}%" if self.percent else f"{v:.3f}"

    def fmt_thr(self, thr: float) -> str:
        return f"{thr * 100:g} %" if self.percent else f"{thr:g}"

    # what subclasses provide
    def layer_defs(self) -> list[dict]:
        from mlitb import examples

        return examples.load(self.example)["layer_defs"]

    def plain_model(self, seed: int) -> nn.Module:
        raise NotImplementedError

    def class_names(self) -> list[str]:
        """The names of the plain loop's classes in its own order (a project's labels are
        mapped onto them when mlitb's snapshots are scored)."""
        raise NotImplementedError

    def plain_data(self):
        raise NotImplementedError

    def batches(self, data, batch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr)

    def eval_data(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score(self, predict: Callable[[np.ndarray], np.ndarray], kind: str, data) -> float:
        """The metric of a model given as `predict` (probabilities or logits per kind)."""
        raise NotImplementedError

    def upload(self, http, url: str) -> tuple[int, int]:
        """(training set id, test set id) on the master's data server at `url`."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Before the first run: what uploads need, made once (not timed)."""


# ---------------------------------------------------------------------- images
class ImageTask(Task):
    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from mlitb.data import fashion, mnist

        if self.name == "fashion":
            return fashion.load(split)
        return mnist.load(split, mnist.find_source(ROOT))

    def class_names(self) -> list[str]:
        from mlitb.data import fashion

        return list(fashion.CLASSES) if self.name == "fashion" else [str(i) for i in range(10)]

    def plain_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return FashionNet() if self.name == "fashion" else torch_nn_model(self.layer_defs())

    def plain_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 [N, 1, 28, 28] in [0, 1], labels int64 [N]): tensors in memory."""
        images, labels = self.load("train")
        x = torch.from_numpy(np.array(images, np.float32).reshape(-1, 1, 28, 28)).div_(255)
        return x, torch.from_numpy(labels.astype(np.int64))

    def batches(self, data, batch, gen):
        """Shuffled epochs (a new torch.randperm each); an epoch's last batch may be smaller."""
        x_all, y_all = data
        n = len(y_all)
        while True:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                yield x_all[idx], y_all[idx]

    def eval_data(self):
        images, labels = self.load("test")
        return images.reshape(-1, 28, 28, 1), labels.astype(np.int64)

    def score(self, predict, kind, data) -> float:
        """Test error: the share of argmax predictions that miss, over every test image."""
        xs, ys = data
        wrong = 0
        for i in range(0, len(ys), EVAL_BATCH):
            x = xs[i : i + EVAL_BATCH].astype(np.float32) * np.float32(1 / 255)
            if kind == "plain":
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            wrong += int(np.sum(np.argmax(predict(x), axis=1) != ys[i : i + EVAL_BATCH]))
        return wrong / len(ys)

    def zip(self, split: str) -> Path:
        """The upload zip of `split`, built once (cached): MNIST's, or one with a folder
        per Fashion-MNIST class name."""
        if self.name == "mnist":
            return mnist_zip(split)
        from mlitb.data import fashion

        return idx_zip(self.name, split, self.load, fashion.CLASSES)

    def prepare(self) -> None:
        self.zip("train"), self.zip("test")

    def upload(self, http, url):
        base = f"{url}/data"
        train = upload_zip(http, base, self.zip("train"), f"{self.name}-train", "train")
        test = upload_zip(http, base, self.zip("test"), f"{self.name}-test", "test")
        return train["dataset"], test["dataset"]


class ResidualStage(nn.Module):
    """relu(bn(conv(relu(bn(conv_s2(x))))) + proj(x)): two 3x3 convs, the first halving
    the image; a 1x1 stride-2 projection on the shortcut (what torchvision's BasicBlock
    does when the shape changes, without the projection's own batch norm)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.proj(x))


class FashionNet(nn.Module):
    """The `fashion` example's architecture, written by hand: a 3x3 conv stem with batch
    norm (16 channels, 28x28), stages to 24 (14x14) and 32 (7x7), global average pooling,
    a linear classifier. Input [N, 1, 28, 28], logits [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(ResidualStage(16, 24), ResidualStage(24, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


# ---------------------------------------------------------------------- text
class TextTask(Task):
    """Character-level language modelling of one text: the plain loop reads and encodes it
    itself (its characters sorted by code point are the vocabulary, the last tenth is the
    validation part), as mlitb's data server does on upload."""

    context = 64

    def text_path(self) -> Path:
        path = Path(os.environ.get("MLITB_BENCH_TEXT") or SHAKESPEARE)
        if not path.exists():
            raise FileNotFoundError(
                f"the charlm task needs a text: {path} does not exist; fix: set MLITB_BENCH_TEXT=FILE "
                "(tiny Shakespeare is ../shared/data/tinyshakespeare.txt in the workplace)"
            )
        return path

    def encoded(self) -> tuple[list[str], np.ndarray, int]:
        """(vocabulary, ids uint8 of the whole text, where the validation part starts)."""
        return _encode(self.text_path())

    def layer_defs(self) -> list[dict]:
        """The example with the text's vocabulary (what project creation fits it to)."""
        vocab = len(self.encoded()[0])
        defs = [dict(d) for d in super().layer_defs()]
        for d in defs:
            if d["type"] == "embedding":
                d["vocab"] = vocab
            if d["type"] == "seqsoftmax":
                d["num_classes"] = vocab
        return defs

    def class_names(self) -> list[str]:
        return self.encoded()[0]

    def plain_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return CharGPT(len(self.encoded()[0]), self.context)

    def plain_data(self) -> torch.Tensor:
        _, ids, cut = self.encoded()
        return torch.from_numpy(ids[:cut].astype(np.int64))

    def batches(self, data, batch, gen):
        """nanoGPT's get_batch: `batch` windows at uniformly random offsets of the training part."""
        t = self.context
        span = torch.arange(t + 1)
        while True:
            starts = torch.randint(len(data) - t - 1, (batch,), generator=gen)
            w = data[starts[:, None] + span]
            yield w[:, :-1], w[:, 1:]

    def optimizer(self, params, lr):
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99))  # nanoGPT's betas

    def eval_data(self):
        """Every validation window: (N, 65) ids, stride 64 over the text's last tenth."""
        _, ids, cut = self.encoded()
        val, t = ids[cut:], self.context
        n = (len(val) - 1) // t
        windows = val[np.arange(n)[:, None] * t + np.arange(t + 1)]
        return windows, windows[:, 1:].astype(np.int64)

    def score(self, predict, kind, data) -> float:
        """Mean -log p of the next character over every position of every validation window."""
        windows, targets = data
        total, count = 0.0, 0
        for i in range(0, len(windows), TEXT_EVAL_BATCH):
            w = windows[i : i + TEXT_EVAL_BATCH]
            y = targets[i : i + TEXT_EVAL_BATCH].reshape(-1)
            if kind == "plain":  # logits [B, T, V]
                logits = torch.from_numpy(predict(np.ascontiguousarray(w[:, :-1]).astype(np.int64)))
                nll = F.cross_entropy(logits.reshape(len(y), -1), torch.from_numpy(y), reduction="sum")
                total += float(nll)
            else:  # mlitb's probabilities [B, T, V] of the 1 x T x 1 input
                x = w[:, :-1].astype(np.float32).reshape(len(w), 1, self.context, 1)
                probs = predict(x).reshape(len(y), -1)
                total += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).sum())
            count += len(y)
        return total / count

    def prepare(self) -> None:
        self.text_path()

    def upload(self, http, url):
        base = f"{url}/data"
        resp = http.post(
            f"{base}/datasets/text",
            params={"name": "shakespeare", "context": self.context},
            content=self.text_path().read_bytes(),
            headers={"Content-Type": "text/plain", **data_auth(base)},
            timeout=600,
        )
        if resp.status_code >= 400:
            raise RuntimeError(f"text upload refused: {resp.status_code} {resp.text[:300]}")
        split = resp.json()["split"]
        return split["train"], split["test"]


@functools.lru_cache(maxsize=2)
def _encode(path: Path) -> tuple[list[str], np.ndarray, int]:
    """The text as it was uploaded (UTF-8, a BOM dropped, line ends kept), its characters
    sorted as the vocabulary (at most 256: ids are bytes), the last tenth for validation."""
    text = path.read_bytes().decode("utf-8-sig")
    vocab = sorted(set(text))
    if len(vocab) > 256:
        raise ValueError(f"{path}: {len(vocab)} different characters, over the 256 a byte id holds")
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), np.uint8, len(text))
    return vocab, ids, len(ids) - len(ids) // 10


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D/H]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """GPT-2's pre-norm block: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """nanoGPT's CPU configuration for characters (4 layers, 128 wide, 4 heads, no dropout,
    no weight tying, as the `charlm` example), with GPT-2's N(0, 0.02) initialisation.
    Input ids [B, T] int64, logits [B, T, vocab]."""

    def __init__(self, vocab: int, context: int, dim: int = 128, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln_f(self.blocks(x)))


# ---------------------------------------------------------------------- the table
TASKS: dict[str, Task] = {
    "mnist": ImageTask(
        "mnist", "mnist", "test error", (0.07, 0.02, 0.015), (0.02, 0.015), None,
        snapshot_every=0.5, duration=120.0, sweep_batches="32,64", sweep_lrs="1e-3,2e-3", sweep_duration=30.0,
    ),
    "fashion": ImageTask(
        "fashion", "fashion", "test error", (0.12, 0.10, 0.09), (0.12, 0.10), 0.09,
        snapshot_every=5.0, duration=300.0, sweep_batches="32,64", sweep_lrs="1e-3,2e-3",
        sweep_duration=120.0,
    ),
    "charlm": TextTask(
        "charlm", "charlm", "validation loss", (2.0, 1.75, 1.6), (2.0, 1.75), 1.6,
        snapshot_every=10.0, duration=300.0, sweep_batches="12,32", sweep_lrs="1e-3,2e-3",
        sweep_duration=120.0,
    ),
}  # fmt: skip
