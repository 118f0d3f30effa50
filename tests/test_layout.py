"""The canonical flat parameter layout, seeded initialisation and ConvNetJS weight decay."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import run_node

from mlitb.model import Segment, Spec, decay_multipliers, init_params, segments
from mlitb.model.decay import decay_gradient, decay_loss, mean_gradient

# input 6 wide x 5 high x 3 deep -> conv 3x2 (4 filters) -> 4x4x4 -> relu -> pool 2 -> 2x2x4
# -> fc 7 -> fc 3 (inserted by softmax) -> softmax
CONV_FC = [
    {"type": "input", "out_sx": 6, "out_sy": 5, "out_depth": 3},
    {"type": "conv", "sx": 3, "sy": 2, "filters": 4, "activation": "relu", "l2_decay_mul": 0.5},
    {"type": "pool", "sx": 2},
    {"type": "fc", "num_neurons": 7, "bias_pref": 0.25, "l1_decay_mul": 0.5, "l2_decay_mul": 2.0},
    {"type": "softmax", "num_classes": 3},
]


@pytest.fixture
def conv_fc() -> Spec:
    return Spec.from_json(CONV_FC)


def test_segments_conv_fc(conv_fc):
    assert [layer.type for layer in conv_fc.layers] == [
        "input",
        "conv",
        "relu",
        "pool",
        "fc",
        "fc",
        "softmax",
    ]
    segs = segments(conv_fc)
    assert segs == [
        Segment(1, "filters", (4, 2, 3, 3), 0),  # [filters, sy, sx, in_depth]
        Segment(1, "biases", (4,), 72),
        Segment(4, "filters", (7, 16), 76),  # [num_neurons, num_inputs = 2*2*4]
        Segment(4, "biases", (7,), 188),
        Segment(5, "filters", (3, 7), 195),
        Segment(5, "biases", (3,), 216),
    ]
    assert [s.size for s in segs] == [72, 4, 112, 7, 21, 3]
    assert [s.stop for s in segs] == [72, 76, 188, 195, 216, 219]
    # contiguous, covering the whole vector
    assert all(a.stop == b.offset for a, b in itertools.pairwise(segs))
    assert segs[-1].stop == conv_fc.num_params == 219


def test_segments_empty_without_parameters():
    spec = Spec.from_json(
        [
            {"layer_type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 4},
            {"layer_type": "softmax", "out_sx": 1, "out_sy": 1, "out_depth": 4},
        ]
    )
    assert segments(spec) == []
    l1, l2 = decay_multipliers(spec)
    assert l1.shape == l2.shape == (0,)
    assert init_params(spec).shape == (0,)


def test_segments_non_square_conv_filter():
    spec = Spec.from_json(
        [
            {"type": "input", "out_sx": 9, "out_sy": 4, "out_depth": 2},
            {"type": "conv", "sx": 5, "sy": 1, "filters": 3},
            {"type": "regression", "num_neurons": 2},
        ]
    )
    assert segments(spec) == [
        Segment(1, "filters", (3, 1, 5, 2), 0),
        Segment(1, "biases", (3,), 30),
        Segment(2, "filters", (2, 4 * 5 * 3), 33),
        Segment(2, "biases", (2,), 153),
    ]


def test_decay_multipliers(conv_fc):
    l1, l2 = decay_multipliers(conv_fc)
    assert l1.dtype == l2.dtype == np.float32
    assert l1.shape == l2.shape == (219,)
    expected_l1 = np.concatenate(
        [np.full(72, 0.0), np.zeros(4), np.full(112, 0.5), np.zeros(7), np.full(21, 0.0), np.zeros(3)]
    )
    expected_l2 = np.concatenate(
        [np.full(72, 0.5), np.zeros(4), np.full(112, 2.0), np.zeros(7), np.full(21, 1.0), np.zeros(3)]
    )
    np.testing.assert_array_equal(l1, expected_l1)
    np.testing.assert_array_equal(l2, expected_l2)


def test_decay_multipliers_expanded_defaults():
    spec = Spec.from_json(
        [
            {"layer_type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 2},
            {"layer_type": "fc", "out_depth": 3},
            {"layer_type": "regression"},
        ]
    )
    l1, l2 = decay_multipliers(spec)
    np.testing.assert_array_equal(l1, [1, 1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(l2, [1, 1, 1, 1, 1, 1, 0, 0, 0])


# --------------------------------------------------------------------------- init


def test_init_params_deterministic_and_float32(conv_fc):
    a = init_params(conv_fc, seed=7)
    b = init_params(conv_fc, seed=7)
    assert a.dtype == np.float32
    assert a.shape == (conv_fc.num_params,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(init_params(conv_fc), init_params(conv_fc, seed=0))
    assert np.all(np.isfinite(a))


def test_init_params_seeds_differ(conv_fc):
    a = init_params(conv_fc, seed=1)
    b = init_params(conv_fc, seed=2)
    for seg in segments(conv_fc):
        if seg.name == "filters":
            assert not np.array_equal(a[seg.offset : seg.stop], b[seg.offset : seg.stop])
        else:
            np.testing.assert_array_equal(a[seg.offset : seg.stop], b[seg.offset : seg.stop])


def test_init_params_biases_are_bias_pref(conv_fc):
    params = init_params(conv_fc, seed=3)
    biases = {seg.layer: params[seg.offset : seg.stop] for seg in segments(conv_fc) if seg.name == "biases"}
    np.testing.assert_array_equal(biases[1], np.full(4, 0.1, np.float32))  # relu follows: 0.1
    np.testing.assert_array_equal(biases[4], np.full(7, 0.25, np.float32))  # explicit
    np.testing.assert_array_equal(biases[5], np.zeros(3, np.float32))  # default


def test_init_params_documented_draws(conv_fc):
    # PCG64 from the seed, standard normals in layout order, scaled by sqrt(1/fan_in).
    rng = np.random.default_rng(11)
    expected = []
    for seg in segments(conv_fc):
        if seg.name == "filters":
            fan_in = math.prod(seg.shape[1:])
            expected.append((rng.standard_normal(seg.size) * math.sqrt(1.0 / fan_in)).astype(np.float32))
        else:
            expected.append(np.full(seg.size, conv_fc.layers[seg.layer].bias_pref, np.float32))
    np.testing.assert_array_equal(init_params(conv_fc, seed=11), np.concatenate(expected))


@pytest.mark.parametrize(
    ("layer", "in_depth", "fan_in"),
    [
        ({"type": "fc", "num_neurons": 500}, 400, 400),
        # conv fan_in = sy*sx*in_depth (not sx*sx*in_depth, not filters*...)
        ({"type": "conv", "sx": 5, "sy": 3, "filters": 64, "pad": 2}, 8, 5 * 3 * 8),
    ],
    ids=["fc", "conv"],
)
def test_init_params_weight_scale(layer, in_depth, fan_in):
    spec = Spec.from_json(
        [
            {
                "type": "input",
                "out_sx": 1 if layer["type"] == "fc" else 6,
                "out_sy": 1,
                "out_depth": in_depth,
            },
            layer,
            {"type": "regression", "num_neurons": 1},
        ]
    )
    seg = segments(spec)[0]
    assert seg.layer == 1 and seg.name == "filters"
    weights = init_params(spec, seed=5)[seg.offset : seg.stop].astype(np.float64)
    target = math.sqrt(1.0 / fan_in)
    assert abs(weights.std() / target - 1) < 0.05
    assert abs(weights.mean()) < 0.05 * target
    # roughly normal: about 68% within one standard deviation
    assert abs(np.mean(np.abs(weights) < target) - 0.6827) < 0.03


# --------------------------------------------------------------------------- ConvNetJS layout

_NODE_SCRIPT = r"""
const convnetjs = require("convnetjs");
const defs = JSON.parse(require("fs").readFileSync(0, "utf8"));
const net = new convnetjs.Net();
net.makeLayers(defs);
let k = 0;
const l1 = [], l2 = [];
for (const pg of net.getParamsAndGrads()) {
  for (let j = 0; j < pg.params.length; j++) {
    pg.params[j] = k++;
    l1.push(pg.l1_decay_mul === undefined ? 1 : pg.l1_decay_mul);
    l2.push(pg.l2_decay_mul === undefined ? 1 : pg.l2_decay_mul);
  }
}
// Read every weight back through ConvNetJS's own addressing.
const layers = net.layers.map((L) => {
  if (L.layer_type === "conv") {
    return {
      filters: L.filters.map((f) => {
        const a = [];
        for (let y = 0; y < f.sy; y++) {
          const row = [];
          for (let x = 0; x < f.sx; x++) {
            const px = [];
            for (let d = 0; d < f.depth; d++) px.push(f.get(x, y, d));
            row.push(px);
          }
          a.push(row);
        }
        return a;
      }),
      biases: Array.from(L.biases.w),
    };
  }
  if (L.layer_type === "fc") {
    return { filters: L.filters.map((f) => Array.from(f.w)), biases: Array.from(L.biases.w) };
  }
  return null;
});
process.stdout.write(JSON.stringify({ total: k, l1, l2, layers }));
"""


def test_layout_is_convnetjs_get_params_and_grads(conv_fc):
    ref = run_node(_NODE_SCRIPT, CONV_FC)
    assert ref["total"] == conv_fc.num_params
    flat = np.arange(conv_fc.num_params, dtype=np.float64)
    for seg in segments(conv_fc):
        theirs = np.asarray(ref["layers"][seg.layer][seg.name], dtype=np.float64)
        np.testing.assert_array_equal(flat[seg.offset : seg.stop].reshape(seg.shape), theirs)
    for layer, entry in zip(conv_fc.layers, ref["layers"], strict=True):
        assert (entry is None) == (layer.type not in ("conv", "fc"))
    l1, l2 = decay_multipliers(conv_fc)
    np.testing.assert_array_equal(l1, np.asarray(ref["l1"], np.float32))
    np.testing.assert_array_equal(l2, np.asarray(ref["l2"], np.float32))


# --------------------------------------------------------------------------- decay


P = np.array([2.0, -1.5, 0.0, 0.5, -0.0, 3.0], np.float32)
L1_MUL = np.array([1.0, 1.0, 1.0, 0.5, 2.0, 0.0], np.float32)
L2_MUL = np.array([1.0, 2.0, 1.0, 0.0, 1.0, 0.0], np.float32)


def test_decay_gradient_l2_only():
    g = decay_gradient(P, 0.0, 0.1, L1_MUL, L2_MUL)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, [0.2, -0.3, 0.0, 0.0, 0.0, 0.0], rtol=1e-6)


def test_decay_gradient_l1_sign_of_zero_is_minus_one():
    # ConvNetJS: l1_decay * (p > 0 ? 1 : -1), so p = 0 (and -0) pulls down.
    g = decay_gradient(P, 0.01, 0.0, L1_MUL, L2_MUL)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, [0.01, -0.01, -0.01, 0.005, -0.02, 0.0], rtol=1e-6)


def test_decay_gradient_combined():
    l1, l2 = 0.01, 0.1
    expected = [
        l2 * 1 * 2.0 + l1 * 1 * 1,
        l2 * 2 * -1.5 + l1 * 1 * -1,
        0.0 + l1 * 1 * -1,
        0.0 + l1 * 0.5 * 1,
        0.0 + l1 * 2 * -1,
        0.0,
    ]
    np.testing.assert_allclose(decay_gradient(P, l1, l2, L1_MUL, L2_MUL), expected, rtol=1e-6)


def test_decay_gradient_zero_decay():
    g = decay_gradient(P, 0.0, 0.0, L1_MUL, L2_MUL)
    np.testing.assert_array_equal(g, np.zeros(6, np.float32))
    assert g.dtype == np.float32


def test_decay_loss():
    l1, l2 = 0.01, 0.1
    p = P.astype(np.float64)
    expected = float(np.sum(l2 * L2_MUL * p * p / 2) + np.sum(l1 * L1_MUL * np.abs(p)))
    assert expected == pytest.approx(0.1 * (4 / 2 + 2 * 2.25 / 2) + 0.01 * (2 + 1.5 + 0.25))
    assert decay_loss(P, l1, l2, L1_MUL, L2_MUL) == pytest.approx(expected)


def test_mean_gradient_without_decay():
    summed = np.array([4.0, -2.0, 0.0, 1.0, 6.0, -8.0], np.float32)
    before = summed.copy()
    g = mean_gradient(summed, 4, P)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, summed / 4, rtol=1e-7)
    np.testing.assert_array_equal(summed, before)  # the input is not modified


def test_mean_gradient_with_decay():
    summed = np.array([4.0, -2.0, 0.0, 1.0, 6.0, -8.0], np.float32)
    l1, l2, count = 0.01, 0.1, 3
    # (l2grad + l1grad + g) / batch_size, ConvNetJS's Trainer formula
    sign = np.where(P > 0, 1.0, -1.0)
    expected = (l2 * L2_MUL * P + l1 * L1_MUL * sign + summed) / count
    g = mean_gradient(summed, count, P, l1, l2, L1_MUL, L2_MUL)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-8)
    assert g[2] == pytest.approx(-0.01 / 3)  # p == 0: the l1 term is -l1


def test_mean_gradient_float64_input_gives_float32():
    g = mean_gradient(np.ones(3, np.float64), 2, np.zeros(3, np.float32))
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("count", [0, -1])
def test_mean_gradient_count_must_be_positive(count):
    with pytest.raises(ValueError, match=f"count must be positive.*got {count}"):
        mean_gradient(np.ones(6, np.float32), count, P)


def test_mean_gradient_decay_needs_multipliers():
    with pytest.raises(ValueError, match="decay multipliers"):
        mean_gradient(np.ones(6, np.float32), 2, P, l2=0.1)
    with pytest.raises(ValueError, match="decay multipliers"):
        mean_gradient(np.ones(6, np.float32), 2, P, l1=0.1, l1_mul=L1_MUL)
