"""Transfer learning at creation (paper 6.1): a model file with its last layer dropped
keeps every other parameter and gets a fresh output layer for the new labels."""

from __future__ import annotations

import json

import httpx
import numpy as np
from conftest import ROOT

from mlitb.model import Model
from mlitb.model.layout import segments


def test_model_file_with_last_layer_dropped(master, tmp_path):
    defs = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())["layer_defs"]
    source = Model.from_spec(defs, seed=7, labels=[str(i) for i in range(10)])
    body = {
        "name": "letters",
        "spec": source.to_json("convnetjs"),
        "labels": ["a", "b", "c"],
        "drop_last_layer": True,
    }
    r = httpx.post(
        f"{master.url}/api/projects", content=_dumps(body), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 201, r.text
    p = r.json()["project"]
    assert p["labels"] == ["a", "b", "c"] and p["spec"][-1]["out_depth"] == 3
    model = Model.from_json(httpx.get(f"{master.url}/api/projects/letters/model?format=mlitb").json())
    kept = sum(s.size for s in segments(model.spec)[:-2])
    assert kept == sum(s.size for s in segments(source.spec)[:-2])  # both convs
    assert np.array_equal(model.params[:kept], source.params[:kept])
    assert model.num_params == kept + 256 * 3 + 3
    # without labels it is refused with the reason
    body.pop("labels")
    body["name"] = "nolabels"
    r = httpx.post(
        f"{master.url}/api/projects", content=_dumps(body), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "labels" in r.json()["detail"]


def _dumps(body: dict) -> str:
    from mlitb.model.jsonfloats import dumps

    return dumps(body)
