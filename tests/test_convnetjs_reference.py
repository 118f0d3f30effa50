"""mlitb against the real ConvNetJS (npm convnetjs 0.3.0, run in node).

Both directions: a net built and trained by ConvNetJS predicts the same after
import into mlitb, and a net made by mlitb predicts the same inside ConvNetJS.
The backward pass is compared too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_NET, run_convnetjs

from mlitb.model import Model
from mlitb.model.jsonfloats import dumps

pytestmark = [pytest.mark.node, pytest.mark.slow]

SHAPE = [7, 8, 2]  # (sy, sx, depth) of SMALL_NET's input


def _data(rng, n):
    x = rng.standard_normal((n, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 4, n)
    return x, y


def test_convnetjs_trained_net_predicts_the_same_in_mlitb(rng):
    x_train, y_train = _data(rng, 40)
    res = run_convnetjs(
        {
            "task": "train",
            "layer_defs": SMALL_NET,
            "data": {"x": x_train.reshape(40, -1).tolist(), "y": y_train.tolist(), "shape": SHAPE},
            "trainer": {"method": "adagrad", "learning_rate": 0.05, "batch_size": 4, "l2_decay": 0.001},
            "epochs": 2,
        }
    )
    net_json = res["net"]
    # JSON.stringify of typed arrays gives the {"0": ..} object form: the import must read it.
    assert isinstance(net_json["layers"][1]["filters"][0]["w"], dict)
    model = Model.from_json(net_json)
    assert [layer.type for layer in model.spec.layers] == [
        "input", "conv", "relu", "pool", "conv", "tanh", "fc", "sigmoid", "dropout",
        "fc", "tanh", "fc", "softmax",
    ]  # fmt: skip
    x_test = rng.standard_normal((120, *SHAPE)).astype(np.float32)
    ref = np.array(
        run_convnetjs(
            {"task": "predict", "net": net_json, "x": x_test.reshape(120, -1).tolist(), "shape": SHAPE}
        )["out"]
    )
    ours = model.predict(x_test)
    assert ours.shape == (120, 4)
    assert np.abs(ours - ref).max() <= 1e-5
    # Training moved the weights away from their initial distribution: not a trivial net.
    assert np.isfinite(res["losses"]).all()


def test_mlitb_model_predicts_the_same_in_convnetjs(rng):
    model = Model.from_spec(SMALL_NET, seed=7, labels=["a", "b", "c", "d"])
    net_json = json.loads(dumps(model.to_json("convnetjs")))
    x = rng.standard_normal((100, *SHAPE)).astype(np.float32)
    ref = np.array(
        run_convnetjs({"task": "predict", "net": net_json, "x": x.reshape(100, -1).tolist(), "shape": SHAPE})[
            "out"
        ]
    )
    assert np.abs(model.predict(x) - ref).max() <= 1e-5


@pytest.mark.parametrize(
    "defs",
    [
        [  # conv, pool with padding, relu, sigmoid, tanh, softmax
            {"type": "input", "out_sx": 6, "out_sy": 5, "out_depth": 3},
            {"type": "conv", "sx": 3, "filters": 4, "stride": 2, "pad": 2, "activation": "relu"},
            {"type": "pool", "sx": 3, "stride": 1, "pad": 1},
            {"type": "fc", "num_neurons": 5, "activation": "sigmoid"},
            {"type": "fc", "num_neurons": 4, "activation": "tanh"},
            {"type": "softmax", "num_classes": 3},
        ],
        [  # maxout on a conv volume, svm
            {"type": "input", "out_sx": 5, "out_sy": 5, "out_depth": 2},
            {"type": "conv", "sx": 2, "filters": 6, "activation": "maxout", "group_size": 3},
            {"type": "fc", "num_neurons": 6, "activation": "maxout"},
            {"type": "svm", "num_classes": 3},
        ],
    ],
    ids=["conv-pool-pad", "maxout-svm"],
)
def test_backward_pass_matches_convnetjs(defs, rng):
    """Summed gradients over a batch equal ConvNetJS's accumulated dw (getParamsAndGrads order)."""
    model = Model.from_spec(defs, seed=11)
    h, w, d = model.spec.input_shape
    x = rng.standard_normal((6, h, w, d)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    ref = run_convnetjs(
        {
            "task": "gradients",
            "layer_defs": defs,
            "params": model.params.tolist(),
            "x": x.reshape(6, -1).tolist(),
            "y": y.tolist(),
            "shape": [h, w, d],
        }
    )
    grad, count, loss = model.executor().gradient(x, y)
    assert count == 6
    np.testing.assert_allclose(grad, np.array(ref["grad"]), rtol=1e-4, atol=2e-5)
    assert loss == pytest.approx(ref["loss"], rel=1e-5)
