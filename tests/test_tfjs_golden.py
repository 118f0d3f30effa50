"""One model, two executors: the browser engine (TF.js) against the PyTorch executor.

Golden vectors - spec, parameters, a batch, the expected summed loss, flat gradient and
predictions - come from `TorchNet` for every layer type and several strides and
paddings; the browser engine (mlitb/web/static/engine/tfjs_engine.js) recomputes them
in node with TensorFlow.js' cpu backend and must agree to 1e-4 relative.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from conftest import ROOT, run_node
from test_modern_models_e2e import RESNET

from mlitb.model.layout import init_params
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet

pytestmark = pytest.mark.node
SCRIPT = ROOT / "tests" / "js" / "tfjs_golden.js"
RTOL = 1e-4


def inp(w: int, h: int, d: int) -> dict:
    return {"type": "input", "out_sx": w, "out_sy": h, "out_depth": d}


HEADS = {
    "softmax": {"type": "softmax", "num_classes": 4},
    "svm": {"type": "svm", "num_classes": 4},
    "regression": {"type": "regression", "num_neurons": 3},
}

CASES: dict[str, list[dict]] = {
    # conv: strides, paddings, non-square filters and inputs
    **{
        f"conv sx{sx} sy{sy} s{st} p{pad}": [
            inp(9, 8, 2),
            {"type": "conv", "sx": sx, "sy": sy, "filters": 3, "stride": st, "pad": pad},
            HEADS["softmax"],
        ]
        for sx, sy, st, pad in [
            (3, 3, 1, 0),
            (3, 3, 1, 1),
            (5, 5, 1, 2),
            (3, 3, 2, 1),
            (2, 3, 2, 0),
            (4, 4, 3, 2),
            (1, 1, 1, 0),
        ]
    },
    # pool: windows, strides, padding (padded cells never win the max)
    **{
        f"pool sx{sx} s{st} p{pad}": [
            inp(9, 9, 2),
            {"type": "conv", "sx": 3, "filters": 2, "stride": 1, "pad": 1, "activation": "tanh"},
            {"type": "pool", "sx": sx, "stride": st, "pad": pad},
            HEADS["softmax"],
        ]
        for sx, st, pad in [(2, 2, 0), (3, 3, 0), (3, 2, 1), (2, 1, 0), (3, 1, 1)]
    },
    **{
        f"activation {act}": [
            inp(4, 3, 2),
            {"type": "fc", "num_neurons": 6, "activation": act},
            HEADS["softmax"],
        ]
        for act in ("relu", "sigmoid", "tanh")
    },
    **{
        f"maxout g{g}": [
            inp(3, 3, 2),
            {"type": "fc", "num_neurons": n, "activation": "maxout", "group_size": g},
            HEADS["softmax"],
        ]
        for g, n in [(2, 8), (3, 9), (2, 7)]
    },
    "maxout conv volume": [
        inp(5, 5, 1),
        {"type": "conv", "sx": 3, "filters": 6, "pad": 1, "activation": "maxout", "group_size": 3},
        HEADS["svm"],
    ],
    **{
        f"lrn n{n}": [
            inp(5, 4, 1),
            {"type": "conv", "sx": 3, "filters": 6, "pad": 1, "activation": "relu"},
            {"type": "lrn", "k": 1.0, "n": n, "alpha": 0.5, "beta": 0.75},
            HEADS["softmax"],
        ]
        for n in (3, 5)
    },
    "dropout (test mode)": [
        inp(4, 4, 1),
        {"type": "fc", "num_neurons": 8, "activation": "relu", "drop_prob": 0.3},
        HEADS["softmax"],
    ],
    # train mode: the seeded masks (mlitb.model.dropout) of DROPOUT_TRAIN's (seed, step)
    "dropout (train mode)": [
        inp(4, 4, 1),
        {"type": "fc", "num_neurons": 8, "activation": "relu", "drop_prob": 0.3},
        HEADS["softmax"],
    ],
    "dropout conv volume (train mode)": [
        inp(5, 4, 3),
        {"type": "conv", "sx": 3, "filters": 4, "pad": 1, "activation": "relu"},
        {"type": "dropout", "drop_prob": 0.4},
        {"type": "conv", "sx": 2, "filters": 3, "activation": "tanh", "drop_prob": 0.5},
        {"type": "fc", "num_neurons": 6, "drop_prob": 0.2},
        HEADS["svm"],
    ],
    **{
        f"head {k}": [inp(3, 2, 3), {"type": "fc", "num_neurons": 5, "activation": "tanh"}, v]
        for k, v in HEADS.items()
    },
    "paper MNIST net": [
        inp(28, 28, 1),
        {"type": "conv", "sx": 5, "filters": 8, "stride": 1, "pad": 2, "activation": "relu"},
        {"type": "pool", "sx": 2, "stride": 2},
        {"type": "conv", "sx": 5, "filters": 16, "stride": 1, "pad": 2, "activation": "relu"},
        {"type": "pool", "sx": 3, "stride": 3},
        {"type": "softmax", "num_classes": 10},
    ],
    "deep mixed": [
        inp(12, 10, 3),
        {"type": "conv", "sx": 3, "filters": 4, "stride": 2, "pad": 1, "activation": "relu"},
        {"type": "pool", "sx": 2, "stride": 2, "pad": 1},
        {"type": "lrn", "k": 2.0, "n": 3, "alpha": 1e-2, "beta": 0.75},
        {"type": "fc", "num_neurons": 6, "activation": "maxout", "group_size": 2},
        {"type": "fc", "num_neurons": 5, "activation": "sigmoid"},
        HEADS["svm"],
    ],
    # the layers of today's models (issue 27); "(train mode)": batch statistics and the
    # running statistics' pull (batchnorm), else prediction mode
    **{
        f"batchnorm conv residual {mode}": [
            inp(6, 6, 2),
            {"type": "conv", "sx": 3, "filters": 4, "pad": 1},
            {"type": "batchnorm", "activation": "relu"},
            {
                "type": "residual",
                "layers": [
                    {"type": "conv", "sx": 3, "filters": 6, "pad": 1, "stride": 2},
                    {"type": "batchnorm", "activation": "gelu"},
                    {"type": "conv", "sx": 3, "filters": 6, "pad": 1},
                ],
            },
            {"type": "residual", "layers": [{"type": "batchnorm"}, {"type": "conv", "sx": 1, "filters": 6}]},
            {"type": "globalavgpool"},
            HEADS["softmax"],
        ]
        for mode in ("(test mode)", "(train mode)")
    },
    "biases a batchnorm removes, through pooling and a block's sum (train mode)": [
        inp(6, 6, 1),
        {"type": "conv", "sx": 3, "filters": 4},
        {"type": "pool", "sx": 2},
        {"type": "batchnorm"},
        {
            "type": "residual",
            "layers": [
                {"type": "conv", "sx": 1, "filters": 5, "stride": 2},
                {"type": "relu"},
                {"type": "conv", "sx": 1, "filters": 5},
            ],
        },
        {"type": "batchnorm"},
        {"type": "batchnorm"},
        HEADS["softmax"],
    ],
    "layernorm gelu fc": [
        inp(3, 3, 4),
        {"type": "layernorm"},
        {"type": "fc", "num_neurons": 7, "activation": "gelu"},
        HEADS["svm"],
    ],
    # depths that are not multiples of 4 (wasm's own kernels go 4 lanes at a time, then the rest)
    "layernorm batchnorm gelu over 7 and 5 channels (train mode)": [
        inp(3, 2, 7),
        {"type": "layernorm"},
        {"type": "conv", "sx": 1, "filters": 5, "activation": "gelu"},
        {"type": "batchnorm"},
        {"type": "layernorm"},
        HEADS["softmax"],
    ],
    **{
        f"char transformer {kind}": [
            inp(10, 1, 1),
            {"type": "embedding", "vocab": 13, "dim": 8},
            {"type": "posembedding"},
            {"type": "transformer", "heads": heads, "causal": causal},
            {"type": "layernorm"},
            {"type": "seqsoftmax", "num_classes": 13},
        ]
        for kind, heads, causal in [("causal 2 heads", 2, True), ("bidirectional 1 head", 1, False)]
    },
    "attention over an image with dropout (train mode)": [
        inp(3, 2, 4),
        {"type": "attention", "heads": 4, "causal": False},
        {"type": "residual", "layers": [{"type": "conv", "sx": 1, "filters": 4, "drop_prob": 0.3}]},
        HEADS["softmax"],
    ],
}


DROPOUT_TRAIN = {"dropout (train mode)": (12345, 3), "dropout conv volume (train mode)": (0xFFFFFFFF, 70000),
                 "attention over an image with dropout (train mode)": (7, 9)}  # fmt: skip


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode()


def f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


def make_case(name: str, defs: list[dict], seed: int) -> tuple[dict, dict]:
    spec = Spec.from_json(defs)
    rng = np.random.default_rng(seed)
    params = init_params(spec, seed)
    params += rng.normal(0, 0.05, params.shape).astype(np.float32)  # non-zero biases too
    n = 5
    x = rng.random((n, *spec.input_shape), dtype=np.float32)
    if spec.layers[1].type == "embedding":  # token ids
        x = rng.integers(0, spec.layers[1].vocab, x.shape).astype(np.float32)
    if spec.loss == "regression":
        y = rng.normal(size=(n, spec.num_outputs)).astype(np.float32)
        y_json = y.ravel().tolist()
    elif spec.loss == "seqsoftmax":
        y = rng.integers(0, spec.num_outputs, (n, spec.positions))
        y_json = y.ravel().tolist()
    else:
        y = rng.integers(0, spec.num_outputs, n)
        y_json = y.tolist()
    net = TorchNet(spec, params)
    seeded = DROPOUT_TRAIN.get(name)
    train = bool(seeded) or name.endswith("(train mode)")
    if seeded:
        net.dropout_at(*seeded)
    grad, _, loss = net.gradient(x, y, train=train)
    expected = {"loss": loss, "grad": grad, "predict": net.predict(x).ravel()}
    case = {
        "layers": spec.to_json(),
        "params": b64(params),
        "x": b64(x),
        "y": y_json,
        "n": n,
        "train": train,
    }
    if seeded:
        case["dropout"] = list(seeded)
    return case, expected


@pytest.fixture(scope="module", params=["cpu", "wasm"])
def results(request) -> dict[str, tuple[dict, dict]]:
    """cpu: TF.js' reference kernels; wasm: with mlitb's composed conv gradient kernels."""
    made = {name: make_case(name, defs, i) for i, (name, defs) in enumerate(CASES.items())}
    out = run_node(SCRIPT, {"backend": request.param, "cases": [c for c, _ in made.values()]})["results"]
    return {name: (expected, got) for (name, (_, expected)), got in zip(made.items(), out, strict=True)}


def close(got: np.ndarray, want: np.ndarray) -> float:
    """Largest error relative to the largest magnitude of `want`."""
    scale = max(float(np.abs(want).max()), 1e-6)
    return float(np.abs(got - want).max()) / scale


@pytest.mark.parametrize("name", list(CASES))
def test_tfjs_engine_matches_pytorch(results, name):
    expected, got = results[name]
    assert "error" not in got, got.get("error")
    assert abs(got["loss"] - expected["loss"]) <= RTOL * max(1.0, abs(expected["loss"])), (
        got["loss"],
        expected["loss"],
    )
    grad = f32(got["grad"])
    assert grad.shape == expected["grad"].shape
    assert close(grad, expected["grad"]) <= RTOL, close(grad, expected["grad"])
    assert close(f32(got["predict"]), expected["predict"]) <= RTOL
    assert got["tensors"] <= 1, "the engine leaks tensors"


def test_unsupported_layer_is_refused_with_its_index():
    layers = [{"layer_type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 1}, {"layer_type": "quux"}]
    case = {"layers": layers, "params": "", "x": "", "y": [], "n": 0, "train": False}
    out = run_node(SCRIPT, {"cases": [case]})["results"][0]
    assert "layer 1" in out["error"] and "quux" in out["error"]


MASKS = [  # (seed, step, layer, count, drop_prob)
    (0, 0, 0, 257, 0.5),
    (1, 2, 3, 1000, 0.3),
    (0xFFFFFFFF, 0xFFFFFFFF, 40, 4096, 0.9),
    (2**31, 123456, 7, 999, 0.01),
    (987654321, 5, 1, 5000, 0.75),
]


def test_dropout_masks_are_pytorchs_bit_for_bit():
    """MlitbTfjsEngine.dropoutMask and mlitb.model.dropout (which the PyTorch executor uses)
    draw the same masks: a dropout net's round replays exactly."""
    from mlitb.model import dropout

    code = """
const E = require("./mlitb/web/static/engine/tfjs_engine.js");
let input = "";
process.stdin.on("data", (c) => (input += c)).on("end", () => {
  const out = JSON.parse(input).map(([s, t, l, n, p]) => Array.from(E.dropoutMask(s, t, l, n, p)).join(""));
  process.stdout.write(JSON.stringify(out));
});"""
    got = run_node(code, MASKS)
    for (seed, step, layer, count, p), js in zip(MASKS, got, strict=True):
        want = "".join("1" if k else "0" for k in dropout.keep_mask(seed, step, layer, (count,), p))
        assert js == want, (seed, step, layer)
        assert abs(want.count("0") / count - p) < 4 * (p * (1 - p) / count) ** 0.5 + 1e-3
    hashes = [0, 1, 2, 0xFFFFFFFF, 123456789]
    js = run_node("process.stdout.write(JSON.stringify([0, 1, 2, 4294967295, 123456789].map("
                  "require('./mlitb/web/static/engine/tfjs_engine.js').lowbias32)))", None)  # fmt: skip
    assert js == [dropout.lowbias32(h) for h in hashes]


def test_token_ids_outside_the_vocabulary_are_an_error_not_a_zero_row():
    """TF.js's one-hot gives an all-zero row for an id past the vocabulary; the engine
    refuses such ids as PyTorch's embedding does."""
    spec = Spec.from_json(CASES["char transformer causal 2 heads"])
    x = np.zeros((1, *spec.input_shape), np.float32)
    x.ravel()[3] = 13  # vocab 13: ids 0..12
    case = {"layers": spec.to_json(), "params": b64(init_params(spec)), "x": b64(x),
            "y": [0] * spec.positions, "n": 1, "train": False}  # fmt: skip
    out = run_node(SCRIPT, {"cases": [case]})["results"][0]
    assert "token ids must be integers in [0, 13)" in out.get("error", ""), out


# the residual batch-norm net of tests/test_modern_models_e2e.py, at a volunteer's batch size
BN_NET = RESNET


def test_wasm_sums_a_whole_batchs_statistics_in_stages():
    """TF.js wasm sums a reduction one float32 after another: batch norm's statistics and
    the per-channel gradients (biases, gains) over a batch of 32 at 14 x 14 (6,272 terms
    in one sum) came out 3e-5 to 1e-4 of the largest off PyTorch's in float64 (TF.js cpu,
    which sums in doubles: 1e-7), enough to send a ReLU input near 0 the other way and put
    an honest tab's first Adam step 1.5 % off its replay (7 of 100 seeds;
    mlitb.master.trust.ties). The engine sums them in two stages (each example, then the
    batch): measured 1.1e-6 to 3.2e-6 over 20 seeds."""
    from mlitb.data import mnist

    spec = Spec.from_json(BN_NET)
    images, labels = mnist.load("train", limit=96)
    cases, want = [], []
    for seed in range(3):
        params = init_params(spec, seed)
        x = images[32 * seed : 32 * seed + 32].reshape(32, 28, 28, 1).astype(np.float32) / np.float32(255)
        y = labels[32 * seed : 32 * seed + 32].astype(np.int64)
        exact = TorchNet(spec, params.astype(np.float64), dtype=torch.float64)
        exact.loss(x, y).backward()
        want.append(exact.flat.grad.numpy())
        cases.append({"layers": spec.to_json(), "params": b64(params), "x": b64(x), "y": y.tolist(), "n": 32,
                      "train": True})  # fmt: skip
    got = run_node(SCRIPT, {"backend": "wasm", "cases": cases})["results"]
    errors = [close(f32(g["grad"]).astype(np.float64), w) for g, w in zip(got, want, strict=True)]
    assert max(errors) < 1e-5, errors
    print("wasm, batch of 32, residual batch-norm net: gradient off float64 by", errors)
