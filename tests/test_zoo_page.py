"""The model zoo in real Chromium against a real master: publish a trained project from its
page, export its closure, see the verified entry in #/zoo and its detail view, and start
projects from the entry through the page's form: transfer learning (new labels a, b, c) and
"continue exactly where it stopped"."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from conftest import ARTIFACTS, wait_for
from test_master_integration import FC_SPEC, ThreadWorker, create_project, upload

from mlitb.closure import Closure

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def details(master, name: str) -> dict:
    r = httpx.get(f"{master.url}/api/projects/{name}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_publish_to_zoo_and_start_a_transfer_project(master, mnist_zips, page, tmp_path):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "fc", [train], [test], spec=FC_SPEC)  # adam, T = 1 s

    # ---- a few iterations with a native trainer and tracker (test errors for the chart)
    with ThreadWorker(master.url, "fc", "trainer", name="wt"), ThreadWorker(master.url, "fc", "tracker"):
        wait_for(
            lambda: [r for r in httpx.get(f"{master.url}/api/projects/fc/metrics").json()["rows"]
                     if r.get("test_error") is not None][1:],
            60, "two test errors from the native tracker",
        )  # fmt: skip
    r = httpx.post(f"{master.url}/api/projects/fc/pause", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # let an iteration in flight when the workers left end
    iteration = details(master, "fc")["iteration"]
    assert iteration >= 2

    # ---- the project page with the owner token stored the way the page stores it
    page.goto(master.url)
    page.evaluate(f"localStorage.setItem('mlitb.tokens', JSON.stringify({{fc: {json.dumps(token)}}}))")
    page.goto(f"{master.url}/#/p/fc")
    page.wait_for_selector("#summary")
    assert not page.is_disabled("#btn-publish")
    # Export closure: anyone's download, the test set embedded, a claim inside
    with page.expect_download() as dl:
        page.click("#export-closure")
    path = tmp_path / "fc.mlitb"
    dl.value.save_as(path)
    exported = Closure.load(path)
    assert exported.manifest["training"]["iteration"] == iteration
    assert exported.claim is not None

    # ---- Publish to zoo: the entry's verification status is shown with a link to the zoo
    page.click("#btn-publish")
    page.wait_for_selector("#publish-result .badge", timeout=120_000)
    assert page.inner_text("#publish-result .badge") == "verified", page.inner_text("#publish-result")
    entries = httpx.get(f"{master.url}/api/zoo").json()
    assert len(entries) == 1 and entries[0]["verification"] == "verified", entries
    entry = entries[0]
    assert entry["iteration"] == iteration

    page.click("#publish-zoo")
    page.wait_for_url("**/#/zoo")
    row = page.locator(f'#zoo tr[data-entry="{entry["id"]}"]')
    row.wait_for()
    assert row.locator(".badge").inner_text() == "verified"
    assert row.locator(".badge").get_attribute("title") == entry["verification_detail"]
    assert row.locator("td.hash").inner_text() == entry["closure_id"].removeprefix("sha256:")[:12]
    assert row.locator("td.claimed-error").inner_text() == f"{100 * entry['claimed_error']:.2f}%"
    assert row.locator("a.download").get_attribute("href") == entry["file"]
    assert "0, 1, 2, 3, 4" in row.inner_text()

    # ---- the entry's detail view: claim, data used, contributors, test error chart
    row.locator("a.entry-name").click()
    page.wait_for_url(f"**/#/zoo/{entry['id']}")
    page.wait_for_selector("#claim tbody tr")
    assert "mnist-test" in page.inner_text("#claim")
    assert page.locator('table.data[data-role="train"] tbody tr').count() == 1
    assert "native clients" in page.inner_text("#app")
    page.wait_for_selector(".chart canvas")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "zoo-entry.png"), full_page=True)
    page.go_back()
    page.wait_for_url("**/#/zoo")

    # ---- Start project from the entry: readable errors first, then transfer learning
    row = page.locator(f'#zoo tr[data-entry="{entry["id"]}"]')
    row.locator("button.start").click()
    page.wait_for_selector("#zoo-start")
    page.check("#zs-mode-transfer")
    page.click("#zs-submit")  # no labels yet: refused in the page
    page.wait_for_selector("#zs-status.error")
    assert "labels" in page.inner_text("#zs-status")
    page.fill("#zs-labels", "a, b, c")
    page.fill("#zs-name", "fc")  # taken: the master's message is shown
    page.click("#zs-submit")
    page.wait_for_function("document.getElementById('zs-status').textContent.includes('exists')")
    assert page.locator(".banner.error").count() == 1
    page.fill("#zs-name", "fc-abc")
    page.fill("#zs-train", str(train))  # its labels 0-9 are not a, b, c: a warning
    page.uncheck("#zs-start")
    page.screenshot(path=str(ARTIFACTS / "zoo-page.png"), full_page=True)
    page.click("#zs-submit")
    page.wait_for_url("**/#/p/fc-abc")
    page.wait_for_selector("#summary")
    page.wait_for_function("document.getElementById('conn').textContent === 'live'")
    assert "not project labels" in page.inner_text(".banner.ok")  # the warning outlives the route
    new = details(master, "fc-abc")
    assert new["state"] != "running"
    assert [(d["dataset"], d["role"]) for d in new["datasets"]] == [(train, "train")]
    assert new["labels"] == ["a", "b", "c"]
    assert new["spec"][-1]["out_depth"] == 3, new["spec"]
    assert new["num_params"] == 28 * 28 * 16 + 16 + 16 * 3 + 3
    stored = page.evaluate("JSON.parse(localStorage.getItem('mlitb.tokens'))")
    assert set(stored) == {"fc", "fc-abc"}
    r = httpx.post(
        f"{master.url}/api/projects/fc-abc/start", headers={"Authorization": f"Bearer {stored['fc-abc']}"}
    )
    assert r.status_code == 200, r.text
    assert not page.is_disabled("#btn-publish")  # the page knows it owns the new project

    # ---- "continue training exactly where it stopped": the same iteration, data found by hash
    page.goto(f"{master.url}/#/zoo/{entry['id']}")
    page.click("#entry-start")
    page.check("#zs-mode-continue")
    assert page.is_disabled("#zs-labels")
    page.fill("#zs-name", "fc-more")
    page.click("#zs-submit")
    page.wait_for_url("**/#/p/fc-more")
    more = details(master, "fc-more")
    assert more["iteration"] == iteration and more["state"] == "running"
    assert sorted((d["dataset"], d["role"]) for d in more["datasets"]) == [(train, "train"), (test, "test")]
