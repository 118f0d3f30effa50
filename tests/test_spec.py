"""The spec language: ConvNetJS `layer_defs` desugaring, defaults, shapes, validation.

The reference for every rule is ConvNetJS 0.3.0 (`Net.makeLayers` and the layer
constructors in node_modules/convnetjs/build/convnet.js); `test_matches_convnetjs`
builds the same nets in the real library and compares them layer by layer.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from conftest import SMALL_NET, run_node

from mlitb.model import Spec, SpecError, expand, from_expanded


def inp(sx: int, sy: int | None = None, depth: int = 1) -> dict:
    return {"type": "input", "out_sx": sx, "out_sy": sx if sy is None else sy, "out_depth": depth}


SOFTMAX3 = {"type": "softmax", "num_classes": 3}


def types(spec: Spec) -> list[str]:
    return [layer.type for layer in spec.layers]


def spec_error(defs: object, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        Spec.from_json(defs, **kwargs)
    return info.value


def check_error(
    err: SpecError,
    *,
    index: int | None,
    field: str | None,
    expected: str,
    got: str | None = None,
    layer_type: str | None = None,
) -> str:
    """Asserts on both the message (what a user reads) and the attributes."""
    msg = str(err)
    assert err.index == index, msg
    assert err.field == field, msg
    if index is None:
        assert msg.startswith("spec: "), msg
    else:
        where = f"layer {index}" + (f" ({layer_type})" if layer_type else "")
        assert msg.startswith(where), msg
    if layer_type is not None:
        assert err.layer_type == layer_type, msg
    if field is None:
        assert "field '" not in msg, msg
    else:
        assert f"field '{field}'" in msg, msg
    assert f"expected {expected}" in msg, msg
    if got is not None:
        assert f"got {got}" in msg, msg
    return msg


# --------------------------------------------------------------------------- desugaring


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_classifier_loss_gets_fc_num_classes(loss):
    spec = expand([inp(4, 3, 2), {"type": loss, "num_classes": 5}])
    assert types(spec) == ["input", "fc", loss]
    fc = spec.layers[1]
    assert fc.in_shape == (3, 4, 2)
    assert fc.out_shape == (1, 1, 5)
    assert spec.layers[2].out_shape == (1, 1, 5)
    assert spec.loss == loss
    assert spec.num_outputs == 5
    assert spec.num_params == 4 * 3 * 2 * 5 + 5


def test_regression_gets_fc_num_neurons():
    spec = expand([inp(1, 1, 7), {"type": "regression", "num_neurons": 3}])
    assert types(spec) == ["input", "fc", "regression"]
    assert spec.layers[1].out_shape == (1, 1, 3)
    assert spec.layers[2].out_shape == (1, 1, 3)
    assert spec.loss == "regression"
    assert spec.num_outputs == 3


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_activation_appends_layer(act):
    spec = expand([inp(2, 2, 3), {"type": "fc", "num_neurons": 4, "activation": act}, SOFTMAX3])
    assert types(spec) == ["input", "fc", act, "fc", "softmax"]
    assert spec.layers[2].in_shape == spec.layers[2].out_shape == (1, 1, 4)


def test_activation_on_conv_appends_layer():
    spec = expand([inp(5, 5, 1), {"type": "conv", "sx": 3, "filters": 2, "activation": "tanh"}, SOFTMAX3])
    assert types(spec) == ["input", "conv", "tanh", "fc", "softmax"]
    assert spec.layers[2].out_shape == (3, 3, 2)


def test_maxout_activation_with_group_size():
    spec = expand(
        [inp(1, 1, 2), {"type": "fc", "num_neurons": 9, "activation": "maxout", "group_size": 3}, SOFTMAX3]
    )
    assert types(spec) == ["input", "fc", "maxout", "fc", "softmax"]
    maxout = spec.layers[2]
    assert maxout.group_size == 3
    assert maxout.out_shape == (1, 1, 3)


def test_maxout_activation_default_group_size_is_2():
    # ConvNetJS passes group_size undefined, and MaxoutLayer defaults it to 2.
    spec = expand([inp(1, 1, 2), {"type": "fc", "num_neurons": 7, "activation": "maxout"}, SOFTMAX3])
    maxout = spec.layers[2]
    assert maxout.group_size == 2
    assert maxout.out_shape == (1, 1, 3)  # floor(7 / 2): the leftover channel is dropped


def test_maxout_layer_itself():
    spec = expand([inp(2, 2, 8), {"type": "maxout", "group_size": 4}, SOFTMAX3])
    assert types(spec) == ["input", "maxout", "fc", "softmax"]
    assert spec.layers[1].group_size == 4
    assert spec.layers[1].out_shape == (2, 2, 2)


def test_drop_prob_appends_dropout_after_activation():
    spec = expand(
        [inp(1, 1, 3), {"type": "fc", "num_neurons": 4, "activation": "relu", "drop_prob": 0.25}, SOFTMAX3]
    )
    assert types(spec) == ["input", "fc", "relu", "dropout", "fc", "softmax"]
    assert spec.layers[3].drop_prob == 0.25
    assert spec.layers[3].out_shape == (1, 1, 4)


def test_drop_prob_without_activation():
    spec = expand([inp(3, 3, 1), {"type": "conv", "sx": 3, "filters": 2, "drop_prob": 0.4}, SOFTMAX3])
    assert types(spec) == ["input", "conv", "dropout", "fc", "softmax"]
    assert spec.layers[2].drop_prob == 0.4


def test_dropout_layer_is_not_doubled():
    spec = expand([inp(1, 1, 3), {"type": "dropout", "drop_prob": 0.3}, SOFTMAX3])
    assert types(spec) == ["input", "dropout", "fc", "softmax"]
    assert spec.layers[1].drop_prob == 0.3


def test_dropout_default_drop_prob():
    spec = expand([inp(1, 1, 3), {"type": "dropout"}, SOFTMAX3])
    assert spec.layers[1].drop_prob == 0.5


def test_bias_pref_default_zero():
    spec = expand(
        [
            inp(4, 4, 1),
            {"type": "conv", "sx": 3, "filters": 2},
            {"type": "fc", "num_neurons": 3, "activation": "tanh"},
            {"type": "fc", "num_neurons": 3, "activation": "sigmoid"},
            SOFTMAX3,
        ]
    )
    weighted = [layer for layer in spec.layers if layer.type in ("conv", "fc")]
    assert len(weighted) == 4
    assert all(layer.bias_pref == 0.0 for layer in weighted)


@pytest.mark.parametrize(
    "layer", [{"type": "conv", "sx": 3, "filters": 2}, {"type": "fc", "num_neurons": 3}], ids=["conv", "fc"]
)
def test_bias_pref_point_one_before_relu(layer):
    spec = expand([inp(4, 4, 1), {**layer, "activation": "relu"}, SOFTMAX3])
    assert spec.layers[1].type == layer["type"]
    assert spec.layers[1].bias_pref == 0.1
    assert spec.layers[3].bias_pref == 0.0  # the fc that softmax inserts


@pytest.mark.parametrize("bias", [0, 0.0, -0.5, 2.0])
def test_explicit_bias_pref_kept(bias):
    spec = expand(
        [
            inp(4, 4, 1),
            {"type": "conv", "sx": 3, "filters": 2, "activation": "relu", "bias_pref": bias},
            {"type": "fc", "num_neurons": 3, "bias_pref": bias},
            SOFTMAX3,
        ]
    )
    assert spec.layers[1].bias_pref == bias
    assert spec.layers[3].bias_pref == bias


def test_conv_defaults():
    spec = expand([inp(6, 6, 2), {"type": "conv", "sx": 3, "filters": 4}, SOFTMAX3])
    conv = spec.layers[1]
    assert (conv.sx, conv.sy, conv.stride, conv.pad) == (3, 3, 1, 0)
    assert conv.out_shape == (4, 4, 4)


def test_pool_defaults():
    spec = expand([inp(6, 6, 2), {"type": "pool", "sx": 2}, SOFTMAX3])
    pool = spec.layers[1]
    assert (pool.sx, pool.sy, pool.stride, pool.pad) == (2, 2, 2, 0)
    assert pool.out_shape == (3, 3, 2)


def test_sy_kept_when_given():
    spec = expand(
        [
            inp(9, 9, 1),
            {"type": "conv", "sx": 3, "sy": 1, "filters": 2},
            {"type": "pool", "sx": 1, "sy": 3},
            SOFTMAX3,
        ]
    )
    assert (spec.layers[1].sx, spec.layers[1].sy) == (3, 1)
    assert spec.layers[1].out_shape == (9, 7, 2)
    assert (spec.layers[2].sx, spec.layers[2].sy) == (1, 3)
    assert spec.layers[2].out_shape == (4, 4, 2)


def test_fc_filters_alias_for_num_neurons():
    spec = expand([inp(2, 2, 1), {"type": "fc", "filters": 6}, SOFTMAX3])
    assert spec.layers[1].out_shape == (1, 1, 6)


def test_fc_num_neurons_wins_over_filters():
    # ConvNetJS: typeof opt.num_neurons !== 'undefined' ? opt.num_neurons : opt.filters
    spec = expand([inp(2, 2, 1), {"type": "fc", "num_neurons": 4, "filters": 6}, SOFTMAX3])
    assert spec.layers[1].out_shape == (1, 1, 4)


def test_decay_mul_defaults_for_definitions():
    spec = expand(
        [inp(4, 4, 1), {"type": "conv", "sx": 3, "filters": 2}, {"type": "fc", "num_neurons": 3}, SOFTMAX3]
    )
    assert types(spec) == ["input", "conv", "fc", "fc", "softmax"]
    for i in (1, 2, 3):
        assert (spec.layers[i].l1_decay_mul, spec.layers[i].l2_decay_mul) == (0.0, 1.0)


def test_decay_mul_explicit_values_kept():
    spec = expand(
        [
            inp(4, 4, 1),
            {"type": "conv", "sx": 3, "filters": 2, "l1_decay_mul": 0.5, "l2_decay_mul": 0.0},
            {"type": "fc", "num_neurons": 3, "l1_decay_mul": 2, "l2_decay_mul": 3.5},
            SOFTMAX3,
        ]
    )
    assert (spec.layers[1].l1_decay_mul, spec.layers[1].l2_decay_mul) == (0.5, 0.0)
    assert (spec.layers[2].l1_decay_mul, spec.layers[2].l2_decay_mul) == (2.0, 3.5)


def test_decay_mul_defaults_for_expanded_layers():
    # ConvNetJS's fromJSON defaults both multipliers to 1.
    spec = from_expanded(
        [
            {"layer_type": "input", "out_sx": 4, "out_sy": 4, "out_depth": 1},
            {"layer_type": "conv", "sx": 3, "out_depth": 2},
            {"layer_type": "fc", "out_depth": 3},
            {"layer_type": "softmax"},
        ]
    )
    assert types(spec) == ["input", "conv", "fc", "softmax"]
    for i in (1, 2):
        assert (spec.layers[i].l1_decay_mul, spec.layers[i].l2_decay_mul) == (1.0, 1.0)
    assert spec.layers[1].out_shape == (2, 2, 2)
    # Spec.from_json picks the same reading for an all-'layer_type' list.
    assert Spec.from_json(spec.to_json()) == spec


def test_expanded_form_inserts_nothing():
    spec = Spec.from_json(
        [
            {"layer_type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 4},
            {"layer_type": "softmax", "out_sx": 1, "out_sy": 1, "out_depth": 4},
        ]
    )
    assert types(spec) == ["input", "softmax"]
    assert spec.num_params == 0


def test_input_accepts_in_names():
    spec = expand([{"type": "input", "in_sx": 5, "in_sy": 3, "in_depth": 2}, SOFTMAX3])
    assert spec.input_shape == (3, 5, 2)


def test_layers_key_and_tuple_accepted():
    defs = [inp(2, 2, 1), SOFTMAX3]
    assert Spec.from_json({"layers": defs}) == Spec.from_json(defs) == Spec.from_json(tuple(defs))


def test_integral_float_sizes_accepted():
    # JSON numbers from JavaScript may arrive as 3.0.
    spec = expand([inp(5.0, 5.0, 1.0), {"type": "conv", "sx": 3.0, "filters": 2.0}, SOFTMAX3])
    assert spec.layers[1].out_shape == (3, 3, 2)
    assert isinstance(spec.layers[1].sx, int)


def test_expand_does_not_mutate_defs():
    # ConvNetJS writes bias_pref into the caller's objects; we must not.
    defs = [
        inp(4, 4, 1),
        {"type": "conv", "sx": 3, "filters": 2, "activation": "relu", "drop_prob": 0.2},
        {"type": "softmax", "num_classes": 2},
    ]
    before = copy.deepcopy(defs)
    expand(defs)
    assert defs == before


def test_lrn_layer_fields():
    spec = expand([inp(3, 3, 4), {"type": "lrn", "k": 2, "n": 3, "alpha": 1e-4, "beta": 0.75}, SOFTMAX3])
    lrn = spec.layers[1]
    assert (lrn.k, lrn.n, lrn.alpha, lrn.beta) == (2.0, 3, 1e-4, 0.75)
    assert lrn.out_shape == (3, 3, 4)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("in_sx", "in_sy", "layer", "out"),
    [
        # out = floor((in + 2*pad - window) / stride + 1); shapes are (sy, sx, depth)
        (7, 7, {"type": "conv", "sx": 3, "stride": 2}, (3, 3)),
        (7, 7, {"type": "conv", "sx": 3, "stride": 2, "pad": 1}, (4, 4)),
        (8, 8, {"type": "conv", "sx": 3, "stride": 3}, (2, 2)),  # 5/3 + 1 floors to 2
        (8, 8, {"type": "conv", "sx": 2, "stride": 3, "pad": 2}, (4, 4)),  # 10/3 + 1 -> 4
        (5, 5, {"type": "conv", "sx": 1, "stride": 10}, (1, 1)),
        (10, 6, {"type": "conv", "sx": 3, "sy": 5}, (2, 8)),  # non-square input and filter
        (10, 6, {"type": "conv", "sx": 5, "sy": 3, "stride": 2, "pad": 1}, (3, 4)),
        (9, 4, {"type": "conv", "sx": 4, "stride": 2, "pad": 2}, (3, 5)),
        (7, 5, {"type": "pool", "sx": 2}, (2, 3)),
        (7, 5, {"type": "pool", "sx": 3, "stride": 1}, (3, 5)),
        (7, 5, {"type": "pool", "sx": 3, "stride": 3, "pad": 1}, (2, 3)),
        (11, 4, {"type": "pool", "sx": 3, "sy": 2, "stride": 2, "pad": 1}, (3, 6)),
        (5, 5, {"type": "pool", "sx": 5, "stride": 7}, (1, 1)),
    ],
)
def test_output_size_floor(in_sx, in_sy, layer, out):
    depth = 3
    if layer["type"] == "conv":
        layer = {**layer, "filters": 5}
    spec = expand([inp(in_sx, in_sy, depth), layer, SOFTMAX3])
    out_depth = 5 if layer["type"] == "conv" else depth
    assert spec.input_shape == (in_sy, in_sx, depth)
    assert spec.layers[1].in_shape == (in_sy, in_sx, depth)
    assert spec.layers[1].out_shape == (*out, out_depth)
    # The shape flows on: the inserted fc reads the whole volume.
    assert spec.layers[2].in_shape == (*out, out_depth)


def test_shapes_through_a_net():
    spec = expand(
        [
            {"type": "input", "out_sx": 12, "out_sy": 9, "out_depth": 3},
            {"type": "conv", "sx": 5, "sy": 3, "filters": 8, "stride": 2, "pad": 1, "activation": "relu"},
            {"type": "pool", "sx": 2, "stride": 1},
            {"type": "conv", "sx": 3, "filters": 6, "activation": "maxout", "group_size": 3},
            {"type": "fc", "num_neurons": 10, "activation": "sigmoid"},
            {"type": "svm", "num_classes": 4},
        ]
    )
    assert [layer.out_shape for layer in spec.layers] == [
        (9, 12, 3),
        (5, 5, 8),  # h: (9+2-3)//2+1, w: (12+2-5)//2+1
        (5, 5, 8),
        (4, 4, 8),
        (2, 2, 6),
        (2, 2, 2),
        (1, 1, 10),
        (1, 1, 10),
        (1, 1, 4),
        (1, 1, 4),
    ]
    assert [layer.in_shape for layer in spec.layers[1:]] == [layer.out_shape for layer in spec.layers[:-1]]


# --------------------------------------------------------------------------- parameter count


def test_num_params_mnist_like():
    spec = expand(
        [
            inp(28, 28, 1),
            {"type": "conv", "sx": 5, "filters": 8, "stride": 1, "pad": 2, "activation": "relu"},
            {"type": "pool", "sx": 2, "stride": 2},
            {"type": "conv", "sx": 5, "filters": 16, "stride": 1, "pad": 2, "activation": "relu"},
            {"type": "pool", "sx": 3, "stride": 3},
            {"type": "softmax", "num_classes": 10},
        ]
    )
    conv1 = 8 * 5 * 5 * 1 + 8  # 208, out 28x28x8, pool -> 14x14x8
    conv2 = 16 * 5 * 5 * 8 + 16  # 3216, out 14x14x16, pool -> 4x4x16
    fc = 10 * (4 * 4 * 16) + 10  # 2570
    assert spec.layers[-3].out_shape == (4, 4, 16)
    assert spec.num_params == conv1 + conv2 + fc == 5994


def test_num_params_mlp():
    spec = expand(
        [
            inp(1, 1, 2),
            {"type": "fc", "num_neurons": 20, "activation": "relu"},
            {"type": "fc", "num_neurons": 10, "activation": "relu"},
            {"type": "softmax", "num_classes": 2},
        ]
    )
    assert spec.num_params == (2 * 20 + 20) + (20 * 10 + 10) + (10 * 2 + 2) == 292


def test_num_params_non_square_conv_and_svm():
    spec = expand(
        [inp(6, 4, 2), {"type": "conv", "sx": 3, "sy": 1, "filters": 5}, {"type": "svm", "num_classes": 3}]
    )
    assert spec.layers[1].out_shape == (4, 4, 5)
    assert spec.num_params == (5 * 1 * 3 * 2 + 5) + (3 * 4 * 4 * 5 + 3) == 278


def test_num_params_regression_and_parameterless_layers():
    spec = expand(
        [
            inp(3, 2, 1),
            {"type": "fc", "num_neurons": 4, "activation": "tanh", "drop_prob": 0.5},
            {"type": "lrn", "k": 1, "n": 3, "alpha": 1, "beta": 1},
            {"type": "regression", "num_neurons": 1},
        ]
    )
    assert spec.num_params == (6 * 4 + 4) + (4 * 1 + 1) == 33


# --------------------------------------------------------------------------- round trip

ROUND_TRIP_NETS = [
    [inp(2, 2, 1), SOFTMAX3],
    [
        {"type": "input", "out_sx": 12, "out_sy": 9, "out_depth": 3},
        {"type": "conv", "sx": 5, "sy": 3, "filters": 8, "stride": 2, "pad": 1, "activation": "relu"},
        {"type": "lrn", "k": 2, "n": 5, "alpha": 1e-4, "beta": 0.75},
        {"type": "pool", "sx": 3, "sy": 2, "stride": 1, "pad": 1},
        {"type": "conv", "sx": 3, "filters": 6, "activation": "maxout", "group_size": 3, "l1_decay_mul": 0.5},
        {"type": "fc", "num_neurons": 10, "activation": "sigmoid", "drop_prob": 0.3, "bias_pref": -0.2},
        {"type": "fc", "filters": 7, "activation": "tanh", "l2_decay_mul": 0.0},
        {"type": "svm", "num_classes": 4},
    ],
    [
        inp(1, 1, 10),
        {"type": "fc", "num_neurons": 8, "activation": "maxout"},
        {"type": "dropout", "drop_prob": 0.1},
        {"type": "regression", "num_neurons": 2},
    ],
]


@pytest.mark.parametrize("defs", ROUND_TRIP_NETS, ids=["tiny", "conv", "regression"])
def test_to_json_from_json_round_trip(defs):
    spec = Spec.from_json(defs)
    out = spec.to_json()
    assert all("layer_type" in layer and "type" not in layer for layer in out)
    assert len(out) == len(spec.layers)
    assert Spec.from_json(out) == spec
    assert from_expanded(out) == spec
    # ... and through actual JSON text, as it travels.
    again = Spec.from_json(json.loads(json.dumps(out)))
    assert again == spec
    assert again.to_json() == out
    assert again.num_params == spec.num_params


def test_to_json_fields():
    spec = expand([inp(5, 4, 2), {"type": "conv", "sx": 3, "filters": 6, "pad": 1}, SOFTMAX3])
    conv = spec.to_json()[1]
    assert conv["layer_type"] == "conv"
    assert (conv["out_sx"], conv["out_sy"], conv["out_depth"], conv["in_depth"]) == (5, 4, 6, 2)
    assert (conv["sx"], conv["sy"], conv["stride"], conv["pad"]) == (3, 3, 1, 1)
    assert (conv["l1_decay_mul"], conv["l2_decay_mul"], conv["bias_pref"]) == (0.0, 1.0, 0.0)
    fc = spec.to_json()[2]
    assert fc["num_inputs"] == 5 * 4 * 6
    assert spec.to_json()[3] == {
        "layer_type": "softmax",
        "out_sx": 1,
        "out_sy": 1,
        "out_depth": 3,
        "num_inputs": 3,
    }


# --------------------------------------------------------------------------- real ConvNetJS

_NODE_SCRIPT = r"""
const convnetjs = require("convnetjs");
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = cases.map((defs) => {
  const net = new convnetjs.Net();
  net.makeLayers(defs);
  return {
    layers: net.layers.map((l) => {
      const pg = l.getParamsAndGrads();
      return {
        type: l.layer_type, out_sx: l.out_sx, out_sy: l.out_sy, out_depth: l.out_depth,
        num_params: pg.reduce((a, p) => a + p.params.length, 0),
        decay: pg.map((p) => [p.l1_decay_mul, p.l2_decay_mul]),
        biases: l.biases ? Array.from(l.biases.w) : null,
        group_size: l.group_size === undefined ? null : l.group_size,
        drop_prob: l.drop_prob === undefined ? null : l.drop_prob,
      };
    }),
    json: net.toJSON().layers,
  };
});
process.stdout.write(JSON.stringify(out));
"""

CONVNETJS_NETS = [
    SMALL_NET,
    [
        {"type": "input", "out_sx": 11, "out_sy": 9, "out_depth": 3},
        {
            "type": "conv",
            "sx": 5,
            "sy": 3,
            "filters": 6,
            "stride": 3,
            "pad": 2,
            "activation": "maxout",
            "group_size": 3,
            "l1_decay_mul": 0.5,
            "l2_decay_mul": 2,
        },
        {"type": "lrn", "k": 1, "n": 3, "alpha": 0.1, "beta": 0.75},
        {"type": "pool", "sx": 3, "sy": 2, "stride": 1, "pad": 1},
        {"type": "fc", "filters": 5, "activation": "sigmoid", "bias_pref": -0.25},
        {"type": "svm", "num_classes": 3},
    ],
    [
        {"type": "input", "in_sx": 1, "in_sy": 1, "in_depth": 10},
        {"type": "fc", "num_neurons": 8, "activation": "relu"},
        {"type": "dropout", "drop_prob": 0.2},
        {"type": "fc", "num_neurons": 7, "activation": "maxout"},
        {"type": "tanh"},
        {"type": "conv", "sx": 1, "filters": 4, "activation": "relu", "bias_pref": 0},
        {"type": "regression", "num_neurons": 2},
    ],
]


def _convnetjs_build(nets: list) -> list:
    return run_node(_NODE_SCRIPT, nets)


def test_matches_convnetjs():
    results = _convnetjs_build(CONVNETJS_NETS)
    assert len(results) == len(CONVNETJS_NETS)
    for n, (defs, ref) in enumerate(zip(CONVNETJS_NETS, results, strict=True)):
        spec = expand(defs)
        assert types(spec) == [r["type"] for r in ref["layers"]], n
        assert sum(r["num_params"] for r in ref["layers"]) == spec.num_params, n
        for i, (layer, r) in enumerate(zip(spec.layers, ref["layers"], strict=True)):
            where = f"net {n} layer {i} ({layer.type})"
            assert layer.out_shape == (r["out_sy"], r["out_sx"], r["out_depth"]), where
            assert sum(math.prod(s) for _, s in layer.param_shapes()) == r["num_params"], where
            if layer.type in ("conv", "fc"):
                n_filters = layer.out_shape[2]
                assert r["decay"] == [[layer.l1_decay_mul, layer.l2_decay_mul]] * n_filters + [[0, 0]], where
                assert r["biases"] == pytest.approx([layer.bias_pref] * n_filters), where
            else:
                assert r["decay"] == [], where
            if layer.type == "maxout":
                assert layer.group_size == r["group_size"], where
            if layer.type == "dropout":
                assert layer.drop_prob == pytest.approx(r["drop_prob"]), where

        # ConvNetJS's own toJSON (weights included) reads as the same net in the expanded form.
        imported = Spec.from_json(ref["json"])
        assert types(imported) == types(spec), n
        for ours, theirs in zip(spec.layers, imported.layers, strict=True):
            assert ours.in_shape == theirs.in_shape, n
            assert ours.out_shape == theirs.out_shape, n
            if ours.type in ("conv", "fc"):
                assert (theirs.l1_decay_mul, theirs.l2_decay_mul) == (ours.l1_decay_mul, ours.l2_decay_mul)
        assert imported.num_params == spec.num_params


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("defs", "got"), [("abc", "'abc'"), (5, "5"), ({"type": "input"}, "{'type'")])
def test_error_not_a_list(defs, got):
    err = spec_error(defs)
    check_error(err, index=None, field=None, expected="a list of layer definitions", got=got)


@pytest.mark.parametrize("defs", [[], [inp(2, 2, 1)]])
def test_error_fewer_than_two_layers(defs):
    err = spec_error(defs)
    check_error(
        err,
        index=None,
        field=None,
        expected="at least an input layer and a loss layer",
        got=f"'{len(defs)} layer(s)'",
    )


def test_error_too_many_layers():
    defs = [inp(2, 2, 1)] + [{"type": "relu"}] * 300 + [SOFTMAX3]
    err = spec_error(defs)
    check_error(err, index=None, field=None, expected="at most 256 layers", got="302")


def test_error_layer_not_an_object():
    err = spec_error([inp(2, 2, 1), 5, SOFTMAX3])
    check_error(err, index=1, field=None, expected="a JSON object with a 'type'", got="5")


def test_error_first_layer_not_input():
    err = spec_error([{"type": "fc", "num_neurons": 3}, SOFTMAX3])
    check_error(
        err, index=0, layer_type="fc", field="type", expected="the first layer to be 'input'", got="'fc'"
    )


def test_error_input_not_first():
    err = spec_error([inp(2, 2, 1), inp(2, 2, 1), SOFTMAX3])
    check_error(err, index=1, field="type", expected="'input' only as the first layer", got="'input'")


@pytest.mark.parametrize("bad", ["convolution", "Conv", "", None])
def test_error_unknown_type(bad):
    err = spec_error([inp(2, 2, 1), {"type": bad, "sx": 3}, SOFTMAX3])
    msg = check_error(err, index=1, field="type", expected="one of input, conv, fc, pool")
    for name in ("relu", "dropout", "lrn", "softmax", "svm", "regression"):
        assert name in msg
    if bad is not None:
        assert f"got {bad!r}" in msg


@pytest.mark.parametrize("bad", [["fc"], {"name": "fc"}])
def test_error_unhashable_type(bad):
    err = spec_error([inp(2, 2, 1), {"type": bad, "num_neurons": 3}, SOFTMAX3])
    check_error(err, index=1, field="type", expected="one of input, conv")


def test_error_quadtransform_refused():
    err = spec_error([inp(2, 2, 1), {"type": "quadtransform"}, SOFTMAX3])
    msg = check_error(err, index=1, field="type", expected="one of input", got="'quadtransform'")
    assert "quadtransform is not supported" in msg


def test_error_tensor_refused():
    err = spec_error([inp(2, 2, 1), {"type": "fc", "num_neurons": 3, "tensor": True}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type="fc", field="tensor", expected="no 'tensor'", got="True")
    assert "quadtransform" in msg


def test_tensor_false_is_ignored():
    spec = expand([inp(2, 2, 1), {"type": "fc", "num_neurons": 3, "tensor": False}, SOFTMAX3])
    assert types(spec) == ["input", "fc", "fc", "softmax"]


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_error_missing_num_classes(loss):
    err = spec_error([inp(2, 2, 1), {"type": loss}])
    msg = check_error(
        err, index=1, layer_type=loss, field="num_classes", expected="the number of classes (an integer >= 2)"
    )
    assert "add 'num_classes'" in msg


def test_error_regression_missing_num_neurons():
    err = spec_error([inp(2, 2, 1), {"type": "regression"}])
    msg = check_error(err, index=1, layer_type="regression", field="num_neurons", expected="the number of")
    assert "add 'num_neurons'" in msg


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_error_classifier_with_one_class(loss):
    err = spec_error([inp(2, 2, 1), {"type": "relu"}, {"type": loss, "num_classes": 1}])
    check_error(err, index=2, layer_type=loss, field="num_classes", expected="an integer >= 2", got="1")


def test_regression_with_one_output_is_fine():
    spec = expand([inp(2, 2, 1), {"type": "regression", "num_neurons": 1}])
    assert spec.num_outputs == 1


@pytest.mark.parametrize("num_classes", [1, 0])
def test_error_bad_num_classes_names_the_field(num_classes):
    err = spec_error([inp(2, 2, 1), {"type": "softmax", "num_classes": num_classes}])
    check_error(err, index=1, layer_type="softmax", field="num_classes", expected="", got=str(num_classes))


@pytest.mark.parametrize("layer", [{"type": "conv", "sx": 3, "filters": 2}, {"type": "pool", "sx": 2}])
def test_error_negative_pad(layer):
    err = spec_error([inp(6, 6, 1), {**layer, "pad": -1}, SOFTMAX3])
    check_error(err, index=1, layer_type=layer["type"], field="pad", expected="an integer >= 0", got="-1")


@pytest.mark.parametrize(
    ("layer", "field", "bad", "got"),
    [
        ({"type": "conv", "filters": 2}, "sx", 0, "0"),
        ({"type": "conv", "filters": 2}, "sx", -3, "-3"),
        ({"type": "conv", "filters": 2}, "sx", 2.5, "2.5"),
        ({"type": "conv", "filters": 2}, "sx", True, "True"),
        ({"type": "conv", "filters": 2}, "sx", "3", "'3'"),
        ({"type": "conv", "filters": 2}, "sx", None, "None"),
        ({"type": "conv", "filters": 2}, "sx", float("inf"), "inf"),
        ({"type": "conv", "sx": 3}, "filters", 0, "0"),
        ({"type": "conv", "sx": 3}, "filters", 1.5, "1.5"),
        ({"type": "conv", "sx": 3, "filters": 2}, "sy", False, "False"),
        ({"type": "conv", "sx": 3, "filters": 2}, "stride", 0, "0"),
        ({"type": "pool"}, "sx", 0, "0"),
        ({"type": "pool"}, "sx", True, "True"),
        ({"type": "pool", "sx": 2}, "stride", "2", "'2'"),
        ({"type": "fc"}, "num_neurons", 0, "0"),
        ({"type": "fc"}, "num_neurons", 1.5, "1.5"),
        ({"type": "fc"}, "filters", "4", "'4'"),
        ({"type": "maxout"}, "group_size", 0, "0"),
    ],
)
def test_error_bad_integer_field(layer, field, bad, got):
    err = spec_error([inp(6, 6, 2), {**layer, field: bad}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type=layer["type"], field=field, expected="an integer >= 1")
    if bad is not None:  # None is shown without a "got"
        assert f"got {got}" in msg


@pytest.mark.parametrize(("field", "bad"), [("out_sx", 0), ("out_sy", 2.5), ("out_depth", True)])
def test_error_bad_input_size(field, bad):
    defs = [inp(4, 4, 1), SOFTMAX3]
    defs[0] = {**defs[0], field: bad}
    err = spec_error(defs)
    check_error(err, index=0, layer_type="input", field=field, expected="an integer >= 1", got=repr(bad))


def test_error_missing_required_field():
    err = spec_error([inp(6, 6, 1), {"type": "conv", "sx": 3}, SOFTMAX3])
    msg = check_error(
        err, index=1, layer_type="conv", field="filters", expected="this field (it is required)"
    )
    assert "add 'filters'" in msg
    err = spec_error([inp(6, 6, 1), {"type": "pool", "stride": 1}, SOFTMAX3])
    check_error(err, index=1, layer_type="pool", field="sx", expected="this field (it is required)")


def test_error_conv_filter_larger_than_padded_input():
    err = spec_error([inp(4, 4, 1), {"type": "conv", "sx": 7, "pad": 1, "filters": 2}, SOFTMAX3])
    check_error(
        err,
        index=1,
        layer_type="conv",
        field="sx",
        expected="a filter no larger than the padded input (4 + 2*1 = 6)",
        got="7",
    )


def test_error_conv_filter_taller_than_input():
    err = spec_error([inp(8, 2, 1), {"type": "conv", "sx": 3, "filters": 2}, SOFTMAX3])
    check_error(
        err,
        index=1,
        layer_type="conv",
        field="sy",
        expected="a filter no larger than the padded input (2 + 2*0 = 2)",
        got="3",
    )


def test_conv_filter_equal_to_padded_input_is_fine():
    spec = expand([inp(4, 4, 1), {"type": "conv", "sx": 6, "pad": 1, "filters": 2}, SOFTMAX3])
    assert spec.layers[1].out_shape == (1, 1, 2)


def test_error_pool_shrinks_below_1x1():
    err = spec_error([inp(3, 3, 1), {"type": "pool", "sx": 5}, SOFTMAX3])
    msg = check_error(
        err,
        index=1,
        layer_type="pool",
        field="sx",
        expected="a window no larger than the padded input (3 + 2*0 = 3)",
        got="5",
    )
    assert "below 1x1" in msg


def test_error_pool_stack_shrinks_below_1x1():
    pool = {"type": "pool", "sx": 2}
    err = spec_error([inp(4, 4, 1), pool, pool, {"type": "relu"}, pool, SOFTMAX3])
    check_error(err, index=4, layer_type="pool", field="sx", expected="a window no larger", got="2")


@pytest.mark.parametrize(("sx", "pad"), [(2, 2), (3, 3), (2, 5)])
def test_error_pool_pad_not_smaller_than_window(sx, pad):
    err = spec_error([inp(6, 6, 1), {"type": "pool", "sx": sx, "pad": pad}, SOFTMAX3])
    check_error(
        err,
        index=1,
        layer_type="pool",
        field="pad",
        expected=f"a padding smaller than the window (sx={sx})",
        got=str(pad),
    )


def test_pool_pad_smaller_than_window_is_fine():
    spec = expand([inp(6, 6, 1), {"type": "pool", "sx": 2, "pad": 1}, SOFTMAX3])
    assert spec.layers[1].out_shape == (4, 4, 1)


def test_error_unknown_field_typo():
    err = spec_error([inp(6, 6, 1), {"type": "conv", "sx": 3, "filters": 2, "strid": 2}, SOFTMAX3])
    msg = check_error(
        err, index=1, layer_type="conv", field="strid", expected="one of the fields", got="'strid'"
    )
    assert "stride" in msg
    assert "remove or correct the field" in msg


def test_error_unknown_field_on_expanded_layer():
    out = expand([inp(2, 2, 1), {"type": "relu"}, SOFTMAX3]).to_json()
    out[1]["group_size"] = 2
    err = spec_error(out)
    check_error(err, index=1, layer_type="relu", field="group_size", expected="one of the fields")


@pytest.mark.parametrize(
    ("layer", "typo", "meant"),
    [
        ({"type": "conv", "sx": 3, "filtres": 2}, "filtres", "filters"),  # not "missing 'filters'"
        ({"type": "fc", "num_nerons": 3}, "num_nerons", "num_neurons"),
        ({"type": "conv", "sx": 3, "filters": 2, "activaton": "relu"}, "activaton", "activation"),
        ({"type": "fc", "num_neurons": 3, "drop_porb": 0.5}, "drop_porb", "drop_prob"),
    ],
)
def test_error_misspelt_field_is_unknown_with_the_closest_name(layer, typo, meant):
    err = spec_error([inp(6, 6, 1), layer, SOFTMAX3])
    msg = str(err)
    assert msg.startswith(f"layer 1 ({layer['type']}): unknown field '{typo}' (did you mean '{meant}'?)"), msg
    assert err.field == typo and "expected one of the fields" in msg


def test_error_misspelt_num_classes_and_expanded_field():
    err = spec_error([inp(6, 6, 1), {"type": "softmax", "num_clases": 3}])
    assert "unknown field 'num_clases' (did you mean 'num_classes'?)" in str(err)
    out = expand([inp(2, 2, 1), {"type": "fc", "num_neurons": 3}, SOFTMAX3]).to_json()
    out[1]["out_dept"] = out[1].pop("out_depth")
    err = spec_error(out)
    assert str(err).startswith("layer 1 (fc): unknown field 'out_dept' (did you mean 'out_depth'?)"), err


def test_error_missing_field_names_the_stray_key_too_short_to_match():
    # 'sz' is as close to 'sx' as to 'sy': no guess, but the missing 'sx' names it
    err = spec_error([inp(6, 6, 1), {"type": "pool", "sz": 2}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type="pool", field="sx", expected="this field (it is required)")
    assert "add 'sx' (not 'sz': a field of no pool layer)" in msg


def test_error_unknown_field_without_a_close_name_lists_the_fields():
    err = spec_error([inp(6, 6, 1), {"type": "conv", "sx": 3, "filters": 2, "colour": "red"}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type="conv", field="colour", expected="one of the fields")
    assert "did you mean" not in msg and "filters, in_depth" in msg


def test_error_bias_pref_on_layer_without_biases():
    err = spec_error([inp(6, 6, 1), {"type": "pool", "sx": 2, "bias_pref": 0.1}, SOFTMAX3])
    check_error(err, index=1, layer_type="pool", field="bias_pref", expected="bias_pref only on fc and conv")


def test_error_group_size_without_maxout():
    err = spec_error([inp(6, 6, 1), {"type": "fc", "num_neurons": 4, "group_size": 2}, SOFTMAX3])
    check_error(err, index=1, layer_type="fc", field="group_size", expected="group_size only with")


@pytest.mark.parametrize("act", ["softplus", "Relu", "linear"])
def test_error_unknown_activation(act):
    err = spec_error([inp(6, 6, 1), {"type": "fc", "num_neurons": 4, "activation": act}, SOFTMAX3])
    check_error(
        err,
        index=1,
        layer_type="fc",
        field="activation",
        expected="one of relu, sigmoid, tanh, maxout",
        got=repr(act),
    )


def test_error_loss_layer_not_last():
    err = spec_error([inp(6, 6, 1), SOFTMAX3, {"type": "fc", "num_neurons": 2}, SOFTMAX3])
    check_error(
        err,
        index=1,
        layer_type="softmax",
        field="type",
        expected="a loss layer (softmax, seqsoftmax, svm, regression) only last",
        got="'softmax'",
    )


def test_error_loss_followed_by_sugar():
    # drop_prob on a loss layer appends a dropout after it.
    err = spec_error([inp(6, 6, 1), {**SOFTMAX3, "drop_prob": 0.5}])
    check_error(err, index=1, layer_type="softmax", field="type", expected="a loss layer")


@pytest.mark.parametrize(
    "last", [{"type": "fc", "num_neurons": 2}, {"type": "relu"}, {"type": "pool", "sx": 2}]
)
def test_error_last_layer_not_loss(last):
    err = spec_error([inp(6, 6, 1), last])
    msg = check_error(
        err,
        index=1,
        layer_type=last["type"],
        field="type",
        expected="the last layer to be softmax, seqsoftmax, svm or regression",
        got=repr(last["type"]),
    )
    assert "fix:" in msg


@pytest.mark.parametrize(
    ("bad", "expected", "got"),
    [
        (0, "a probability in (0, 1)", "0.0"),
        (1.5, "a number < 1.0", "1.5"),
        (1, "a number < 1.0", "1.0"),
        (-0.1, "a number >= 0.0", "-0.1"),
        (float("nan"), "a finite number", "nan"),
        ("0.5", "a number", "'0.5'"),
    ],
)
@pytest.mark.parametrize("form", ["sugar", "layer"])
def test_error_drop_prob_out_of_range(bad, expected, got, form):
    layer = (
        {"type": "fc", "num_neurons": 4, "drop_prob": bad}
        if form == "sugar"
        else {"type": "dropout", "drop_prob": bad}
    )
    err = spec_error([inp(2, 2, 1), layer, SOFTMAX3])
    check_error(err, index=1, layer_type="dropout", field="drop_prob", expected=expected, got=got)


@pytest.mark.parametrize(
    ("layer", "field"),
    [
        ({"type": "fc", "num_neurons": 4}, "bias_pref"),
        ({"type": "fc", "num_neurons": 4}, "l2_decay_mul"),
        ({"type": "conv", "sx": 1, "filters": 4}, "l1_decay_mul"),
        ({"type": "lrn", "k": 1, "n": 3, "alpha": 1, "beta": 1}, "alpha"),
        ({"type": "lrn", "k": 1, "n": 3, "alpha": 1, "beta": 1}, "beta"),
        ({"type": "lrn", "k": 1, "n": 3, "alpha": 1, "beta": 1}, "k"),
    ],
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_error_non_finite_number(layer, field, bad):
    err = spec_error([inp(2, 2, 3), {**layer, field: bad}, SOFTMAX3])
    check_error(
        err, index=1, layer_type=layer["type"], field=field, expected="a finite number", got=repr(bad)
    )


def test_error_nan_integer_field():
    err = spec_error([inp(2, 2, 3), {"type": "fc", "num_neurons": float("nan")}, SOFTMAX3])
    check_error(err, index=1, layer_type="fc", field="num_neurons", expected="an integer >= 1", got="nan")


def test_error_negative_decay_mul():
    err = spec_error([inp(2, 2, 3), {"type": "fc", "num_neurons": 4, "l2_decay_mul": -1}, SOFTMAX3])
    check_error(err, index=1, layer_type="fc", field="l2_decay_mul", expected="a number >= 0.0", got="-1.0")


def test_error_maxout_group_size_larger_than_depth():
    err = spec_error(
        [inp(2, 2, 1), {"type": "fc", "num_neurons": 3, "activation": "maxout", "group_size": 4}, SOFTMAX3]
    )
    check_error(
        err, index=1, layer_type="maxout", field="group_size", expected="at most the input depth 3", got="4"
    )
    err = spec_error([inp(2, 2, 5), {"type": "maxout", "group_size": 6}, SOFTMAX3])
    check_error(
        err, index=1, layer_type="maxout", field="group_size", expected="at most the input depth 5", got="6"
    )


def test_error_lrn_missing_k():
    err = spec_error([inp(2, 2, 3), {"type": "lrn", "n": 3, "alpha": 1e-4, "beta": 0.75}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type="lrn", field="k", expected="this field (it is required)")
    assert "add 'k'" in msg


def test_error_lrn_k_not_positive():
    err = spec_error([inp(2, 2, 3), {"type": "lrn", "k": 0, "n": 3, "alpha": 1, "beta": 1}, SOFTMAX3])
    check_error(err, index=1, layer_type="lrn", field="k", expected="a number > 0", got="0.0")


def test_error_mixing_forms_definitions_first():
    err = spec_error([inp(2, 2, 1), {"layer_type": "fc", "out_depth": 3}, SOFTMAX3])
    msg = check_error(err, index=1, layer_type="fc", field="type", expected="every layer in the same form")
    assert "'layer_type'" in msg


def test_error_mixing_forms_expanded_first():
    err = spec_error([{"layer_type": "input", "out_sx": 2, "out_sy": 2, "out_depth": 1}, SOFTMAX3])
    check_error(err, index=0, layer_type="input", field="type", expected="every layer in the same form")


def test_error_definition_given_to_from_expanded():
    with pytest.raises(SpecError) as info:
        from_expanded([{"layer_type": "input", "out_sx": 2, "out_sy": 2, "out_depth": 1}, SOFTMAX3])
    check_error(info.value, index=1, field="layer_type", expected="one of input, conv")


def test_error_mixing_forms_in_one_layer():
    err = spec_error([inp(2, 2, 1), {"type": "fc", "num_neurons": 3, "layer_type": "bogus"}, SOFTMAX3])
    assert err.index == 1
    assert "layer 1" in str(err)


def test_error_too_many_parameters():
    defs = [inp(1, 1, 4), {"type": "fc", "num_neurons": 5}, SOFTMAX3]
    n = (4 * 5 + 5) + (5 * 3 + 3)
    assert Spec.from_json(defs, max_params=n).num_params == n
    err = spec_error(defs, max_params=n - 1)
    msg = check_error(err, index=None, field=None, expected=f"at most {n - 1} parameters", got=str(n))
    assert "fix:" in msg
    with pytest.raises(SpecError, match="at most 10 parameters"):
        expand(defs, max_params=10)


def test_error_too_many_activations():
    err = spec_error([inp(5000, 5000, 1), SOFTMAX3])
    check_error(err, index=0, layer_type="input", field=None, expected="at most 20000000 output values")


def _expanded_net() -> list[dict]:
    return expand(
        [
            inp(9, 7, 2),
            {"type": "conv", "sx": 3, "filters": 4, "stride": 2, "activation": "relu"},
            {"type": "pool", "sx": 2, "stride": 1},
            {"type": "fc", "num_neurons": 5},
            SOFTMAX3,
        ]
    ).to_json()


@pytest.mark.parametrize(
    ("index", "field", "bad", "ours"),
    [
        (1, "out_sx", 5, 4),  # conv: (9-3)//2+1 = 4 wide
        (1, "out_sy", 4, 3),  # conv: (7-3)//2+1 = 3 high
        (1, "in_depth", 3, 2),
        (2, "out_depth", 5, 4),  # relu keeps the depth
        (3, "out_sx", 4, 3),  # pool stride 1
        (3, "in_depth", 1, 4),
        (4, "out_sx", 2, 1),  # fc is 1x1
        (4, "num_inputs", 13, 24),  # 2*3*4
        (6, "out_depth", 4, 3),  # softmax: its input size
    ],
)
def test_error_expanded_declared_shape_mismatch(index, field, bad, ours):
    out = _expanded_net()
    assert Spec.from_json(out)  # valid as is
    assert out[index][field] == ours
    out[index][field] = bad
    err = spec_error(out)
    check_error(
        err,
        index=index,
        layer_type=out[index]["layer_type"],
        field=field,
        expected=f"{ours} (",
        got=str(bad),
    )
