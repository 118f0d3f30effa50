"""Tensor codecs of protocol version 2 (mlitb/protocol/codecs.py and its JavaScript twin
mlitb/web/static/engine/codecs.js).

Python-only tests check sizes, round trips, refusals, error feedback and the ParamView
bound. Golden tests feed Python's float32 inputs and payloads to the JavaScript codecs in
node (tests/js/codecs_golden.js): JavaScript must write the same bytes and decode to the
same float32 bits, including float16 ties, subnormals and values near 65504.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from conftest import ROOT, run_node

from mlitb.protocol import codecs
from mlitb.protocol.codecs import (
    BLOCK,
    DTYPES,
    FLOAT16,
    FLOAT32,
    INT8,
    CodecError,
    ErrorFeedback,
    ParamView,
    decode,
    dtype_name,
    encode,
    payload_size,
)

SCRIPT = ROOT / "tests" / "js" / "codecs_golden.js"
ALL = (FLOAT32, FLOAT16, INT8)
SIZES = (0, 1, 2, 255, 256, 257, 511, 512, 1000)


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def b64(data: bytes | np.ndarray) -> str:
    raw = data.astype("<f4").tobytes() if isinstance(data, np.ndarray) else data
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def int8_scales(payload: bytes, n: int) -> np.ndarray:
    """(nblocks,) float32 scales of an int8 payload."""
    return np.frombuffer(payload, "<f4", count=-(-n // BLOCK)).astype(np.float32)


def per_value(scales: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(scales, BLOCK)[:n]


# --------------------------------------------------------------------------- golden vectors


def half_edges() -> np.ndarray:
    """Every tie between neighbouring finite halves, one float32 ulp either side, and the
    halves themselves (both signs): all of float16 rounding, subnormals included."""
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # 0 .. 65504
    nxt = np.append(h[1:], np.float32(65536))
    mid = ((h.astype(np.float64) + nxt) / 2).astype(np.float32)  # exact: 12 significant bits
    up = np.nextafter(mid, np.float32(np.inf))
    down = np.nextafter(mid, np.float32(0))
    x = np.concatenate([h, mid, up, down])
    return np.concatenate([x, -x])


def random_bit_patterns(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite float32 values with uniformly random bits: every binade, subnormals included."""
    u = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    return x[np.isfinite(x)]


def int8_ties(s: float) -> np.ndarray:
    """One block whose scale is exactly s (a power of two): maxabs = 127 s, and the other
    values (k + 0.5) s, exact ties for round-half-to-even."""
    k = np.arange(-127, 128, dtype=np.float64)  # 255 values
    x = np.concatenate([[127.0], k[:-1] + 0.5, [-126.5]]) * s
    return f32(x)


def golden_vectors() -> dict[str, np.ndarray]:
    """Finite float32 inputs (int8 takes them all)."""
    rng = np.random.default_rng(20240502)
    scales = 10.0 ** rng.uniform(-8, 4, 3000)
    zeros = rng.normal(size=1000)
    zeros[rng.random(1000) < 0.3] = 0.0
    zeros[rng.random(1000) < 0.1] = -0.0
    zero_block = rng.normal(size=3 * BLOCK + 17)
    zero_block[BLOCK : 2 * BLOCK] = 0.0
    big = [65503.0, 65504.0, 65505.0, 65519.0, 65519.996, 65520.0, 65536.0, 1e6, 3.4e38]
    tiny = np.arange(0, 300) * 2.0**-149  # float32 subnormals: int8 scales underflow
    return {
        "normal, scales 1e-8..1e4 per block": f32(
            np.concatenate([rng.normal(size=700) * s for s in (1e-8, 1e-5, 1e-2, 1.0, 1e2, 1e4)])
        ),
        "normal, scales 1e-8..1e4 per value": f32(rng.normal(size=3000) * scales),
        "exact zeros and -0": f32(zeros),
        "a block of zeros": f32(zero_block),
        "all zeros": np.zeros(300, np.float32),
        "int8 ties": np.concatenate([int8_ties(2.0**e) for e in (-3, 0, 7, -20, -126, -130)]),
        "float16 edges": half_edges(),
        "random bit patterns": random_bit_patterns(rng, 100_000),
        "near 65504 and above": f32(big + [-v for v in big] + [0.5] * 300),
        "float32 subnormals": f32(np.concatenate([tiny, -tiny, [1e-38, 1e-40, 2.0**-126]])),
        "n = 255": f32(rng.normal(size=255)),
        "n = 257": f32(rng.normal(size=257)),
        "n = 1": f32([3.7]),
        "n = 1, zero": f32([0.0]),
        "n = 0": np.zeros(0, np.float32),
    }


NON_FINITE = f32([np.nan, np.inf, -np.inf, 1.0, -np.nan, 70000.0, -2.5])


def golden_request() -> tuple[dict, dict]:
    """The node request and what Python expects of each part."""
    cases, expect_cases = [], []
    vectors = golden_vectors()
    for name, x in vectors.items():
        for dtype in ALL:
            payload = encode(x, dtype)
            cases.append({"dtype": dtype, "x": b64(x), "payload": b64(payload)})
            expect_cases.append((f"{name} / {dtype_name(dtype)}", payload, decode(payload, dtype, x.size)))
    for dtype in (FLOAT32, FLOAT16):  # int8 refuses non-finite values (errors below)
        payload = encode(NON_FINITE, dtype)
        cases.append({"dtype": dtype, "x": b64(NON_FINITE), "payload": b64(payload)})
        expect_cases.append((f"non-finite / {dtype_name(dtype)}", payload, decode(payload, dtype, 7)))

    rng = np.random.default_rng(7)
    feedback, expect_feedback = [], []
    for dtype in ALL:
        n = 600
        rounds = [f32(rng.normal(size=n) * 10.0 ** rng.uniform(-6, 2, n)) for _ in range(5)]
        ef = ErrorFeedback(n, dtype)
        expect_feedback.append([ef.encode(x) for x in rounds])
        feedback.append({"dtype": dtype, "n": n, "rounds": [b64(x) for x in rounds]})

    deltas, expect_deltas = [], []
    for dtype in ALL:
        params = f32(rng.normal(size=700))
        pv = ParamView()
        base = pv.full(params, 0)
        payloads, views = [], []
        for it in range(1, 11):
            params = f32(params + rng.normal(size=700) * 10.0 ** rng.uniform(-7, -1))
            _, payload = pv.delta(params, it, dtype)
            payloads.append(payload)
            views.append(pv.view.copy())
        deltas.append({"dtype": dtype, "base": b64(base), "payloads": [b64(p) for p in payloads]})
        expect_deltas.append(views)
    return (
        {"cases": cases, "feedback": feedback, "deltas": deltas},
        {"cases": expect_cases, "feedback": expect_feedback, "deltas": expect_deltas},
    )


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict]:
    request, expected = golden_request()
    return run_node(SCRIPT, request), expected


# --------------------------------------------------------------------------- golden tests


@pytest.mark.node
def test_js_encodes_the_same_bytes(golden) -> None:
    got, expected = golden
    assert len(got["cases"]) == len(expected["cases"])
    for result, (name, payload, _) in zip(got["cases"], expected["cases"], strict=True):
        js = unb64(result["payload"])
        assert len(js) == len(payload), name
        if js != payload:
            a, b = np.frombuffer(js, np.uint8), np.frombuffer(payload, np.uint8)
            i = int(np.flatnonzero(a != b)[0])
            pytest.fail(f"{name}: JS and Python payloads differ first at byte {i}: {a[i]} != {b[i]}")


@pytest.mark.node
def test_js_decodes_to_the_same_bits(golden) -> None:
    got, expected = golden
    for result, (name, _, decoded) in zip(got["cases"], expected["cases"], strict=True):
        for key in ("decoded", "decodedShifted"):
            js = np.frombuffer(unb64(result[key]), "<f4")
            assert js.size == decoded.size, name
            same = (bits(js) == bits(decoded)) | (np.isnan(js) & np.isnan(decoded))
            if not same.all():
                i = int(np.flatnonzero(~same)[0])
                pytest.fail(f"{name} ({key}): value {i} decodes to {js[i]!r} in JS, {decoded[i]!r} in Python")


@pytest.mark.node
def test_js_error_feedback_matches(golden) -> None:
    got, expected = golden
    for js_rounds, py_rounds in zip(got["feedback"], expected["feedback"], strict=True):
        assert [unb64(p) for p in js_rounds] == py_rounds


@pytest.mark.node
def test_js_apply_delta_reaches_the_view_bit_for_bit(golden) -> None:
    got, expected = golden
    for dtype, js_views, py_views in zip(ALL, got["deltas"], expected["deltas"], strict=True):
        for step, (js, py) in enumerate(zip(js_views, py_views, strict=True)):
            js = np.frombuffer(unb64(js), "<f4")
            assert np.array_equal(bits(js), bits(py)), f"{dtype_name(dtype)} step {step}"


@pytest.mark.node
def test_js_sizes_and_refusals() -> None:
    good = encode(f32(np.arange(300)), INT8)
    negative = bytearray(good)
    negative[4:8] = np.float32(-1.0).tobytes()
    errors = [
        ({"op": "decode", "dtype": INT8, "n": 300, "payload": b64(good[:-1])}, "must be 308 bytes, got 307"),
        ({"op": "decode", "dtype": INT8, "n": 300, "payload": b64(good + b"\0")}, "got 309"),
        ({"op": "decode", "dtype": FLOAT16, "n": 3, "payload": b64(b"\0" * 5)}, "must be 6 bytes, got 5"),
        ({"op": "decode", "dtype": INT8, "n": 300, "payload": b64(bytes(negative))}, "block 1 has scale -1"),
    ]
    for bad in (np.nan, np.inf, -0.0):
        p = bytearray(good)
        p[0:4] = np.float32(bad).tobytes()
        errors.append(({"op": "decode", "dtype": INT8, "n": 300, "payload": b64(bytes(p))}, "block 0"))
    errors += [
        ({"op": "decode", "dtype": 4, "n": 0, "payload": ""}, "unknown dtype 4"),
        ({"op": "payloadSize", "dtype": 0, "n": 1}, "unknown dtype 0"),
        ({"op": "payloadSize", "dtype": 1, "n": -1}, "integer >= 0"),
        ({"op": "encode", "dtype": INT8, "x": b64(NON_FINITE)}, "non-finite"),
        ({"op": "encode", "dtype": INT8, "x": b64(f32([1.0] * 300 + [-np.inf]))}, "value 300"),
        ({"op": "decode", "dtype": INT8, "n": 300, "payload": b64(good)}, None),
    ]
    sizes = [[dtype, n] for dtype in ALL for n in SIZES]
    got = run_node(SCRIPT, {"errors": [e for e, _ in errors], "sizes": sizes})
    for (request, want), message in zip(errors, got["errors"], strict=True):
        if want is None:
            assert message is None, request
        else:
            assert message is not None and want in message, (request, message)
    assert got["sizes"] == [payload_size(dtype, n) for dtype, n in sizes]


# --------------------------------------------------------------------------- sizes and names


def test_names_and_sizes() -> None:
    assert DTYPES == {"none": 1, "float32": 1, "float16": 2, "int8": 3}
    assert [dtype_name(c) for c in ALL] == ["float32", "float16", "int8"]
    assert [payload_size(INT8, n) for n in SIZES] == [0, 5, 6, 259, 260, 265, 519, 520, 1016]
    assert [payload_size(FLOAT16, n) for n in (0, 1, 1000)] == [0, 2, 2000]
    assert [payload_size(FLOAT32, n) for n in (0, 1, 1000)] == [0, 4, 4000]
    for bad in (0, 4, True, "int8", None):
        with pytest.raises(CodecError, match="unknown dtype"):
            payload_size(bad, 1)
        with pytest.raises(CodecError, match="unknown dtype"):
            dtype_name(bad)
    with pytest.raises(CodecError, match="integer >= 0"):
        payload_size(INT8, -1)


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", SIZES)
def test_round_trip(dtype: int, n: int, rng) -> None:
    x = f32(rng.normal(size=n) * 10.0 ** rng.uniform(-3, 3, n))
    payload = encode(x, dtype)
    assert isinstance(payload, bytes) and len(payload) == payload_size(dtype, n)
    y = decode(payload, dtype, n)
    assert y.dtype == np.float32 and y.shape == (n,) and y.flags.writeable
    if dtype == FLOAT32:
        assert np.array_equal(bits(y), bits(x))
    elif dtype == FLOAT16:
        assert np.array_equal(y, x.astype(np.float16).astype(np.float32))
    else:
        step = per_value(int8_scales(payload, n), n)
        assert np.all(np.abs(y - x) <= step / 2 * (1 + 1e-5))
    # memoryview and bytearray decode the same, into new arrays
    y2 = decode(memoryview(bytearray(payload)), dtype, n)
    assert np.array_equal(bits(y2), bits(y)) and not np.shares_memory(y, y2)


def test_decode_returns_a_new_writable_array() -> None:
    payload = bytearray(encode(f32([1.0, 2.0]), FLOAT32))
    y = decode(payload, FLOAT32, 2)
    y[0] = 5.0
    payload[0:4] = np.float32(9.0).tobytes()
    assert y.tolist() == [5.0, 2.0]


@pytest.mark.parametrize("dtype", ALL)
def test_wrong_sizes_are_refused(dtype: int) -> None:
    payload = encode(f32(np.arange(300)), dtype)
    size = len(payload)
    with pytest.raises(CodecError, match=f"must be {size} bytes, got {size - 1}"):
        decode(payload[:-1], dtype, 300)
    with pytest.raises(CodecError, match=f"must be {size} bytes, got {size + 3}"):
        decode(payload + b"abc", dtype, 300)
    with pytest.raises(CodecError, match="for 299 values"):
        decode(payload, dtype, 299)
    with pytest.raises(CodecError, match="unknown dtype 7"):
        decode(payload, 7, 300)
    with pytest.raises(CodecError, match="integer >= 0"):
        decode(b"", dtype, -1)


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, -1.0, -0.0, -1e-30])
def test_int8_refuses_hostile_scales(scale: float) -> None:
    payload = bytearray(encode(f32(np.arange(600)), INT8))
    payload[4:8] = np.float32(scale).tobytes()  # block 1 of 3
    with pytest.raises(CodecError, match="int8 block 1 has scale"):
        decode(bytes(payload), INT8, 600)


def test_int8_refuses_non_finite_values() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CodecError, match="value 2 is"):
            encode(f32([1.0, 2.0, bad]), INT8)


# --------------------------------------------------------------------------- the format itself


def test_int8_rounds_ties_to_even() -> None:
    x = f32([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 0.49999997])
    payload = encode(x * np.float32(0.25), INT8)
    assert int8_scales(payload, x.size).tolist() == [0.25]
    q = np.frombuffer(payload, np.int8, offset=4).tolist()
    assert q == [127, 0, 2, 2, 0, -2, -2, 126, -126, 0]


def test_int8_per_block_scales_isolate_an_outlier() -> None:
    x = np.full(3 * BLOCK, 0.01, np.float32)
    x[BLOCK + 5] = 1000.0
    payload = encode(x, INT8)
    scales = int8_scales(payload, x.size)
    assert scales[0] == scales[2] == np.float32(np.float32(0.01) / np.float32(127))
    assert scales[1] == np.float32(np.float32(1000) / np.float32(127))
    y = decode(payload, INT8, x.size)
    assert np.array_equal(y[:BLOCK], x[:BLOCK]) and np.array_equal(y[2 * BLOCK :], x[2 * BLOCK :])
    assert y[BLOCK + 5] == 1000.0
    assert not y[BLOCK : BLOCK + 5].any()  # only the outlier's block loses its small values


def test_int8_zero_and_underflowing_blocks() -> None:
    x = np.zeros(BLOCK + 3, np.float32)
    x[BLOCK:] = f32([2.0**-149, -(2.0**-149), 0.0])  # maxabs / 127 underflows to 0
    payload = encode(x, INT8)
    assert int8_scales(payload, x.size).tolist() == [0.0, 0.0]
    assert payload[8:] == bytes(x.size)
    assert np.array_equal(decode(payload, INT8, x.size), np.zeros(x.size, np.float32))


def test_float16_edges() -> None:
    x = f32(
        [
            65504,
            65505,
            65519.996,
            65520,
            65536,
            np.inf,
            -np.inf,
            -70000,
            np.nan,
            -np.nan,
            2.0**-25,
            2.0**-25 * 1.0000001,
            3 * 2.0**-25,
            2.0**-24,
            1e-40,
            -0.0,
            1 + 2.0**-11,
        ]
    )
    h = np.frombuffer(encode(x, FLOAT16), "<u2").tolist()
    assert h[:10] == [0x7BFF] * 6 + [0xFBFF] * 2 + [0x7E00] * 2  # clipped; one NaN
    # 2^-25 ties to 0; just above rounds up to the smallest subnormal 2^-24; 3 * 2^-25 ties
    # to even (2 * 2^-24); 1 + 2^-11 ties to 1.0
    assert h[10:] == [0x0000, 0x0001, 0x0002, 0x0001, 0x0000, 0x8000, 0x3C00]
    y = decode(encode(x, FLOAT16), FLOAT16, x.size)
    assert y[0] == 65504 and y[7] == -65504 and math.isnan(y[8])
    assert y[11] == np.float32(2.0**-24) and np.signbit(y[15])


def test_float16_matches_numpy_everywhere() -> None:
    x = np.concatenate([half_edges(), random_bit_patterns(np.random.default_rng(3), 50_000)])
    want = np.clip(x, -65504, 65504).astype(np.float16).view("<u2")
    assert np.array_equal(np.frombuffer(encode(x, FLOAT16), "<u2"), want)


# --------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("dtype", [FLOAT16, INT8])
def test_error_feedback_tracks_the_sum(dtype: int, rng) -> None:
    n, rounds = 600, 200
    x0 = f32(rng.normal(size=n) * 10.0 ** rng.uniform(-4, 0, n))
    x0[3] = 50.0  # an outlier: small values of its int8 block always round to zero
    x0[300:310] = 1e-8  # below half the smallest float16 subnormal: always zero in float16
    ef = ErrorFeedback(n, dtype)
    meant = np.zeros(n)  # float64 sums
    sent = np.zeros(n)
    plain = np.zeros(n)
    slack = np.zeros(n)
    for _ in range(rounds):
        x = f32(x0 * rng.uniform(0.5, 1.5, n))
        meant += x
        slack += np.spacing(np.abs(x + ef.residual))  # the float32 rounding of y = x + e
        payload = ef.encode(x)
        sent += decode(payload, dtype, n)
        plain += decode(encode(x, dtype), dtype, n)
    r = ef.residual.astype(np.float64)
    # e = y - decode(p) is exact (Sterbenz), so what arrived is what was meant minus the
    # residual, up to the rounding of y = x + e
    assert np.all(np.abs(meant - sent - r) <= slack)
    if dtype == INT8:
        bound = per_value(int8_scales(payload, n), n) / 2 * (1 + 1e-5)
    else:
        y = decode(payload, FLOAT16, n)
        bound = np.maximum(np.abs(y) * 2.0**-11, 2.0**-25) * (1 + 1e-5)
    assert np.all(np.abs(r) <= bound)  # half a quantization step of the last payload
    # without feedback values that always round to zero never arrive
    never = (plain == 0) & (meant != 0)
    assert never.sum() >= 10
    lost = np.abs(meant - plain)[never]
    assert lost.max() > 10 * (bound + slack)[never].max()
    assert np.all(np.abs(meant - sent)[never] <= (bound + slack)[never])


def test_error_feedback_float32_and_reset(rng) -> None:
    x = f32(rng.normal(size=10))
    x[0] = -0.0
    ef = ErrorFeedback(10, FLOAT32)
    assert ef.encode(x) == encode(x, FLOAT32)  # -0.0 stays -0.0: nothing is added
    assert not ef.residual.any()
    ef = ErrorFeedback(10, INT8)
    ef.encode(x * 1e-3)
    assert ef.residual.any()
    ef.reset()
    assert np.array_equal(ef.residual, np.zeros(10, np.float32))
    with pytest.raises(CodecError, match="holds 10 values, got 9"):
        ef.encode(x[:9])


# --------------------------------------------------------------------------- parameter deltas


@pytest.mark.parametrize("dtype", [INT8, FLOAT16, FLOAT32])
def test_param_view_bound_and_client_replica(dtype: int, rng) -> None:
    n = 1500
    params = f32(rng.normal(size=n) * 10.0 ** rng.uniform(-2, 2, n))
    pv = ParamView()
    client = pv.full(params, 0).copy()  # what a client holds after the full vector
    assert not pv.view.flags.writeable
    for it in range(1, 51):
        step = rng.normal(size=n) * 10.0 ** rng.uniform(-7, 0)
        step[rng.integers(n)] *= 1e3  # an outlier now and then
        params = f32(params + step)
        view_before = pv.view
        base, payload = pv.delta(params, it, dtype)
        assert base == it - 1 and pv.version == it
        assert view_before is not pv.view  # replaced, never modified in place
        d = params - view_before  # float32, as delta() computed it
        err = np.abs(pv.view.astype(np.float64) - params)
        half_ulp = np.spacing(np.abs(pv.view)).astype(np.float64) / 2
        if dtype == INT8:
            scale = per_value(int8_scales(payload, n), n).astype(np.float64)
            maxabs = per_value(np.abs(codecs._blocks(d)).max(axis=1), n)
            assert np.all(scale / 2 <= maxabs / 254 * (1 + 1e-6))
            bound = scale / 2 * (1 + 1e-4) + half_ulp
        elif dtype == FLOAT16:
            bound = (2.0**-11 + 2.0**-23) * np.abs(d) + 2.0**-25 + half_ulp
        else:
            bound = np.abs(d) * 2.0**-23 + half_ulp
        assert np.all(err <= bound), f"iteration {it}: worst {np.max(err - bound)} over the bound"
        # a client adding the decoded payload to the same base reaches the view exactly
        client += decode(payload, dtype, n)
        assert np.array_equal(bits(client), bits(pv.view))


def test_param_view_full_and_misuse(rng) -> None:
    pv = ParamView()
    with pytest.raises(CodecError, match="before full"):
        pv.delta(f32([1.0]), 1, INT8)
    params = f32(rng.normal(size=5))
    view = pv.full(params, 7)
    params[0] = 99.0  # the view is a copy
    assert view[0] != 99.0 and pv.version == 7
    with pytest.raises(ValueError):
        view[0] = 1.0
    with pytest.raises(CodecError, match="holds 5 values, got 4"):
        pv.delta(params[:4], 8, INT8)
    base, payload = pv.delta(params, 8, INT8)
    assert base == 7 and len(payload) == payload_size(INT8, 5)
    assert view[0] != pv.view[0]  # the old view is never modified in place
