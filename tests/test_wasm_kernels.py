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


# (a's shape, b's shape, transpose a, transpose b): single products (XNNPACK after a
# transpose), batched ones (ours), one matrix shared by a batch, sizes not multiples of 4
MATMULS = [
    ((768, 128), (384, 128), False, True),  # charlm's qkv projection
    ((768, 384), (768, 128), True, False),  # and its filter gradient
    ((7, 5), (5, 3), False, False),
    ((5, 7), (3, 5), True, True),
    ((1, 6, 9), (1, 9, 4), False, False),
    ((12, 4, 64, 32), (12, 4, 64, 32), False, True),  # attention's scores
    ((12, 4, 64, 64), (12, 4, 64, 32), True, False),  # and a value's gradient
    ((3, 2, 7, 5), (3, 2, 7, 6), True, False),
    ((4, 9, 3), (4, 5, 3), False, True),
    ((5, 6, 7), (7, 10), False, False),  # one b for every a
    ((6, 7), (3, 7, 5), False, False),  # one a for every b
    ((2, 5, 7), (2, 5, 11), True, False),  # M = 7, N = 11: rows and columns past the blocks
    ((2, 9, 1), (2, 9, 1), True, False),  # a 1 x 1 result
]


@pytest.mark.parametrize("pool", [1, 2], ids=["one thread", "a pool"])
def test_products_of_matrices_equal_pytorch(rng, pool):
    """BatchMatMul on wasm: forward and both gradients (which are products transposed
    again) against PyTorch in float64."""
    cases, refs = [], []
    for sa, sb, ta, tb in MATMULS:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        y = (at.transpose(-1, -2) if ta else at) @ (bt.transpose(-1, -2) if tb else bt)
        r = rng.standard_normal(y.numel()).astype(np.float32)
        (y * torch.tensor(r, dtype=torch.float64).reshape(y.shape)).sum().backward()
        refs.append((y.detach().numpy(), at.grad.numpy(), bt.grad.numpy()))
        # TF.js has no gradient for a broadcast product (core's, whatever the kernel): y only
        grad = len(sa) == len(sb)
        cases.append({"op": "matmul", "x": b64(a), "xShape": list(sa), "w": b64(b), "wShape": list(sb),
                      "ta": ta, "tb": tb, "r": b64(r), "grad": grad})  # fmt: skip
    out = run_node(SCRIPT, {"cases": cases, "pool": pool})
    assert out["tensors"] == 0, "the kernels left tensors behind"
    for case, got, (y, da, db) in zip(MATMULS, out["results"], refs, strict=True):
        assert got["shape"] == list(y.shape), case
        pairs = [("y", y, got["y"])] + ([("da", da, got["dx"]), ("db", db, got["dw"])] if "dx" in got else [])
        assert ("dx" in got) == (len(case[0]) == len(case[1])), case
        for name, ref, mine in pairs:
            err = np.abs(f32(mine) - ref.ravel()).max() / np.abs(ref).max()
            assert err < 2e-6, f"{case} {name}: {err:.1e} off float64"


def test_gelu_and_its_gradient_are_exact_to_float32(rng):
    """The exact (erf) GELU on wasm, our own erfc and exp: within a few float32 ulps of
    float64 from the far left tail (where 1 + erf cancels) through 0 to large values."""
    x = np.concatenate([np.linspace(-14, 14, 4001), rng.standard_normal(3000) * 3, [0.0, -0.0, 1e-30, -1e-8]])
    x = x.astype(np.float32)
    r = rng.standard_normal(x.size).astype(np.float32)
    case = {"op": "gelu", "x": b64(x), "xShape": [x.size], "r": b64(r)}
    got = run_node(SCRIPT, {"cases": [case, {**case, "x": b64(x[:7]), "xShape": [7]}]})  # 7: not 4s
    assert got["tensors"] == 0
    # float64 through erfc (torch's gelu, 0.5 x (1 + erf), cancels to 0 below x = -8.5
    # even in float64; in float32 below -5.9)
    xt = torch.tensor(x, dtype=torch.float64)
    cdf = 0.5 * torch.special.erfc(-xt / np.sqrt(2))
    pdf = torch.exp(-0.5 * xt * xt) / np.sqrt(2 * np.pi)
    rt = torch.tensor(r, dtype=torch.float64)
    y, dx = (xt * cdf).numpy(), ((cdf + xt * pdf) * rt).numpy()
    # the scale of each: y itself; dx's two terms (they cancel near x = -0.75, where the
    # gradient crosses 0); floored at 1e-9 (x < -6: there the exponent -x^2/2 alone is a float32
    # with ~1e-6 of relative rounding; PyTorch's float32 GELU gives 0 from x = -5.9)
    scales = (np.abs(y), ((cdf + (xt * pdf).abs()) * rt.abs()).numpy())
    for name, ref, mine, scale in (("y", y, f32(got["results"][0]["y"]), scales[0]),
                                   ("dx", dx, f32(got["results"][0]["dx"]), scales[1])):  # fmt: skip
        err = np.abs(mine - ref) / np.maximum(scale, 1e-9)
        assert (err < 4e-6).all(), f"{name}: x={x[err >= 4e-6][:5]} off by {err[err >= 4e-6][:5]}"
    np.testing.assert_array_equal(f32(got["results"][1]["y"]), f32(got["results"][0]["y"])[:7])


SLICES = [  # (shape, dtype, begin, size): contiguous runs and not, every rank
    ((818,), "float32", [17], [500]),
    ((6, 7), "float32", [1, 2], [4, 3]),
    ((6, 7), "int32", [2, 0], [3, 7]),
    ((3, 4, 5), "float32", [0, 1, 2], [3, 2, 3]),
    ((2, 3, 4, 5), "bool", [1, 0, 1, 0], [1, 3, 2, 5]),
    ((2, 3, 4, 5, 2), "float32", [0, 1, 1, 2, 0], [2, 2, 3, 2, 2]),
    ((4, 4), "float32", [1, 1], [0, 2]),
]
SPLITS = [((818,), "float32", [100, 18, 700], 0), ((768, 384), "float32", [128, 128, 128], 1),
          ((6, 5, 4), "int32", [2, 4], 0), ((3, 8, 2), "float32", [1, 5, 2], 1)]  # fmt: skip


def test_slices_and_splits_are_numpys(rng):
    """Slice and SplitV on wasm read their input in place (TF.js's copy the whole of it)."""
    cases, refs = [], []
    for shape, dtype, begin, size in SLICES:
        x = rng.integers(-3, 4, shape).astype(np.float32)
        cases.append({"op": "slice", "x": b64(x), "xShape": list(shape), "dtype": dtype, "begin": begin,
                      "size": size, "r": b64(x)})  # fmt: skip
        ref = x.astype(dtype)[tuple(slice(b, b + s) for b, s in zip(begin, size, strict=True))]
        refs.append([ref])
    for shape, dtype, sizes, axis in SPLITS:
        x = rng.integers(-3, 4, shape).astype(np.float32)
        cases.append({"op": "split", "x": b64(x), "xShape": list(shape), "dtype": dtype, "sizes": sizes,
                      "axis": axis, "r": b64(x)})  # fmt: skip
        refs.append(np.split(x.astype(dtype), np.cumsum(sizes)[:-1], axis=axis))
    out = run_node(SCRIPT, {"cases": cases})
    assert out["tensors"] == 0, "the kernels left tensors behind"
    for case, got, ref in zip(SLICES + SPLITS, out["results"], refs, strict=True):
        assert got["shapes"] == [list(p.shape) for p in ref], case
        assert got["dtypes"] == [case[1]] * len(ref), case
        for mine, part in zip(got["parts"], ref, strict=True):
            np.testing.assert_array_equal(f32(mine), part.astype(np.float32).ravel(), err_msg=str(case))


def test_the_committed_module_is_the_build_of_its_source():
    """engine/wasm_kernels_bin.js is what `python -m mlitb.web.wasm_build` makes of
    mlitb/web/wasm_kernels.c with the pinned zig (a dev extra): nobody ships a binary
    that is not its source."""
    from mlitb.web import wasm_build

    assert wasm_build.TARGET.read_text() == wasm_build.render(wasm_build.compile_module()), (
        "stale engine/wasm_kernels_bin.js: run python -m mlitb.web.wasm_build"
    )
