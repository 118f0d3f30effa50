"""One model, two executors, on every browser backend: the golden vectors in Chromium.

tests/test_tfjs_golden.py and tests/test_inner_golden.py hold the browser engine to the
PyTorch executor in node (TF.js cpu and wasm). A volunteer's browser computes on webgpu
or webgl as often as on wasm, and a backend that computes wrongly gets an honest
volunteer banned at its first audit (issue 22: TF.js webgpu's synchronous read gave all
zeros). So the same golden cases run here in a Web Worker of real Chromium with a
WebGPU adapter (SwiftShader), on wasm, webgl and webgpu, each started as the volunteer's
worker starts it (engine/backends.js):
- forward, loss and flat gradient of every layer type, against PyTorch (1e-4 relative);
- local rounds of inner Adam and SGD-momentum steps through inner.js, against the same
  rounds with PyTorch and mlitb.optim (1e-4);
- the join-time check on the project's model: every backend passes and a broken one
  (its gradient read back wrong) is refused with its reason.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import ROOT
from test_inner_golden import ROUNDS, golden_round
from test_tfjs_golden import CASES, RTOL, close, make_case

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BACKENDS = ["wasm", "webgl", "webgpu"]
STATIC = ["vendor/tf.min.js", "vendor/tf-backend-wasm.min.js", "engine/layout.js", "engine/tfjs_engine.js",
          "engine/wasm_kernels_bin.js", "engine/wasm_kernels.js", "engine/inner.js",
          "engine/backends.js"]  # fmt: skip
GOLDEN = [ROOT / "tests" / "js" / "tfjs_golden.js", ROOT / "tests" / "js" / "inner_golden.js"]

# A Web Worker made from a Blob: the engine's own files from the server, the golden
# runners' text, and the environment they take (base64 as in node, with atob/btoa).
WORKER = """
importScripts(...%(scripts)s);
%(setup)s
%(golden)s
const f32 = (text) => { const s = atob(text); const u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return new Float32Array(u.buffer); };
const b64 = (a) => { const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength); let s = "";
  for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]); return btoa(s); };
self.onmessage = async (e) => {
  const { backend, vendor, task, request } = e.data;
  try {
    const s = await MlitbBackends.start(tf, backend, { vendor });
    if (!s.ok) { postMessage({ error: `${backend} did not start: ${s.reason}` }); return; }
    let out;
    if (task === "cases") out = await runCases(tf, MlitbTfjsEngine, request, f32, b64);
    else if (task === "rounds") {
      const kinds = innerGolden({ tf, Engine: MlitbTfjsEngine, Inner: MlitbInner, f32, b64 });
      out = [];
      for (const t of request) out.push(await kinds.round(t));
    } else if (task === "check") {
      out = await MlitbBackends.check(tf, MlitbTfjsEngine, request.layers, { vendor, ...request.options });
    }
    postMessage({ backend: tf.getBackend(), device: s.device || "", out });
  } catch (err) { postMessage({ error: String(err && err.stack || err) }); }
};
"""

RUN = """async ({ src, message }) => {
  const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
  const w = new Worker(url);
  try {
    return await new Promise((resolve) => {
      w.onmessage = (e) => resolve(e.data);
      w.onerror = (e) => resolve({ error: `worker failed: ${e.message}` });
      w.postMessage(message);
    });
  } finally { w.terminate(); URL.revokeObjectURL(url); }
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mlitb.server_runner import BackgroundServer
    from mlitb.serving import build_app

    state = tmp_path_factory.mktemp("golden-server")
    with BackgroundServer(factory=lambda url: build_app(state, url)) as s:
        yield s


@pytest.fixture(scope="module")
def run(server, webgpu_chromium):
    """run(backend, task, request[, setup]) -> the worker's answer, in one page of a
    cross-origin isolated origin (the master's)."""
    context = webgpu_chromium.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/static/bench/bench.html")
    scripts = json.dumps([f"{server.url}/static/{f}" for f in STATIC])
    golden = "\n".join(p.read_text() for p in GOLDEN)

    def go(backend: str, task: str, request, setup: str = "") -> dict:
        """setup: code run once TF.js is loaded, before the task."""
        src = WORKER % {"scripts": scripts, "setup": setup, "golden": golden}
        vendor = f"{server.url}/static/vendor/"
        message = {"backend": backend, "vendor": vendor, "task": task, "request": request}
        out = page.evaluate(RUN, {"src": src, "message": message})
        assert "error" not in out, out["error"]
        if task != "check":  # a check leaves its pick active
            assert out["backend"] == backend, out
        return out

    yield go
    context.close()


def f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


@pytest.fixture(scope="module")
def made():
    return {name: make_case(name, defs, i) for i, (name, defs) in enumerate(CASES.items())}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_layer_matches_pytorch_on(backend, run, made):
    got = run(backend, "cases", [c for c, _ in made.values()])["out"]
    bad = {}
    for (name, (_, want)), g in zip(made.items(), got, strict=True):
        if "error" in g:
            bad[name] = g["error"]
            continue
        errs = {
            "loss": abs(g["loss"] - want["loss"]) / max(1.0, abs(want["loss"])),
            "grad": close(f32(g["grad"]), want["grad"]),
            "predict": close(f32(g["predict"]), want["predict"]),
        }
        if max(errs.values()) > RTOL or g["tensors"] > 1:
            bad[name] = {**errs, "tensors": g["tensors"]}
    assert not bad, f"{backend}: {bad}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_rounds_match_pytorch_on(backend, run):
    cases = {name: golden_round(inner, 7) for name, inner in ROUNDS.items()}
    got = run(backend, "rounds", [task for task, _, _ in cases.values()])["out"]
    for (name, (_, want, loss)), g in zip(cases.items(), got, strict=True):
        assert "error" not in g, (name, g["error"])
        assert g["steps"] == 5 and g["vectors"] == 37 and g["unchanged"], (name, g)
        delta = f32(g["delta"])
        err = float(np.abs(delta - want).max()) / float(np.abs(want).max())
        assert err <= 1e-4, (backend, name, err)
        assert abs(g["loss"] - loss) <= 1e-4 * max(1.0, abs(loss)), (backend, name, g["loss"], loss)


def mnist_layers() -> list[dict]:
    from mlitb.model.spec import Spec

    defs = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())["layer_defs"]
    return Spec.from_json(defs).to_json()


def test_the_join_check_passes_every_backend_and_picks_the_fastest(run):
    """On the paper's MNIST net every backend agrees with the cpu backend far within the
    tolerance; the pick is the fastest correct one, measured (here wasm: SwiftShader
    WebGPU and WebGL are slower), not the first in a fixed order."""
    out = run("wasm", "check", {"layers": mnist_layers(), "options": {"batchSize": 16}})["out"]
    rows = {r["backend"]: r for r in out["results"]}
    assert set(rows) == set(BACKENDS), rows
    for b, r in rows.items():
        assert r["ok"] and r["error"] <= 1e-5, (b, r)
    rate = {b: r["vectorsPerS"] or r["atMost"] for b, r in rows.items()}
    assert out["chosen"] == max(rate, key=rate.get), out
    assert rows["webgpu"]["device"], rows["webgpu"]  # the adapter is named (swiftshader here)


def test_the_join_check_refuses_a_backend_that_reads_wrong(run):
    """A backend whose results come back wrong (here webgl, with every read value scaled,
    as a broken driver might) is refused with the size of its error; the tab uses a
    correct one. Today's main had no check: webgpu's wrong reads went straight out."""
    corrupt = """
const realData = tf.Tensor.prototype.data;
tf.Tensor.prototype.data = async function () {
  const v = await realData.call(this);
  if (tf.getBackend() === "webgl" && v instanceof Float32Array) {
    for (let i = 0; i < v.length; i++) v[i] *= 1.01;
  }
  return v;
};
"""
    ask = {"layers": mnist_layers(), "options": {"batchSize": 16, "prefer": "webgl"}}
    assert run("wasm", "check", ask)["out"]["chosen"] == "webgl"  # correct: the page's choice is kept
    c = run("wasm", "check", ask, setup=corrupt)["out"]
    rows = {r["backend"]: r for r in c["results"]}
    assert not rows["webgl"]["ok"] and "differs from the cpu backend's" in rows["webgl"]["reason"], rows
    assert 5e-3 < rows["webgl"]["error"] < 0.05, rows["webgl"]
    assert c["chosen"] != "webgl" and "webgl was asked for but its gradient differs" in c["why"], c
