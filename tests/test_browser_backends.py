"""Volunteers in a browser with WebGPU (issue 22): every backend correct, checked at join,
picked by speed, audited with real sockets; and a tab the master refuses or removes says
so on the volunteer page.

Chromium runs with --enable-unsafe-webgpu: a WebGPU adapter (SwiftShader, on the CPU)
beside WebGL (SwiftShader) and wasm, as a desktop Chrome has them. On the main of issue
22 a tab there picked webgpu by a fixed order, sent all-zero gradients (TF.js webgpu's
synchronous read) and was banned at its first audit, while its page said "waiting".
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from conftest import ROOT, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def upload_mnist(master, zips) -> tuple[str, str]:
    train = master.data.upload(zips["train"], "28x28x1", "train")["dataset"]
    test = master.data.upload(zips["test"], "28x28x1", "test", kind="test")["dataset"]
    return train, test


def default_project(master, train: str, test: str, name: str) -> None:
    """A project with every default (local_sgd, centered_clip, verification on) but T = 2 s."""
    spec = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())
    body = {"name": name, "spec": spec, "train": [train], "test": [test], "hyper": {"iteration_time": 2.0},
            "start": True}  # fmt: skip
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=30)
    assert resp.status_code == 201, resp.text


def summary(master, name: str) -> dict:
    return httpx.get(f"{master.url}/api/projects/{name}", timeout=30).json()


def tabs(s: dict) -> list[dict]:
    return [c for c in s["clients"] if c["kind"] == "browser"]


def patch_script(page, path: str, code: str) -> None:
    """Serve /static/<path> with `code` appended (the page's Web Worker loads it too; the
    handler runs while the test waits through playwright: conftest.wait_for with the page)."""

    def handle(route):
        resp = route.fetch()
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "etag")}
        route.fulfill(status=resp.status, headers=headers, body=resp.text() + "\n" + code)

    page.route(f"**/static/{path}", handle)


def audited(master, name: str, n: int, page):
    def done():
        s = summary(master, name)
        if s["banned"]:
            return s
        t = tabs(s)
        return s if t and t[0]["verified"] >= n else None

    return wait_for(done, 300, f"{n} audits of the tab", page)


def test_a_webgpu_tab_passes_its_audits(master, mnist_zips, webgpu_page):
    """A tab asked to use webgpu (it is correct here) trains the default project and its
    rounds replay on the master's PyTorch within the tolerance: no ban."""
    default_project(master, *upload_mnist(master, mnist_zips), "gpu")
    webgpu_page.goto(f"{master.url}/join/gpu?backend=webgpu")
    s = audited(master, "gpu", 3, webgpu_page)
    assert not s["banned"], s["banned"]
    (c,) = tabs(s)
    assert c["backend"] == "webgpu" and webgpu_page.inner_text("#backend") == "webgpu", c
    assert s["audits_failed"] == 0 and c["rejected"] == 0 and c["audit_error"] < 0.01, c
    assert "webgpu (asked for by the page)" in webgpu_page.inner_text("#backend-why")
    print(f"browser webgpu vs PyTorch: {c['verified']} audits, largest relative error {c['audit_error']}")


def test_the_backend_is_picked_by_measured_speed(master, mnist_zips, webgpu_page):
    """With webgpu, webgl and wasm on offer, the tab checks and times each on the project's
    model and uses the fastest correct one (wasm here: both GPUs are software), and the
    page says what it measured."""
    default_project(master, *upload_mnist(master, mnist_zips), "pick")
    webgpu_page.goto(f"{master.url}/join/pick")
    why = wait_for(lambda: webgpu_page.inner_text("#backend-why"), 180, "the backend check", webgpu_page)
    check = webgpu_page.evaluate("window.mlitbWorker.status.backendCheck")
    rows = {r["backend"]: r for r in check["results"]}
    assert set(rows) == {"wasm", "webgpu", "webgl"} and all(r["ok"] for r in rows.values()), rows
    rate = {b: r["vectorsPerS"] or r["atMost"] for b, r in rows.items()}
    assert check["chosen"] == max(rate, key=rate.get) == webgpu_page.inner_text("#backend"), check
    assert "correct backends" in why and "webgpu" in why, why
    s = wait_for(lambda: (s := summary(master, "pick")) and tabs(s) and tabs(s)[0]["results"] >= 1 and s, 120,
                 "a result from the tab", webgpu_page)  # fmt: skip
    assert tabs(s)[0]["backend"] == check["chosen"]


def test_a_backend_that_computes_wrong_is_not_used_and_the_page_says_why(master, mnist_zips, webgpu_page):
    """A webgpu whose results read back 1 % off (a driver bug, simulated) fails the join
    check: the tab trains on a correct backend instead, passes its audits, and the page
    says why webgpu was not used. On issue 22's main it sent those results and was banned."""
    default_project(master, *upload_mnist(master, mnist_zips), "wrong")
    patch_script(webgpu_page, "engine/backends.js", """
const mlitbRealData = tf.Tensor.prototype.data;
tf.Tensor.prototype.data = async function () {
  const v = await mlitbRealData.call(this);
  if (tf.getBackend() === "webgpu" && v instanceof Float32Array) {
    for (let i = 0; i < v.length; i++) v[i] *= 1.01;
  }
  return v;
};""")  # fmt: skip
    webgpu_page.goto(f"{master.url}/join/wrong?backend=webgpu")
    why = wait_for(lambda: webgpu_page.inner_text("#backend-why"), 180, "the backend check", webgpu_page)
    assert "webgpu was asked for but its gradient differs from the cpu backend's" in why, why
    assert webgpu_page.inner_text("#backend") != "webgpu"
    s = audited(master, "wrong", 2, webgpu_page)
    assert not s["banned"] and s["audits_failed"] == 0, s["banned"]


def test_a_banned_tab_says_so_in_words(master, mnist_zips, webgpu_page):
    """A tab whose inner steps go the wrong way (its gradients negated after the join
    check) is banned at its first audit; the volunteer page says the tab was removed,
    why, and what to do, and stops - it no longer says "waiting"."""
    default_project(master, *upload_mnist(master, mnist_zips), "liar")
    patch_script(webgpu_page, "engine/inner.js", """
const mlitbRealStep = self.MlitbInner.InnerOptimizer.prototype.step;
self.MlitbInner.InnerOptimizer.prototype.step = function (p, g, n, mul) {
  for (let i = 0; i < g.length; i++) g[i] = -g[i];
  return mlitbRealStep.call(this, p, g, n, mul);
};""")  # fmt: skip
    webgpu_page.goto(f"{master.url}/join/liar?backend=wasm")
    wait_for(lambda: summary(master, "liar")["banned"], 240, "the ban", webgpu_page)
    notice = wait_for(lambda: webgpu_page.is_visible("#notice") and webgpu_page.inner_text("#notice"), 60,
                      "the notice on the page", webgpu_page)  # fmt: skip
    assert "This tab was removed from the project" in notice and "Reload this page" in notice, notice
    state = lambda: webgpu_page.inner_text("#state").startswith("refused")  # noqa: E731
    wait_for(state, 30, "the refused state", webgpu_page)
    webgpu_page.click("#notice summary")  # the master's reason, as text
    reason = webgpu_page.inner_text("#notice")
    assert "does not replay" in reason or "off by" in reason or "not the round's" in reason, reason
    assert not tabs(summary(master, "liar"))


def test_a_wrong_link_says_so(master, webgpu_page):
    """An unknown project: the page says there is no such project and what to do."""
    webgpu_page.goto(f"{master.url}/join/no-such-project")
    notice = wait_for(lambda: webgpu_page.is_visible("#notice") and webgpu_page.inner_text("#notice"), 60,
                      "the notice on the page", webgpu_page)  # fmt: skip
    assert "There is no such project on this server" in notice and "Check the link" in notice, notice


def test_a_mixed_fleet_with_a_webgpu_tab_runs_without_a_ban(master, mnist_zips, webgpu_chromium):
    """A native PyTorch worker, a wasm tab and a webgpu tab on one default project: every
    tab is audited and passes, nobody is flagged."""
    default_project(master, *upload_mnist(master, mnist_zips), "fleet")
    cmd = [sys.executable, "-m", "mlitb.cli.main", "worker", master.url, "--project", "fleet",
           "--threads", "1", "--quiet"]  # fmt: skip
    native = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = webgpu_chromium.new_context()
    try:
        for backend in ("wasm", "webgpu"):
            context.new_page().goto(f"{master.url}/join/fleet?backend={backend}")

        def all_audited():
            s = summary(master, "fleet")
            if s["banned"] or native.poll() is not None:
                return s
            t = tabs(s)
            ok = len(t) == 2 and all(c["verified"] >= 2 for c in t) and s["iteration"] >= 10
            return s if ok else None

        s = wait_for(all_audited, 480, "two audits of each tab, ten iterations")
    finally:
        context.close()
        native.terminate()
        _, err = native.communicate(timeout=30)
    # which backend a banned client ran (a rare replay failure here has been a WebGPU tab's)
    who = {c["id"]: (c.get("kind"), c.get("backend")) for c in s["clients"]}
    assert not s["banned"], [(b, who.get(b["id"])) for b in s["banned"]]
    assert s["audits_failed"] == 0 and s["rejected"] == 0 and s["refused_steps"] == 0, s
    assert sorted(c["backend"] for c in tabs(s)) == ["wasm", "webgpu"], tabs(s)
    assert len([c for c in s["clients"] if c["kind"] == "native"]) == 1, (s["clients"], err[-2000:])
    for c in s["clients"]:
        who = f"{c['kind']} {c.get('backend')} {c['id']}"
        print(f"mixed fleet: {who}: {c['verified']} audits, largest relative error {c['audit_error']}")
        # an honest segment can replay a few % off where Adam's steps on tiny gradients turn
        # rounding into sign flips; the float64 second opinion accepts it (docs/security.md,
        # "Replay tolerance"): 1.01 % seen once in 8 runs on 2026-12-08 (else 1e-6 to 1.4e-3)
        error = c["audit_error"]
        assert c["rejected"] == 0 and error < 0.05, f"{who}: {c['rejected']} rejected, audit error {error}"
