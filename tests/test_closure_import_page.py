"""A research closure loaded in the New project view, in real Chromium against a real
master: the page recognises the .mlitb zip, resumes it through POST /api/closures as a new
project (same iteration, same parameters, datasets found by content hash, owner token kept),
shows the master's errors as readable messages (a taken name, a corrupted file, failed
checksums), and still
loads JSON model files as before."""

from __future__ import annotations

import time
import zipfile

import httpx
import pytest
from conftest import ARTIFACTS, wait_for
from test_master_integration import FC_SPEC, ThreadWorker, create_project, upload

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLOSURE_TEXT = (
    "research closure: it resumes training where it stopped, with its optimizer state "
    "and datasets found by content hash"
)


def details(master, name: str) -> dict:
    r = httpx.get(f"{master.url}/api/projects/{name}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def params(master, name: str) -> dict:
    r = httpx.get(f"{master.url}/api/projects/{name}/model", params={"format": "mlitb"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["params"]


def load_closure(master, page, path) -> None:
    """Choose `path` in the New project view's file input (opening the view if needed)."""
    if not page.url.endswith("#/new"):
        page.goto(f"{master.url}/#/new")
        page.wait_for_selector("#spec-status.ok")
    page.set_input_files("#model-file", str(path))
    page.wait_for_function(
        f"document.querySelector('#closure-import h3')?.textContent === 'Resume {path.name}'"
    )


def test_resume_a_closure_from_the_new_project_page(master, mnist_zips, page, tmp_path):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "fc", [train], [test], spec=FC_SPEC)  # adam, T = 1 s
    with ThreadWorker(master.url, "fc", "trainer", name="wt"):
        wait_for(lambda: details(master, "fc")["iteration"] >= 2, 60, "two iterations of fc")
    r = httpx.post(f"{master.url}/api/projects/fc/pause", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    # the iteration in flight when the worker left ends at its deadline: wait until the
    # paused project's iteration holds still (a loaded machine may take a while)
    iteration, deadline = details(master, "fc")["iteration"], time.monotonic() + 60
    while True:
        time.sleep(1.0)
        now = details(master, "fc")["iteration"]
        if now == iteration or time.monotonic() > deadline:
            break
        iteration = now
    assert iteration >= 2 and now == iteration, (iteration, now)

    r = httpx.get(f"{master.url}/api/projects/fc/closure", timeout=120)
    assert r.status_code == 200, r.text
    closure = tmp_path / "fc.mlitb"
    closure.write_bytes(r.content)
    assert r.content[:2] == b"PK"

    # ---- the page says what the file is and offers the compact form; the editor is hidden
    load_closure(master, page, closure)
    assert CLOSURE_TEXT in page.inner_text("#ci-what")
    assert page.input_value("#ci-name") == "fc"  # the file name without its extension
    assert page.is_hidden("#editor") and page.is_hidden("#project-fields") and page.is_hidden("#create")
    # the default name is taken: the master's message, readable, and no navigation
    page.click("#ci-submit")
    page.wait_for_selector("#ci-status.error")
    assert "exists" in page.inner_text("#ci-status"), page.inner_text("#ci-status")
    assert page.locator(".banner.error").count() == 1
    assert page.url.endswith("#/new")
    # bad dataset ids are refused in the page
    page.fill("#ci-train", "one")
    page.click("#ci-submit")
    page.wait_for_function("document.getElementById('ci-status').textContent.includes('dataset ids')")
    page.fill("#ci-train", "")
    page.fill("#ci-name", "imported")
    page.uncheck("#ci-start")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "closure-import.png"), full_page=True)
    page.click("#ci-submit")
    page.wait_for_url("**/#/p/imported")
    page.wait_for_selector("#summary")

    new = details(master, "imported")
    assert new["iteration"] == iteration
    assert new["state"] != "running"
    assert sorted((d["dataset"], d["role"]) for d in new["datasets"]) == [(train, "train"), (test, "test")]
    assert params(master, "imported") == params(master, "fc")
    stored = page.evaluate("JSON.parse(localStorage.getItem('mlitb.tokens'))")
    assert set(stored) == {"imported"}
    assert not page.is_disabled("#btn-publish")  # the page knows it owns the new project
    r = httpx.post(
        f"{master.url}/api/projects/imported/start", headers={"Authorization": f"Bearer {stored['imported']}"}
    )
    assert r.status_code == 200, r.text

    # ---- a corrupted copy (one byte flipped in the middle): a readable error, no project
    data = bytearray(closure.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken = tmp_path / "broken.mlitb"
    broken.write_bytes(bytes(data))
    load_closure(master, page, broken)
    page.click("#ci-submit")
    page.wait_for_selector("#ci-status.error", timeout=30_000)
    message = page.inner_text("#ci-status")
    assert message.startswith("broken.mlitb cannot be resumed: closure"), message
    assert "{" not in message and "Internal Server Error" not in message, message
    assert page.url.endswith("#/new")
    assert httpx.get(f"{master.url}/api/projects/broken").status_code == 404
    # a valid zip whose params.npy no longer matches SHA256SUMS: the checksum failure, named
    tampered = tmp_path / "tampered.mlitb"
    with zipfile.ZipFile(closure) as src, zipfile.ZipFile(tampered, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            member = bytearray(src.read(info))
            if info.filename == "params.npy":
                member[-1] ^= 0x01
            dst.writestr(info.filename, bytes(member))
    load_closure(master, page, tampered)
    page.fill("#ci-name", "tampered")
    page.click("#ci-submit")
    page.wait_for_function("document.getElementById('ci-status').textContent.includes('checksums')")
    message = page.inner_text("#ci-status")
    assert message.startswith("tampered.mlitb cannot be resumed:") and "params.npy" in message, message
    names = {p["name"] for p in httpx.get(f"{master.url}/api/projects").json()}
    assert names == {"fc", "imported"}

    # ---- a JSON model file still loads into the editor as before
    model = tmp_path / "fc.convnetjs.json"
    model.write_bytes(httpx.get(f"{master.url}/api/projects/fc/model", timeout=60).content)
    page.set_input_files("#model-file", str(model))
    page.wait_for_function(
        "document.getElementById('layers').textContent.includes('model file fc.convnetjs.json')"
    )
    assert page.locator("#closure-import").count() == 0
    assert page.is_visible("#editor") and page.is_visible("#create")
    page.wait_for_function(
        "document.getElementById('spec-status').className === 'ok'"
        " && document.getElementById('spec-status').textContent.includes('12,730 parameters')"
    )
