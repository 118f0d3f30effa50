"""Step benchmark: where a native worker's training step spends its time, against the same
step written with torch.nn and torch.optim (issue 25, item 2).

The demo MNIST net (mlitb/examples/mnist.json, 5,994 parameters), real MNIST training
images held in memory (`--model fashion`: the fashion example, 27,090 parameters, on
Fashion-MNIST, against learning_bench's FashionNet, with the project defaults' inner
Adam), one torch thread, at the batch sizes --batches (default 32 and 64,
the sizes a PyTorch user picks, and 20, the demo project's). Variants, each sample one
round of --steps steps (learning goes on across samples):

  torch-nn       the idiomatic loop: the spec as a torch.nn.Sequential
                 (bench_util.torch_nn_model), nn.CrossEntropyLoss, torch.optim.Adam
                 (lr = the demo's inner lr), minibatches x_all[idx] from a float tensor
                 in memory through a torch.randperm per epoch.
  native         mlitb.worker.compute.local_for exactly as a worker runs a local_sgd
                 round: TorchNet on the flat parameter vector, the 60,000 images in an
                 ItemCache (uint8), the Sampler, an InnerOptimizer built from the order
                 the master sends for the demo project (LocalSGD.work_fields()["inner"]:
                 Adam, lr, l2 decay), and a fresh ProofRecorder per round (local_proof),
                 fixed work of steps x batch vectors (max_vectors).
  native-phases  a replica of local_for's loop with a clock between the calls, the same
                 calls in the same order; per step: batch (Sampler + cache.batch_keys:
                 uint8 cache -> float32), forward (TorchNet.loss: NHWC -> NCHW, weight
                 views and permutes, label checks, summed cross-entropy), backward,
                 inner (InnerOptimizer.step), proof (ProofRecorder.step), other (the
                 loop's own work); per round: p0 copy, the first and last checkpoints,
                 the change start - end.
  torch-nn-phases  the same clock in the idiomatic loop: batch, forward, backward,
                 optimizer (zero_grad + step), other.
  fb-*           forward + backward only, on the same batches (no optimizer), for the
                 layout: fb-torch-nn (NCHW), fb-torch-nn-cl (channels_last model and
                 input), fb-native (TorchNet.loss as it is: its conv weights are
                 permuted views of the flat vector [out, sy, sx, in], i.e. channels_last
                 tensors, so convolution and pooling run channels_last), fb-native-nchw
                 (the same with each conv weight made contiguous NCHW first: a patch of
                 torch_executor.OPS inside this process only, for the ablation),
                 fb-native-pool-relu (a proposal: each ReLU that a max-pool follows is
                 applied after that pool instead, on 4x / 9x fewer values; relu and max
                 commute, so outputs and gradients are the same; also a patch of OPS
                 here only).
  native-pool-relu  native (local_for) with that proposal: the whole step's gain.

Samples are interleaved (every variant once per repeat, the order rotating), --repeats
samples each after a warm-up round; the table shows medians of vectors/s, and the ratio
native / torch-nn is the median of the per-repeat ratios. With --profile-steps > 0,
torch.profiler also runs fb-native and fb-torch-nn once (after the timed samples) and
sums the ops' self CPU time per category (conv, pool, relu, linear, loss, layout:
views/permutes/copies and their backward, autograd) in microseconds per step (the
profiler's own overhead included: shares, not speeds).

Goal (PASS/FAIL per batch size): native >= 0.9x torch-nn vectors/s.

Writes the tables, --out (JSON: every sample, the breakdowns, the profile, the machine,
the command). Run: `.venv/bin/python benchmarks/step_bench.py` (about 2 minutes on a
2-core machine; --quick: about 30 s). Measure on a quiet machine: the script prints
the 1-minute load average before and after and keeps it in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_util import torch_nn_model

from mlitb.data import mnist
from mlitb.demo import HYPER
from mlitb.master.config import Hyper
from mlitb.master.learning.algorithms import LocalSGD
from mlitb.model import torch_executor
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers, init_params, state_rates
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet
from mlitb.worker.cache import ItemCache
from mlitb.worker.compute import Sampler, _done, _local_state, _rows, local_for, local_proof

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GOAL = 0.9  # native vectors/s at least this times torch-nn's
PHASES_NATIVE = ("batch", "forward", "backward", "inner", "proof", "other")
PHASES_TORCH = ("batch", "forward", "backward", "optimizer", "other")
VARIANTS = (
    "torch-nn",
    "native",
    "native-phases",
    "torch-nn-phases",
    "fb-torch-nn",
    "fb-torch-nn-cl",
    "fb-native",
    "fb-native-nchw",
    "fb-native-pool-relu",
    "native-pool-relu",
)
LAYOUT_OPS = {
    "aten::permute", "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::slice",
    "aten::slice_backward", "aten::as_strided", "aten::contiguous", "aten::clone", "aten::copy_",
    "aten::_unsafe_view", "aten::expand", "aten::transpose", "aten::t", "aten::unsqueeze",
    "aten::squeeze", "aten::alias", "aten::select", "aten::flatten", "aten::resize_",
    "aten::zeros", "aten::zero_", "aten::fill_", "aten::empty_like", "aten::new_zeros",
    "aten::to", "aten::_to_copy", "aten::detach", "detach", "aten::lift_fresh",
}  # fmt: skip


def demo_layer_defs(model: str = "mnist") -> list[dict]:
    return json.loads(resources.files("mlitb.examples").joinpath(f"{model}.json").read_text())["layer_defs"]


def plain_model(model: str, defs: list[dict]) -> torch.nn.Module:
    """The idiomatic net: the MNIST spec as torch.nn.Sequential, the fashion example as
    learning_bench's FashionNet (the same architecture written by hand)."""
    if model == "fashion":
        from learning_tasks import FashionNet

        return FashionNet()
    return torch_nn_model(defs)


def load_images(model: str) -> tuple[np.ndarray, np.ndarray]:
    if model == "fashion":
        from mlitb.data import fashion

        return fashion.load("train")
    return mnist.load("train", mnist.find_source(ROOT))


def category(name: str) -> str:
    """The category of a profiler op name (self CPU time is summed per category)."""
    low = name.lower()
    if name in LAYOUT_OPS or any(
        k in name for k in ("Permute", "View", "Slice", "Reshape", "Unsqueeze", "Squeeze")
    ):
        return "layout"
    if "convolution" in low:
        return "conv"
    if "max_pool" in low:
        return "pool"
    if "relu" in low or "threshold" in low or "clamp_min" in low:
        return "relu"
    if any(k in low for k in ("addmm", "aten::mm", "linear", "addmmbackward", "mmbackward", "tbackward")):
        return "linear"
    if any(k in low for k in ("softmax", "nll_loss", "cross_entropy", "sum", "mean")):
        return "loss"
    if low.startswith("autograd::") or "backward" in low or "accumulategrad" in low:
        return "autograd"
    return "other"


class Setup:
    """Everything one batch size needs, built once; the variants step it in turn."""

    def __init__(self, batch: int, images: np.ndarray, labels: np.ndarray, seed: int, model: str = "mnist"):
        self.batch = batch
        defs = demo_layer_defs(model)
        self.spec = Spec.from_json(defs)
        # the idiomatic loop
        self.x_all = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()).float().div_(255)
        self.y_all = torch.from_numpy(labels.astype(np.int64))
        torch.manual_seed(seed)
        self.model = plain_model(model, defs).train()
        # the inner settings of the demo project's orders, at this batch size
        # (fashion: the project defaults, what `--spec fashion` gets)
        hyper = Hyper.model_validate(dict(HYPER) if model == "mnist" else {})
        order = LocalSGD(hyper, *decay_multipliers(self.spec)).work_fields()
        self.inner_cfg = {**order["inner"], "batch_size": batch}
        self.adam = torch.optim.Adam(self.model.parameters(), lr=float(self.inner_cfg["learning_rate"]))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(self.y_all), generator=self.gen)
        self.pos = 0
        torch.manual_seed(seed)
        self.model_cl = plain_model(model, defs).train().to(memory_format=torch.channels_last)
        # the native worker
        self.cache = ItemCache((28, 28, 1))
        keys = np.arange(len(labels), dtype=np.int64)
        self.cache.add(keys, images.reshape(-1, 28, 28, 1), labels.astype(np.int64))
        self.net = TorchNet(self.spec, init_params(self.spec, seed), seed=seed)
        l1_mul, l2_mul = decay_multipliers(self.spec)
        self.opt = InnerOptimizer(self.inner_cfg, self.spec.num_params, l1_mul, l2_mul, self.net.device_,
                                  state_rate=state_rates(self.spec))  # fmt: skip
        self.sampler = Sampler(seed)

    # -- the idiomatic loop --------------------------------------------------------
    def next_idx(self) -> torch.Tensor:
        if self.pos >= len(self.order):
            self.order = torch.randperm(len(self.y_all), generator=self.gen)
            self.pos = 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += len(idx)
        return idx

    def torch_nn(self, steps: int) -> dict:
        model, adam, loss_fn = self.model, self.adam, self.loss_fn
        start = time.perf_counter()
        vectors = 0
        for _ in range(steps):
            idx = self.next_idx()
            xb, yb = self.x_all[idx], self.y_all[idx]
            adam.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            adam.step()
            vectors += len(idx)
        return {"s": time.perf_counter() - start, "vectors": vectors}

    def torch_nn_phases(self, steps: int) -> dict:
        model, adam, loss_fn = self.model, self.adam, self.loss_fn
        pc = time.perf_counter
        acc = dict.fromkeys(PHASES_TORCH, 0.0)
        start = pc()
        vectors = 0
        for _ in range(steps):
            t0 = pc()
            idx = self.next_idx()
            xb, yb = self.x_all[idx], self.y_all[idx]
            t1 = pc()
            loss = loss_fn(model(xb), yb)
            t2 = pc()
            loss.backward()
            t3 = pc()
            adam.step()
            adam.zero_grad(set_to_none=True)
            t4 = pc()
            vectors += len(idx)
            t5 = pc()
            acc["batch"] += t1 - t0
            acc["forward"] += t2 - t1
            acc["backward"] += t3 - t2
            acc["optimizer"] += t4 - t3
            acc["other"] += t5 - t4
        total = pc() - start
        acc["other"] += total - sum(acc.values())  # the loop itself and the clock reads
        return {"s": total, "vectors": vectors, "phases_s": acc}

    # -- the native worker ---------------------------------------------------------
    def native(self, steps: int) -> dict:
        """local_for itself, as mlitb.worker.session runs a round (a fresh proof each)."""
        start = time.perf_counter()
        proof = local_proof(self.opt)
        r = local_for(
            self.net,
            self.cache,
            self.sampler,
            3_600_000,
            self.batch,
            self.opt,
            steps * self.batch,
            None,
            proof,
        )
        return {"s": time.perf_counter() - start, "vectors": r.vectors, "compute_ms": r.compute_ms}

    def native_phases(self, steps: int) -> dict:
        """local_for's body with a clock between its calls (mirrors mlitb/worker/compute.py;
        the JSON compares its total with `native` so a drift shows)."""
        net, cache, sampler, opt, batch = self.net, self.cache, self.sampler, self.opt, self.batch
        max_vectors = steps * batch
        pc = time.perf_counter
        acc = dict.fromkeys(PHASES_NATIVE, 0.0)
        start = pc()
        proof = local_proof(opt)
        p0 = net.flat.detach().clone()
        net.train(True)
        vectors = 0
        losses = [torch.zeros((), device=p0.device)]
        state = lambda: _local_state(net, opt)  # noqa: E731
        proof.checkpoint(opt.t, state(), forced=True)
        round_start = pc() - start
        while True:
            t0 = pc()
            x, y, keys = cache.batch_keys(_rows(sampler, len(cache), batch, vectors, max_vectors, 0))
            t1 = pc()
            net.flat.grad = None
            loss = net.loss(x, y)
            t2 = pc()
            loss.backward()
            t3 = pc()
            opt.step(net.flat.data, net.flat.grad, len(y))
            t4 = pc()
            losses.append(loss.detach())
            vectors += len(y)
            t5 = pc()
            proof.step(keys, opt.t, state)
            t6 = pc()
            last = t6 - t0
            done = _done(start, last, 3600.0, vectors, max_vectors, 0)
            t7 = pc()
            acc["batch"] += t1 - t0
            acc["forward"] += t2 - t1
            acc["backward"] += t3 - t2
            acc["inner"] += t4 - t3
            acc["proof"] += t6 - t5
            acc["other"] += (t5 - t4) + (t7 - t6)
            if done:
                break
        t_end = pc()
        proof.checkpoint(opt.t, state(), forced=True)
        net.train(False)
        net.flat.grad = None
        delta = (p0 - net.flat.detach()).cpu().numpy().astype(np.float32)
        float(torch.stack(losses).sum())
        total = pc() - start
        round_end = pc() - t_end
        steps_s = sum(acc.values())
        acc["other"] += total - round_start - round_end - steps_s  # the loop itself and the clock reads
        acc["round"] = round_start + round_end
        assert delta.shape == (self.spec.num_params,)
        return {"s": total, "vectors": vectors, "phases_s": acc}

    # -- forward + backward only -------------------------------------------------------
    def fb_torch_nn(self, steps: int, channels_last: bool = False) -> dict:
        model = self.model_cl if channels_last else self.model
        start = time.perf_counter()
        vectors = 0
        for _ in range(steps):
            idx = self.next_idx()
            xb, yb = self.x_all[idx], self.y_all[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            model.zero_grad(set_to_none=True)
            self.loss_fn(model(xb), yb).backward()
            vectors += len(idx)
        return {"s": time.perf_counter() - start, "vectors": vectors}

    @staticmethod
    def with_ops(patch, fn, steps: int) -> dict:
        with patch:
            return fn(steps)

    def fb_native(self, steps: int, nchw: bool = False) -> dict:
        net, cache, sampler, batch = self.net, self.cache, self.sampler, self.batch
        net.train(True)
        with contiguous_conv_weights() if nchw else contextlib.nullcontext():
            start = time.perf_counter()
            vectors = 0
            for _ in range(steps):
                x, y, _keys = cache.batch_keys(sampler.next(len(cache), batch))
                net.flat.grad = None
                net.loss(x, y).backward()
                vectors += len(y)
            s = time.perf_counter() - start
        net.flat.grad = None
        net.train(False)
        return {"s": s, "vectors": vectors}

    def run(self, variant: str, steps: int) -> dict:
        return {
            "torch-nn": lambda: self.torch_nn(steps),
            "native": lambda: self.native(steps),
            "native-pool-relu": lambda: self.with_ops(relu_after_pool(self.net), self.native, steps),
            "fb-native-pool-relu": lambda: self.with_ops(relu_after_pool(self.net), self.fb_native, steps),
            "native-phases": lambda: self.native_phases(steps),
            "torch-nn-phases": lambda: self.torch_nn_phases(steps),
            "fb-torch-nn": lambda: self.fb_torch_nn(steps),
            "fb-torch-nn-cl": lambda: self.fb_torch_nn(steps, channels_last=True),
            "fb-native": lambda: self.fb_native(steps),
            "fb-native-nchw": lambda: self.fb_native(steps, nchw=True),
        }[variant]()


@contextlib.contextmanager
def contiguous_conv_weights():
    """torch_executor's conv op with its weight copied to contiguous NCHW first, in this
    process, for the duration (the ablation fb-native-nchw; mlitb's code is unchanged)."""
    original = torch_executor.OPS["conv"]

    def conv(layer, x, p, net):
        weight = p["filters"].permute(0, 3, 1, 2).contiguous()
        bias = net.fixed(layer, "biases", p)
        return F.conv2d(x.contiguous(), weight, bias, stride=layer.stride, padding=layer.pad)

    torch_executor.OPS["conv"] = conv
    try:
        yield
    finally:
        torch_executor.OPS["conv"] = original


@contextlib.contextmanager
def relu_after_pool(net: TorchNet):
    """The proposal, as an ablation in this process: a ReLU layer directly followed by an
    unpadded max-pool passes its input through, and that pool applies the ReLU to its
    output. max(relu(a)) == relu(max(a)) exactly, and the gradient reaches the same
    element (the window's first maximum when it is > 0, none otherwise)."""
    layers = net.spec.layers
    moved = [i for i in range(len(layers) - 1) if layers[i].type == "relu" and layers[i + 1].type == "pool"]
    moved = [i for i in moved if not layers[i + 1].pad]
    relus, pools = {id(layers[i]) for i in moved}, {id(layers[i + 1]) for i in moved}
    relu, pool = torch_executor.OPS["relu"], torch_executor.OPS["pool"]
    torch_executor.OPS["relu"] = lambda layer, x, p, n: x if id(layer) in relus else relu(layer, x, p, n)
    torch_executor.OPS["pool"] = lambda layer, x, p, n: (
        F.relu(pool(layer, x, p, n)) if id(layer) in pools else pool(layer, x, p, n)
    )
    try:
        yield
    finally:
        torch_executor.OPS["relu"], torch_executor.OPS["pool"] = relu, pool


def profile_fb(setup: Setup, steps: int) -> dict:
    """Self CPU time per op category, µs per step, of fb-native and fb-torch-nn."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, fn in (("fb-native", setup.fb_native), ("fb-torch-nn", setup.fb_torch_nn)):
        fn(5)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(steps)
        cats: dict[str, float] = {}
        ops = []
        for ev in prof.key_averages():
            us = ev.self_cpu_time_total / steps
            cats[category(ev.key)] = cats.get(category(ev.key), 0.0) + us
            ops.append((ev.key, round(us, 1), ev.count // steps if steps else 0))
        ops.sort(key=lambda o: -o[1])
        out[name] = {
            "categories_us_per_step": {
                k: round(v, 1) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
            },
            "top_ops_us_per_step": ops[:15],
        }
    return out


def load1() -> float:
    return os.getloadavg()[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="Variants, breakdown and goal: see the module docstring (benchmarks/step_bench.py).",
    )
    ap.add_argument(
        "--batches", default="20,32,64", help="comma list of batch sizes (default 20,32,64; 20: the demo's)"
    )
    ap.add_argument("--steps", type=int, help="steps per sample (default 150; --quick 60)")
    ap.add_argument("--repeats", type=int, help="samples per variant, interleaved (default 7; --quick 3)")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list (default all: {','.join(VARIANTS)})"
    )
    ap.add_argument(
        "--profile-steps",
        type=int,
        help="steps of fb-native and fb-torch-nn under torch.profiler (default 100; --quick 30; 0: none)",
    )
    ap.add_argument(
        "--model", choices=("mnist", "fashion"), default="mnist",
        help="mnist (the demo net, default) or fashion (the residual batch-norm example against FashionNet)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="init and shuffle seed (default 0)")
    ap.add_argument("--out", type=Path, default=RESULTS / "step_bench.json", help="JSON results")
    ap.add_argument("--quick", action="store_true", help="60 steps per sample, 3 repeats, 30 profiled steps")
    args = ap.parse_args(argv)
    args.steps = args.steps or (60 if args.quick else 150)
    args.repeats = args.repeats or (3 if args.quick else 7)
    if args.profile_steps is None:
        args.profile_steps = 30 if args.quick else 100
    try:
        args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError as exc:
        ap.error(f"--batches: {exc}")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if not args.batch_list or min(args.batch_list) < 1 or args.steps < 1 or args.repeats < 1:
        ap.error("--batches, --steps and --repeats must be positive")
    return args


def per_step_us(phases_s: dict, steps: int) -> dict:
    return {k: round(v / steps * 1e6, 1) for k, v in phases_s.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    load_before = load1()
    print(f"1-minute load average before: {load_before:.2f} ({os.cpu_count()} cores, 1 torch thread)")
    images, labels = load_images(args.model)
    results: dict = {}
    inner_order: dict = {}
    started = time.time()
    for batch in args.batch_list:
        setup = Setup(batch, images, labels, args.seed, args.model)
        inner_order = setup.inner_cfg
        for v in args.variant_list:  # warm-up: one short round each (allocator, oneDNN primitives)
            setup.run(v, max(5, args.steps // 5))
        samples: dict[str, list[dict]] = {v: [] for v in args.variant_list}
        for rep in range(args.repeats):
            k = rep % len(args.variant_list)
            for v in args.variant_list[k:] + args.variant_list[:k]:  # the order rotates
                r = setup.run(v, args.steps)
                r["vectors_per_s"] = r["vectors"] / r["s"]
                r["repeat"] = rep
                samples[v].append(r)
            print(
                f"batch {batch}, repeat {rep + 1}/{args.repeats}: "
                + ", ".join(f"{v} {samples[v][-1]['vectors_per_s']:,.0f}" for v in args.variant_list)
                + f" vectors/s (load {load1():.2f})",
                flush=True,
            )
        entry: dict = {"samples": samples, "median_vectors_per_s": {}, "phases_us_per_step": {}}
        for v, rs in samples.items():
            entry["median_vectors_per_s"][v] = round(statistics.median(r["vectors_per_s"] for r in rs), 1)
            if rs and "phases_s" in rs[0]:
                steps_total = args.steps  # every sample has args.steps steps
                entry["phases_us_per_step"][v] = {
                    k: round(statistics.median(per_step_us(r["phases_s"], steps_total)[k] for r in rs), 1)
                    for k in rs[0]["phases_s"]
                }
        if "native" in samples and "torch-nn" in samples:
            ratios = [
                n["vectors_per_s"] / t["vectors_per_s"]
                for n, t in zip(samples["native"], samples["torch-nn"], strict=True)
            ]
            entry["ratio_per_repeat"] = [round(r, 3) for r in ratios]
            entry["ratio"] = round(statistics.median(ratios), 3)
        if args.profile_steps:
            entry["profile"] = profile_fb(setup, args.profile_steps)
        results[str(batch)] = entry
    load_after = load1()

    print_tables(results, args)
    goals = []
    for batch, entry in results.items():
        g = {"goal": f"native step >= {GOAL}x torch.nn vectors/s at batch {batch}", "batch": int(batch)}
        if "ratio" not in entry:
            g.update(result="n/a", detail="needs the native and torch-nn variants")
        else:
            med = entry["median_vectors_per_s"]
            g.update(
                result="PASS" if entry["ratio"] >= GOAL else "FAIL",
                ratio=entry["ratio"],
                detail=f"{entry['ratio']:.2f}x (median of per-repeat ratios; native {med['native']:,.0f} vs "
                f"torch-nn {med['torch-nn']:,.0f} vectors/s)",
            )
        goals.append(g)
    print()
    for g in goals:
        print(f"[{g['result']}] {g['goal']}: {g.get('detail', '')}")
    print(f"\n1-minute load average before {load_before:.2f}, after {load_after:.2f}")
    doc = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "load1_before": load_before,
        "load1_after": load_after,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "settings": {
            "model": args.model,
            "batches": args.batch_list,
            "steps": args.steps,
            "repeats": args.repeats,
            "variants": args.variant_list,
            "profile_steps": args.profile_steps,
            "seed": args.seed,
            "inner_order": inner_order,
            "demo_hyper": dict(HYPER),
        },
        "results": results,
        "goals": goals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return 0


def print_tables(results: dict, args) -> None:
    print(
        f"\nvectors/s, medians of {args.repeats} interleaved samples of {args.steps} steps (1 torch thread)\n"
    )
    head = ["variant", *(f"batch {b}" for b in results)]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(results))
    for v in args.variant_list:
        cells = [f"{results[b]['median_vectors_per_s'][v]:,.0f}" for b in results]
        print(f"| {v} | " + " | ".join(cells) + " |")
    if all("ratio" in e for e in results.values()):
        print(
            "| **native / torch-nn** | "
            + " | ".join(f"**{e['ratio']:.2f}x**" for e in results.values())
            + " |"
        )
    for b, e in results.items():
        ph = e["phases_us_per_step"]
        if "native-phases" not in ph:
            continue
        nat, tor = ph["native-phases"], ph.get("torch-nn-phases", {})
        print(f"\nbatch {b}: microseconds per step (medians), native phases against the torch.nn loop's\n")
        print("| phase | native | torch.nn | native - torch.nn |")
        print("|---|---:|---:|---:|")
        pairs = [("batch", "batch"), ("forward", "forward"), ("backward", "backward"), ("inner", "optimizer"),
                 ("proof", None), ("round", None), ("other", "other")]  # fmt: skip
        for n_key, t_key in pairs:
            a = nat.get(n_key)
            t = tor.get(t_key) if t_key else 0.0
            name = n_key if t_key in (None, n_key) else f"{n_key} / {t_key}"
            if n_key == "round":
                name = "round (p0, first and last checkpoint, change), per step"
            print(f"| {name} | {a:,.0f} | {'-' if t is None else f'{t:,.0f}'} | {a - (t or 0):+,.0f} |")
        ta, tt = sum(nat.values()), sum(tor.values())
        print(f"| **total** | **{ta:,.0f}** | **{tt:,.0f}** | **{ta - tt:+,.0f}** |")
        prof = e.get("profile")
        if prof:
            print(f"\nbatch {b}: forward + backward under torch.profiler, self CPU µs per step by category\n")
            cats = sorted(
                set(prof["fb-native"]["categories_us_per_step"])
                | set(prof["fb-torch-nn"]["categories_us_per_step"])
            )
            print("| category | fb-native | fb-torch-nn |")
            print("|---|---:|---:|")
            for c in cats:
                a = prof["fb-native"]["categories_us_per_step"].get(c, 0.0)
                t = prof["fb-torch-nn"]["categories_us_per_step"].get(c, 0.0)
                print(f"| {c} | {a:,.0f} | {t:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
