"""ONNX export checked with onnxruntime, and the `mlitb model` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ROOT, SMALL_NET

from mlitb.model import Model


@pytest.mark.parametrize("seed", [0, 1])
def test_onnx_export_predicts_the_same(tmp_path, seed):
    defs = [
        *SMALL_NET[:-1],
        {"type": "lrn", "k": 1.0, "n": 3, "alpha": 0.1, "beta": 0.75},
        {"type": "fc", "num_neurons": 6, "activation": "maxout", "group_size": 2},
        SMALL_NET[-1],
    ]
    model = Model.from_spec(defs, seed=seed)
    model.save(tmp_path / "m.onnx", format="onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((37, 7, 8, 2)).astype(np.float32)
    (out,) = session.run(None, {"input": x})
    assert out.shape == (37, 4)
    assert np.abs(out - model.predict(x)).max() <= 1e-5


def _mlitb(*args):
    return subprocess.run(
        [sys.executable, "-m", "mlitb.cli.main", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_model_check_demo_spec():
    r = _mlitb("model", "check", "mnist")
    assert r.returncode == 0, r.stderr
    assert "5994 parameters" in r.stdout
    assert re.search(r"pool +4x4x16", r.stdout), r.stdout
    r = _mlitb("model", "check", "mnist", "--json")
    data = json.loads(r.stdout)
    assert data["num_params"] == 5994 and data["layers"][-1]["layer_type"] == "softmax"


def test_model_check_reports_spec_errors(tmp_path):
    bad = [SMALL_NET[0], {"type": "pool", "sx": 20}, SMALL_NET[-1]]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = _mlitb("model", "check", str(tmp_path / "bad.json"))
    assert r.returncode == 1
    assert "layer 1 (pool), field 'sx'" in r.stderr and "below 1x1" in r.stderr


def test_model_convert_and_init(tmp_path):
    r = _mlitb("model", "init", "mnist", str(tmp_path / "m.json"), "--seed", "4")
    assert r.returncode == 0, r.stderr
    m = Model.load(tmp_path / "m.json")
    assert np.array_equal(m.params, Model.from_spec(m.spec, seed=4).params)
    for fmt in ("convnetjs", "onnx"):
        r = _mlitb("model", "convert", str(tmp_path / "m.json"), str(tmp_path / f"out.{fmt}"), "--to", fmt)
        assert r.returncode == 0, r.stderr
    assert np.array_equal(Model.load(tmp_path / "out.convnetjs").params, m.params)
    r = _mlitb("model", "convert", str(tmp_path / "missing.json"), str(tmp_path / "o.json"))
    assert r.returncode == 1 and "No such file" in r.stderr
