"""Model files: ConvNetJS JSON (both forms of `w`), mlitb's own format, the MLitB
prototype's saved models, ONNX; exact round trips and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL_NET

from mlitb.model import FormatError, Model
from mlitb.model.jsonfloats import dumps, floats_text


@pytest.fixture
def model():
    return Model.from_spec(SMALL_NET, seed=3, labels=["cat", "dog", "bird", "fish"])


def _same(a: Model, b: Model) -> None:
    assert a.spec == b.spec
    assert a.labels == b.labels
    assert a.params.dtype == b.params.dtype == np.float32
    assert np.array_equal(a.params.view(np.uint32), b.params.view(np.uint32))


@pytest.mark.parametrize("fmt", ["convnetjs", "mlitb"])
def test_round_trip_is_exact(model, fmt, tmp_path):
    path = tmp_path / f"m.{fmt}.json"
    model.save(path, format=fmt)
    again = Model.load(path)
    _same(model, again)
    again.save(tmp_path / "again.json", format=fmt)
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_round_trip_exact_for_awkward_floats(tmp_path):
    model = Model.from_spec(SMALL_NET, seed=0)
    special = np.array([1e-45, -1e-45, 3.4028235e38, -0.0, 1 / 3, 16777217.0, 1.1754944e-38], np.float32)
    model.params[: special.size] = special
    rng = np.random.default_rng(0)
    model.params[special.size :] = (
        rng.standard_normal(model.num_params - special.size).astype(np.float32) * 1e3
    )
    model.save(tmp_path / "m.json")
    _same(model, Model.load(tmp_path / "m.json"))


def test_floats_text_is_short():
    assert floats_text(np.array([0.1, 1.0, -2.5], np.float32)) == "[0.1,1.0,-2.5]"
    with pytest.raises(FormatError, match="non-finite"):
        floats_text(np.array([1.0, np.nan], np.float32))


def test_convnetjs_object_form_of_w(model):
    data = json.loads(dumps(model.to_json("convnetjs")))
    for layer in data["layers"]:
        for vol in [*layer.get("filters", []), *([layer["biases"]] if "biases" in layer else [])]:
            vol["w"] = {str(i): v for i, v in enumerate(vol["w"])}
    _same(model, Model.from_json(data))


def test_convnetjs_file_layout_is_convnetjs(model):
    """Filter f of a conv is a Vol(sx, sy, in_depth) with index ((sx*y)+x)*depth+d."""
    data = json.loads(dumps(model.to_json("convnetjs")))
    conv = data["layers"][1]
    assert conv["layer_type"] == "conv" and len(conv["filters"]) == 4
    vol = conv["filters"][2]
    assert (vol["sx"], vol["sy"], vol["depth"]) == (3, 3, 2)
    w = np.array(vol["w"], np.float32)
    flat = model.params[2 * 18 : 3 * 18].reshape(3, 3, 2)  # [sy, sx, depth]
    x, y, d = 2, 1, 1
    assert w[((3 * y) + x) * 2 + d] == flat[y, x, d]
    assert data["labels"] == ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["layers"][1]["filters"].pop(), "expected 4 filters, got 3"),
        (lambda d: d["layers"][1]["filters"][0]["w"].pop(), "expected 18 numbers, got 17"),
        (lambda d: d["layers"][1]["filters"][0].update(sx=2), "expected a Vol of sx, sy, depth"),
        (lambda d: d["layers"][1]["biases"]["w"].__setitem__(0, None), "null is what JSON makes of NaN"),
        (lambda d: d["layers"][1]["biases"]["w"].__setitem__(0, 1e39), "outside the float32 range"),
        (lambda d: d["layers"][1]["filters"][0].__setitem__("w", {"0": 1, "5": 2}), "keys '0'"),
        (lambda d: d.update(labels=["a"]), "'labels' must be a list of 4 strings"),
    ],
)
def test_corrupt_convnetjs_files_are_refused(model, mutate, message):
    data = json.loads(dumps(model.to_json("convnetjs")))
    mutate(data)
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Model.from_json(data)


def test_convnetjs_declared_sizes_are_checked(model):
    from mlitb.model import SpecError

    data = json.loads(dumps(model.to_json("convnetjs")))
    data["layers"][3]["out_sx"] = 99
    with pytest.raises(SpecError, match=r"layer 3 \(pool\), field 'out_sx': expected 4"):
        Model.from_json(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d["params"].update(sha256="0" * 64), "sha256 does not match"),
        (lambda d: d["params"].update(count=3), "count 3 does not match"),
        (lambda d: d["params"].update(base64="!!"), "base64 is corrupt"),
        (lambda d: d["params"].update(dtype="float64"), "little-endian float32"),
    ],
)
def test_corrupt_native_files_are_refused(model, mutate, message):
    data = model.to_json("mlitb")
    mutate(data)
    with pytest.raises(FormatError, match=message):
        Model.from_json(data)


def test_not_a_model_file(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(FormatError, match="not a model file"):
        Model.load(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        Model.load(tmp_path / "y.json")


def test_bare_spec_loads_with_seed_zero(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"layer_defs": SMALL_NET}))
    m = Model.load(tmp_path / "spec.json")
    assert np.array_equal(m.params, Model.from_spec(SMALL_NET, seed=0).params)


# -- the MLitB prototype ---------------------------------------------------------------
def _prototype_file(rng):
    """A model as the 2015 prototype saved it: planar Vols, params as a list of arrays."""
    configs = [
        {"sx": 6, "sy": 4, "depth": 2, "type": "input", "conf_idx": 0},
        {"sx": 3, "stride": 1, "pad": 1, "filters": 3, "activation": "relu", "type": "conv",
         "in_sx": 6, "in_sy": 4, "in_depth": 2, "in_neurons": 48},
        {"sx": 2, "stride": 2, "type": "pool", "in_sx": 6, "in_sy": 4, "in_depth": 3},
        {"type": "fc", "num_neurons": 5, "activation": "sigmoid", "in_neurons": 18},
        {"type": "fc", "num_neurons": 3, "activation": "softmax", "in_neurons": 5},
    ]  # fmt: skip
    params = [rng.standard_normal(18).tolist() for _ in range(3)]  # conv filters 3x3x2
    params += [rng.standard_normal(3).tolist()]  # conv biases
    params += [rng.standard_normal(5 * 18).tolist(), rng.standard_normal(5).tolist()]
    params += [rng.standard_normal(3 * 5).tolist(), rng.standard_normal(3).tolist()]
    return {"params": params, "configs": configs, "label2index": {"a": 0, "b": 1, "c": 2},
            "index2label": {"0": "a", "1": "b", "2": "c"}}  # fmt: skip


def _prototype_forward(f, x_planar):
    """The prototype's arithmetic, transcribed: planar Vols (d, y, x), fc index i*in+j."""
    p = [np.array(a) for a in f["params"]]
    d_in, h, w = x_planar.shape
    xp = np.pad(x_planar, ((0, 0), (1, 1), (1, 1)))
    conv = np.zeros((3, h, w))
    for o in range(3):
        filt = p[o].reshape(d_in, 3, 3)  # element (x, y, d) at x + 3y + 9d
        for y in range(h):
            for xx in range(w):
                conv[o, y, xx] = p[3][o] + np.sum(filt * xp[:, y : y + 3, xx : xx + 3])
    conv = np.maximum(conv, 0)
    pool = conv.reshape(3, h // 2, 2, w // 2, 2).max(axis=(2, 4))
    v = pool.ravel()  # planar index x + sx*y + sx*sy*d
    hid = 1 / (1 + np.exp(-(p[4].reshape(5, 18) @ v + p[5])))
    logits = p[6].reshape(3, 5) @ hid + p[7]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_prototype_model_predicts_as_the_prototype_did(rng):
    f = _prototype_file(rng)
    model = Model.from_json(json.loads(json.dumps(f)))
    assert model.labels == ["a", "b", "c"]
    assert [layer.type for layer in model.spec.layers] == [
        "input", "conv", "relu", "pool", "fc", "sigmoid", "fc", "softmax",
    ]  # fmt: skip
    x = rng.standard_normal((5, 4, 6, 2)).astype(np.float32)  # NHWC
    ours = model.predict(x)
    for i in range(5):
        ref = _prototype_forward(f, x[i].transpose(2, 0, 1).astype(np.float64))
        assert np.abs(ours[i] - ref).max() < 1e-5
    # Wrapped as {"data": ...} (the MLITB tree's loader expects that) loads the same.
    _same(model, Model.from_json({"data": f}))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f["configs"][3].update(activation="tanh"), "never implemented"),
        (lambda f: f["configs"][2].update(pool_type="avg"), "average pooling"),
        (lambda f: f["configs"][2].update(pad=1), "pool with pad > 0 is refused"),
        (lambda f: f["configs"][1].update(in_sx=5), "older prototype version"),
        (lambda f: f["params"].pop(), "too few params arrays"),
        (lambda f: f["params"].append([1.0]), "params arrays, the configs need"),
        (lambda f: f["params"][4].pop(), "expected 90 numbers"),
        (lambda f: f["configs"][3].update(weightMult=0.5), "weightMult"),
        (lambda f: f["configs"][1].update(type="lrn"), "unsupported layer type"),
        (lambda f: f["index2label"].pop("2"), "index2label"),
    ],
)
def test_prototype_refusals(rng, mutate, message):
    f = _prototype_file(rng)
    mutate(f)
    with pytest.raises(FormatError, match=message):
        Model.from_json(f)


def test_prototype_rounding_up_is_refused(rng):
    f = _prototype_file(rng)
    f["configs"][0]["sx"] = 7  # pool: (7 - 2) / 2 + 1 = 3.5 -> the prototype made 4 windows
    f["configs"][1]["in_sx"] = 7
    f["configs"][1].pop("in_neurons")
    f["configs"][2]["in_sx"] = 7
    with pytest.raises(FormatError, match=r"rounded the output size 3\.5 up to 4"):
        Model.from_json(f)
