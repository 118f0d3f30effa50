"""mlitb's own WebAssembly kernels for TF.js wasm (engine/wasm_kernels.js, built from
mlitb/web/wasm_kernels.c): the convolution gradients and max-pool's gradient against
PyTorch in float64, over paddings (none, symmetric, uneven, wider than the filter),
strides (a strided convolution's input gradient is a kernel of its own), channel counts
that are and are not multiples of 4, windows of only negative values and ties; and the
committed module is the build of its C source.

The golden-vector tests (test_tfjs_golden.py, test_backend_golden.py) hold whole models
to PyTorch through the same kernels; these reach the shapes those models never make.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from conftest import ROOT, run_node

pytestmark = pytest.mark.node
SCRIPT = ROOT / "tests" / "js" / "wasm_kernels_check.js"


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float32)


# (N, H, W, C, KH, KW, F, stride, pad): pad is a number (every side) or (top, bottom, left, right)
CONVS = [
    (2, 9, 8, 2, 3, 3, 3, 1, 0),
    (2, 9, 8, 2, 3, 3, 3, 1, 1),
    (32, 28, 28, 1, 5, 5, 8, 1, 2),  # the paper's MNIST net, first layer
    (32, 14, 14, 8, 5, 5, 16, 1, 2),  # and second
    (3, 9, 9, 2, 3, 3, 5, 2, 1),
    (2, 10, 11, 3, 4, 4, 3, 3, 2),
    (2, 7, 7, 5, 1, 1, 6, 1, 0),
    (2, 12, 12, 4, 2, 3, 7, 2, (1, 0, 0, 2)),
    (2, 8, 8, 3, 3, 3, 4, 2, (5, 1, 0, 3)),  # wider than the filter at the top
    (2, 5, 5, 2, 3, 3, 4, 1, 4),
    (4, 8, 8, 16, 3, 3, 16, 2, 1),
    (1, 6, 6, 1, 3, 3, 1, 1, 0),
    (2, 10, 10, 3, 3, 3, 5, 2, 0),  # stride 2: the last row and column in no window
    (2, 8, 8, 6, 1, 1, 5, 2, 0),  # a residual block's 1x1 projection, stride 2
    (32, 28, 28, 16, 3, 3, 24, 2, 1),  # the fashion net's first stride-2 layer
]


@pytest.mark.parametrize("pool", [1, 2], ids=["ours on one thread", "XNNPACK's on a pool"])
def test_conv_gradients_equal_pytorch(rng, pool):
    """Both filter-gradient kernels: ours (one thread) and the dilated convolution (a pool)."""
    cases, refs = [], []
    for N, H, W, C, KH, KW, F, s, pad in CONVS:
        t, b, left, right = (pad,) * 4 if isinstance(pad, int) else pad
        x = rng.standard_normal((N, H, W, C)).astype(np.float32)
        w = rng.standard_normal((KH, KW, C, F)).astype(np.float32)
        xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
        wt = torch.tensor(w, dtype=torch.float64).permute(3, 2, 0, 1).requires_grad_()
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (left, right, t, b)), wt, stride=s)
        r = rng.standard_normal(y.numel()).astype(np.float32)
        rt = torch.tensor(r, dtype=torch.float64).reshape(y.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2)
        (y * rt).sum().backward()
        refs.append((xt.grad.permute(0, 2, 3, 1).numpy(), wt.grad.permute(2, 3, 1, 0).numpy(),
                     list(y.permute(0, 2, 3, 1).shape)))  # fmt: skip
        tf_pad = [[0, 0], [t, b], [left, right], [0, 0]]
        cases.append({"op": "conv", "x": b64(x), "xShape": list(x.shape), "w": b64(w),
                      "wShape": list(w.shape), "r": b64(r), "stride": s, "pad": tf_pad})  # fmt: skip
    out = run_node(SCRIPT, {"cases": cases, "pool": pool})
    assert out["tensors"] == 0, "the kernels left tensors behind"
    for case, got, (dx, dw, shape) in zip(CONVS, out["results"], refs, strict=True):
        assert got["shape"] == shape, case
        for name, ref, mine in (("dx", dx, f32(got["dx"])), ("dw", dw, f32(got["dw"]))):
            err = np.abs(mine - ref.ravel()).max() / np.abs(ref).max()
            # ours sums each image's positions, then the images; the dilated convolution
            # sums all 25,088 of the MNIST net's first layer in one float32 (2.6e-6 seen)
            limit = 2e-6 if pool == 1 or name == "dx" else 1e-5
            assert err < limit, f"{case} {name}: {err:.1e} off float64"


# (N, H, W, C, size, stride, values): windows overlapping, not, all negative, tied
POOLS = [
    (2, 8, 8, 4, 2, 2, "normal"),
    (32, 28, 28, 8, 2, 2, "negative"),  # the MNIST net's first pool, after a negative layer
    (2, 9, 9, 3, 3, 2, "negative"),
    (2, 7, 7, 5, 3, 3, "normal"),
    (2, 9, 9, 8, 3, 2, "ties"),
    (2, 6, 6, 3, 2, 1, "ties"),
]


def test_max_pool_gradient_is_pytorchs_first_maximum(rng):
    cases, refs = [], []
    for N, H, W, C, k, s, values in POOLS:
        x = rng.standard_normal((N, H, W, C)).astype(np.float32)
        if values == "negative":
            x = -np.abs(x) - 0.01
        elif values == "ties":
            x = np.round(x).astype(np.float32)  # many equal maxima in a window
        xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
        y = torch.nn.functional.max_pool2d(xt, k, s)
        r = rng.standard_normal(y.numel()).astype(np.float32)
        rt = torch.tensor(r, dtype=torch.float64).reshape(y.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2)
        (y * rt).sum().backward()
        refs.append(xt.grad.permute(0, 2, 3, 1).numpy())
        case = {"op": "pool", "x": b64(x), "xShape": list(x.shape), "r": b64(r), "size": k, "stride": s}
        cases.append(case)
    out = run_node(SCRIPT, {"cases": cases})
    for case, got, ref in zip(POOLS, out["results"], refs, strict=True):
        np.testing.assert_allclose(f32(got["dx"]), ref.ravel(), rtol=1e-6, atol=1e-6, err_msg=str(case))


def test_the_committed_module_is_the_build_of_its_source():
    """engine/wasm_kernels_bin.js is what `python -m mlitb.web.wasm_build` makes of
    mlitb/web/wasm_kernels.c with the pinned zig (a dev extra): nobody ships a binary
    that is not its source."""
    from mlitb.web import wasm_build

    assert wasm_build.TARGET.read_text() == wasm_build.render(wasm_build.compile_module()), (
        "stale engine/wasm_kernels_bin.js: run python -m mlitb.web.wasm_build"
    )
