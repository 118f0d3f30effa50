"""A spec the browser engine cannot run is refused at project creation, never at
training time; the Python list of browser layers is the engine's own list."""

from __future__ import annotations

import re

import httpx
from conftest import ROOT

from mlitb.model.browser import BROWSER_LAYERS, BROWSER_MAX_PARAMS, browser_problems
from mlitb.model.layers import LAYER_TYPES
from mlitb.model.spec import Spec


def test_browser_layers_are_the_engines_list():
    js = (ROOT / "mlitb" / "web" / "static" / "engine" / "tfjs_engine.js").read_text()
    listed = re.search(r"const SUPPORTED = \[([^\]]*)\]", js, re.S).group(1)
    assert set(re.findall(r'"(\w+)"', listed)) == set(BROWSER_LAYERS)
    assert set(BROWSER_LAYERS) == set(LAYER_TYPES)  # the browser runs every layer type


def test_too_big_for_a_browser():
    spec = Spec.from_json(
        [
            {"type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 3000},
            {"type": "softmax", "num_classes": 9000},
        ]
    )
    assert spec.num_params > BROWSER_MAX_PARAMS
    (problem,) = browser_problems(spec)
    assert "browser worker" in problem and "native workers" in problem


def test_master_refuses_a_spec_browsers_cannot_run(master):
    body = {
        "name": "huge",
        "spec": [
            {"type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 3000},
            {"type": "softmax", "num_classes": 9000},
        ],
        "labels": [str(i) for i in range(9000)],
    }
    r = httpx.post(f"{master.url}/api/projects", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "not_for_browsers" and "browser worker" in r.json()["detail"]
    assert httpx.get(f"{master.url}/api/projects").json() == []


def test_spec_check_reports_shapes_and_the_failing_layer(master):
    defs = [
        {"type": "input", "out_sx": 8, "out_sy": 8, "out_depth": 1},
        {"type": "conv", "sx": 3, "filters": 2, "pad": 1, "activation": "relu"},
        {"type": "softmax", "num_classes": 3},
    ]
    ok = httpx.post(f"{master.url}/api/spec/check", json={"spec": {"layer_defs": defs}}).json()
    assert ok["ok"] and ok["num_params"] == 3 * 3 * 2 + 2 + 128 * 3 + 3
    assert [layer["type"] for layer in ok["layers"]] == ["input", "conv", "relu", "fc", "softmax"]
    assert ok["layers"][1]["out_shape"] == [8, 8, 2] and ok["browser_problems"] == []
    defs[1]["sx"] = 0
    bad = httpx.post(f"{master.url}/api/spec/check", json={"spec": {"layer_defs": defs}})
    assert bad.status_code == 400 and bad.json()["layer"] == 1 and "sx" in bad.json()["detail"]
