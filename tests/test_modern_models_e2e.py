"""Today's layers in a running master (issue 27): a residual batch-norm net trains on MNIST
with native workers under the project defaults (verification on), every audit of its
rounds replays (batch norm's state and the fixed biases included), nobody is banned, and
the master's test error falls; the closure and the model download carry the new layers."""

from __future__ import annotations

import httpx
import pytest
from test_device_data import worker
from test_master_integration import HTTP_TIMEOUT, brief, create_project, kill_all, tail, upload, wait_for

pytestmark = pytest.mark.slow

RESNET = [
    {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
    {"type": "conv", "sx": 3, "pad": 1, "filters": 8, "stride": 2},
    {"type": "batchnorm", "activation": "relu"},
    {"type": "residual", "layers": [
        {"type": "conv", "sx": 3, "pad": 1, "filters": 12, "stride": 2},
        {"type": "batchnorm", "activation": "gelu"},
        {"type": "conv", "sx": 3, "pad": 1, "filters": 12},
        {"type": "batchnorm"},
    ]},
    {"type": "relu"},
    {"type": "attention", "heads": 2},
    {"type": "layernorm"},
    {"type": "globalavgpool"},
    {"type": "softmax", "num_classes": 10},
]  # fmt: skip


def test_a_residual_batchnorm_net_trains_and_every_audit_replays(master, mnist_zips, tmp_path):
    train, test = upload(master.data, mnist_zips)
    hyper = {"iteration_time": 2.0, "test_interval": 1, "test_sample": 1000}  # otherwise the defaults
    create_project(master.url, "resnet", [train], [test], hyper=hyper, spec=RESNET)
    procs = [worker(master.url, "resnet", tmp_path / f"w{i}.log") for i in range(2)]
    try:
        s = wait_for(
            master.url,
            "resnet",
            lambda s: s["audits_passed"] >= 4 and s["test_error"] is not None and s["test_error"] < 0.5,
            400,
            "4 audits passed and test error under 50 %",
        )
        for i, p in enumerate(procs):
            assert p.poll() is None, tail(tmp_path / f"w{i}.log")
    finally:
        kill_all(procs)
    assert s["verify"] and s["audits_failed"] == 0 and s["banned_count"] == 0, brief(s)
    model = httpx.get(f"{master.url}/api/projects/resnet/model?format=mlitb", timeout=HTTP_TIMEOUT)
    assert model.status_code == 200 and '"residual"' in model.text and '"running_var"' not in model.text
    refused = httpx.get(f"{master.url}/api/projects/resnet/model?format=convnetjs", timeout=HTTP_TIMEOUT)
    assert refused.status_code == 400 and "batchnorm" in refused.text and "ConvNetJS" in refused.text


@pytest.mark.browser
def test_a_browser_tab_trains_the_residual_net_and_passes_its_audits(master, mnist_zips, page):
    """The same net in a volunteer's tab (TF.js wasm): it learns, its rounds replay on the
    master's PyTorch within the tolerance, and the largest replay error is printed
    (docs/security.md records it)."""
    train, test = upload(master.data, mnist_zips)
    hyper = {"iteration_time": 2.0, "test_interval": 1, "test_sample": 1000}
    create_project(master.url, "tabres", [train], [test], hyper=hyper, spec=RESNET)
    page.goto(f"{master.url}/join/tabres")

    def audited(s):
        tabs = [c for c in s["clients"] if c.get("kind") == "browser"]
        return bool(s["banned_count"]) or (tabs and tabs[0]["verified"] >= 3 and s["test_error"] is not None)

    s = wait_for(master.url, "tabres", audited, 400, "three audits of the tab")
    assert s["banned_count"] == 0 and s["audits_failed"] == 0, brief(s)
    (c,) = [c for c in s["clients"] if c.get("kind") == "browser"]
    assert c["backend"] == "wasm" and c["audit_error"] < 0.01, c  # the default verify_tolerance
    print(
        f"residual batchnorm net, wasm vs PyTorch: {c['verified']} audits, largest error {c['audit_error']}"
    )
