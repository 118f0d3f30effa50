"""Volunteer credit end to end (issue 28): a real Chromium volunteer page and a native
worker train a project on a real master; each gets credit under its own volunteer id (a
hash of a key kept in localStorage / the worker's config), the volunteer page shows
"your contribution", the dashboard lists the contributors with names as text, and
`mlitb project credit` agrees with the API."""

from __future__ import annotations

import json
import subprocess

import httpx
from conftest import wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import MLITB, create_project, upload

from mlitb import local_tokens
from mlitb.master.project.credit import volunteer_id

NAME = "<img src=x onerror=pwned=1>Ann \u202eLee"  # markup and a bidi override, 35 characters


def credit(url: str, project: str) -> dict:
    return httpx.get(f"{url}/api/projects/{project}/credit", timeout=30).json()


def test_a_volunteer_tab_and_a_native_worker_earn_credit_under_their_own_ids(master, mnist_zips, page):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "credited", [train], [test], spec=FC_SPEC)
    page.goto(f"{master.url}/join/credited")
    page.wait_for_selector("#volunteer-name")
    page.fill("#volunteer-name", NAME)
    page.dispatch_event("#volunteer-name", "change")  # kept, and the tab joins again with it
    key = page.evaluate("localStorage.getItem('mlitb.volunteer.key')")
    assert key and len(key) >= 16
    mine = volunteer_id(key)
    # a native worker beside it, with this machine's key (the config the master fixture set)
    native = subprocess.Popen(
        [MLITB, "worker", master.url, "--project", "credited", "--threads", "1", "--quiet", "--name", "box"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: {r["kind"] for r in credit(master.url, "credited")["rows"] if r["credit"] > 0}
                 == {"browser", "native"}, 240, "credit for both volunteers", page)  # fmt: skip
        page.wait_for_function(
            "document.querySelector('#credit').innerText.includes('GMAC')", timeout=120_000
        )
        c = credit(master.url, "credited")
        rows = {r["volunteer"]: r for r in c["rows"]}
        tab = rows[mine]
        assert tab["kind"] == "browser" and tab["name"] == "<img src=x onerror=pwned=1>Ann Lee"
        assert (
            tab["backend"] in ("wasm", "webgl", "webgpu", "cpu")
            and tab["macs"] == tab["vectors"] * c["macs_per_vector"]
        )
        box = rows[volunteer_id(local_tokens.volunteer_key())]
        assert (box["kind"], box["name"], box["threads"]) == ("native", "box", 1)
        assert abs(sum(r["share"] for r in c["rows"]) - 1) < 1e-9
        # the client rows carry volunteer, backend and threads
        clients = httpx.get(f"{master.url}/api/projects/credited", timeout=30).json()["clients"]
        assert {c["volunteer"] for c in clients if c["role"] == "trainer"} == {mine, box["volunteer"]}
        # the volunteer page: this browser's own row, with the project's error then and now
        assert page.inner_text("#credit-share").endswith("%")
        effect = "document.querySelector('#credit-effect').innerText.includes('when you joined')"
        page.wait_for_function(effect, timeout=120_000)  # once the master has measured the test error
        assert page.input_value("#volunteer-name").startswith("<img")  # kept in the field, as text
        # the dashboard's contributors: names as text, no markup run
        dash = page.context.new_page()
        dash.goto(f"{master.url}/#/p/credited")
        dash.wait_for_function(
            "document.querySelectorAll('#contributors tbody tr').length >= 2", timeout=120_000
        )
        assert dash.locator("#contributors img").count() == 0 and "Ann" in dash.inner_text("#contributors")
        assert not dash.evaluate("window.pwned") and not page.evaluate("window.pwned")
        dash.close()
        # the same browser again (a reload): the same volunteer, no second row
        page.reload()
        wait_for(lambda: any(cl.get("volunteer") == mine and cl["kind"] == "browser" for cl in
                             httpx.get(f"{master.url}/api/projects/credited", timeout=30).json()["clients"]),
                 120, "the reloaded tab to join as the same volunteer", page)  # fmt: skip
        assert sum(1 for r in credit(master.url, "credited")["rows"] if r["kind"] == "browser") == 1
        out = subprocess.run([MLITB, "project", "credit", "credited", "--server", master.url, "--json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert {r["volunteer"] for r in json.loads(out.stdout)} == {mine, box["volunteer"]}, out.stderr
        table = subprocess.run([MLITB, "project", "credit", "credited", "--server", master.url],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "2 volunteers" in table.stdout and "box" in table.stdout, table.stderr
    finally:
        native.kill()
        native.wait(20)
