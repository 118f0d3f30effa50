"""All the cores a volunteer offers (issue 28): the volunteer page is cross-origin
isolated, so TF.js's wasm backend runs its threaded build with as many threads as the
volunteer gives (half of the device's by default, up to all of them, remembered in the
browser); the master's client list shows them."""

from __future__ import annotations

import httpx
from conftest import wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import FAST_HYPER, create_project, upload


def browser_rows(url: str, project: str) -> list[tuple]:
    clients = httpx.get(f"{url}/api/projects/{project}", timeout=30).json()["clients"]
    return [(c["backend"], c["threads"]) for c in clients if c["kind"] == "browser"]


def test_the_volunteer_page_runs_wasm_with_the_cores_it_is_given(master, mnist_zips, page):
    """Half the logical cores by default, every one at most, remembered. TF.js 4.22's wasm
    pool takes at most half of them whatever setThreadsCount asks; the worker (a Web Worker,
    not the page's main thread) lifts that cap, so a 2-core machine trains on 2 threads when
    the volunteer gives 2: the pool's own count (tf.wasm.getThreadsCount) reaches the
    master's client row."""
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "cores", [train], [test], spec=FC_SPEC)
    page.goto(f"{master.url}/join/cores?backend=wasm")
    assert page.evaluate("self.crossOriginIsolated") is True  # SharedArrayBuffer: wasm threads
    here = page.evaluate("navigator.hardwareConcurrency")
    half = max(1, here // 2)
    assert (page.input_value("#cores"), page.get_attribute("#cores", "max")) == (str(half), str(here))
    wait_for(lambda: browser_rows(master.url, "cores") == [("wasm", half)],
             180, f"the tab to train on wasm with {half} thread(s)", page)  # fmt: skip
    worker = next(w for w in page.workers if w.url.endswith("/worker/worker.js"))
    assert worker.evaluate("self.crossOriginIsolated") is True
    assert worker.evaluate("tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT')") is True  # the threaded build
    page.wait_for_function(f"document.querySelector('#threads').innerText.startsWith('{half} thread')",
                           timeout=60_000)  # fmt: skip
    page.fill("#cores", "999")  # more than this device has: every core, remembered
    page.dispatch_event("#cores", "change")
    assert page.input_value("#cores") == str(here)
    assert here >= 2, "a test of 2 threads needs 2 logical cores"
    wait_for(lambda: browser_rows(master.url, "cores") == [("wasm", here)],
             180, f"the tab to train on wasm with all {here} threads", page)  # fmt: skip
    worker = [w for w in page.workers if w.url.endswith("/worker/worker.js")][-1]  # the new one
    assert worker.evaluate("tf.wasm.getThreadsCount()") == here  # the pool itself, not what was asked
    page.fill("#cores", "0")
    page.dispatch_event("#cores", "change")
    assert page.input_value("#cores") == "1"
    page.reload()
    page.wait_for_selector("#cores")
    assert (
        page.input_value("#cores") == "1"
        and page.evaluate("localStorage.getItem('mlitb.volunteer.cores')") == "1"
    )
    wait_for(lambda: browser_rows(master.url, "cores") == [("wasm", 1)], 180, "the tab with 1 thread", page)


def test_the_fastest_backend_is_remembered_per_model_and_the_owner_can_pin_one(master, mnist_zips, page):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "auto", [train], [test], spec=FC_SPEC)
    page.goto(f"{master.url}/join/auto")
    wait_for(lambda: [b for b, _ in browser_rows(master.url, "auto")] not in ([], ["starting"]), 180,
             "the tab's backend check", page)  # fmt: skip
    (chosen,) = [b for b, _ in browser_rows(master.url, "auto")]
    # the page keeps the check when the worker's next status message reaches it: on a loaded
    # machine that may come after the master's row already shows the backend
    read_kept = "JSON.parse(localStorage.getItem('mlitb.device.backends') || '{}')"
    wait_for(lambda: page.evaluate(read_kept), 120, "the page to remember the check", page)
    kept = page.evaluate(read_kept)
    assert [v["chosen"] for v in kept.values()] == [chosen], kept  # one model, its fastest backend
    page.reload()  # the next visit starts from it: checked for correctness, not timed against the others
    page.wait_for_function("document.querySelector('#backend-why').innerText.includes('remembered')",
                           timeout=180_000)  # fmt: skip
    assert page.inner_text("#backend") == chosen
    # the owner pins TF.js's cpu backend (the reference: correct everywhere) for a project
    create_project(
        master.url, "pinned", [train], [test], spec=FC_SPEC, hyper={**FAST_HYPER, "browser_backend": "cpu"}
    )
    page.goto(f"{master.url}/join/pinned")
    wait_for(lambda: browser_rows(master.url, "pinned") == [("cpu", 1)], 180, "the pinned backend", page)
    pinned_why = "document.querySelector('#backend-why').innerText.includes('pinned by the project')"
    page.wait_for_function(pinned_why, timeout=60_000)


def test_a_pin_set_while_tabs_train_reaches_them_at_once(master, mnist_zips, page):
    """The owner pins (and unpins) while a tab trains: the master tells connected tabs
    (a `settings` message), the tab switches at its next batch and goes on training."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "repin", [train], [test], spec=FC_SPEC)
    page.goto(f"{master.url}/join/repin?backend=wasm")
    backends = lambda: [b for b, _ in browser_rows(master.url, "repin")]  # noqa: E731
    wait_for(lambda: backends() == ["wasm"], 180, "the tab on wasm", page)

    def results() -> int:
        clients = httpx.get(f"{master.url}/api/projects/repin", timeout=30).json()["clients"]
        return next(c for c in clients if c["kind"] == "browser")["results"]

    def pin(backend: str) -> None:
        resp = httpx.patch(f"{master.url}/api/projects/repin/hyper", json={"browser_backend": backend},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
        assert resp.status_code == 200, resp.text

    pinned_text = "document.querySelector('#backend-why').innerText.includes('pinned by the project')"
    pin("cpu")
    wait_for(lambda: browser_rows(master.url, "repin") == [("cpu", 1)], 180, "the tab to switch to cpu", page)
    page.wait_for_function(pinned_text, timeout=60_000)
    before = results()
    wait_for(lambda: results() > before, 180, "results computed on cpu", page)
    pin("auto")  # back to the device's own choice: the page asked for wasm
    wait_for(lambda: backends() == ["wasm"], 180, "wasm again", page)
    before = results()
    wait_for(lambda: results() > before, 180, "results computed on wasm again", page)
    assert not httpx.get(f"{master.url}/api/projects/repin", timeout=30).json().get("banned")


def test_a_backend_that_fails_mid_round_falls_back_to_wasm_and_says_so(master, mnist_zips, webgpu_page):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "lost-gpu", [train], [test], spec=FC_SPEC)
    webgpu_page.goto(f"{master.url}/join/lost-gpu?backend=webgpu")
    wait_for(lambda: [b for b, _ in browser_rows(master.url, "lost-gpu")] == ["webgpu"], 240,
             "the tab to compute with webgpu", webgpu_page)  # fmt: skip
    webgpu_page.evaluate("window.mlitbWorker.failBackend()")  # its next round fails, as a lost GPU would
    wait_for(lambda: [b for b, _ in browser_rows(master.url, "lost-gpu")] == ["wasm"], 240,
             "the tab to go on with wasm", webgpu_page)  # fmt: skip
    webgpu_page.wait_for_function("document.querySelector('#backend-why').innerText.includes('fell back')",
                                  timeout=60_000)  # fmt: skip
    assert "webgpu failed mid-round" in webgpu_page.inner_text("#log")

    # and it keeps training there: results go on being applied
    def results() -> int:
        clients = httpx.get(f"{master.url}/api/projects/lost-gpu", timeout=30).json()["clients"]
        return next(c for c in clients if c["kind"] == "browser")["results"]

    before = results()
    wait_for(lambda: results() > before, 180, "results from wasm", webgpu_page)
