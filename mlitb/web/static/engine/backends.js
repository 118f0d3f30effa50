/*
 * Which TF.js backend a browser worker computes with, decided by measurement at join time.
 *
 * A volunteer's result is audited: the master replays it on PyTorch and bans a client
 * whose result does not replay (docs/security.md). A backend that computes wrongly would
 * get an honest volunteer banned, so before any result is sent the worker runs one
 * forward + backward of the project's own model on a fixed batch on every backend the
 * browser offers and compares each with TF.js's cpu backend (plain JavaScript float32,
 * held to PyTorch by the golden vectors). A backend that disagrees beyond `tolerance`
 * (relative to the largest value) is not used, and the check says why. Among the correct
 * ones the fastest measured one wins (software WebGPU on a CPU is ~4x slower than wasm;
 * a real GPU is faster): order does not decide. A backend the page asks for
 * (`prefer`) is used if it is correct, else the fastest correct one, with the reason.
 *
 *   await MlitbBackends.start(tf, name, {vendor})  -> {ok, reason?, device?}
 *       start one backend: webgpu needs an adapter (3 s at most) and its bundle; wasm
 *       gets its .wasm path and mlitb's gradient kernels; webgl must render float32.
 *   await MlitbBackends.check(tf, Engine, layers, {vendor, candidates, prefer, batchSize,
 *                             tolerance, budgetMs, log}) -> {chosen, why, results, ms}
 *       results: [{backend, ok, error (relative), vectorsPerS, reason, device}]; leaves
 *       `chosen` as TF.js's active backend. Engine is engine/tfjs_engine.js's factory.
 * A classic script (self.MlitbBackends in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbBackends = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  // wasm first: it is quick to check and time, and its speed lets a slow GPU backend's
  // timing stop early. cpu is the reference, and the last resort
  const CANDIDATES = ["wasm", "webgpu", "webgl"];
  const TOLERANCE = 1e-4; // the golden vectors' bound against PyTorch; honest backends: ~1e-6
  const CHECK_N = 4; // vectors in the correctness batch
  const WEBGPU_ADAPTER_MS = 3000; // requestAdapter can hang where GPUs are disabled
  const START_MS = 20000; // a backend that has not started by then is not used (a hung driver)

  /** `promise`, or a rejection naming `what` after `ms`. */
  function within(promise, ms, what) {
    let timer;
    const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms / 1000} s`)), ms); });
    return Promise.race([promise, late]).finally(() => clearTimeout(timer));
  }

  const started = new Map(); // backend -> {ok, reason, device}: start each one once

  async function start(tf, name, opts = {}) {
    if (started.has(name)) {
      const s = started.get(name);
      if (s.ok && !(await tf.setBackend(name))) return { ok: false, reason: "it no longer starts" };
      return s;
    }
    const s = await startOnce(tf, name, opts);
    started.set(name, s);
    return s;
  }

  async function startOnce(tf, name, { vendor = "../vendor/" } = {}) {
    let device = "";
    try {
      const base = new URL(vendor, self.location.href).href; // the vendor folder, absolute
      if (name === "webgpu") {
        const gpu = typeof navigator !== "undefined" && navigator.gpu;
        if (!gpu) return { ok: false, reason: "this browser has no WebGPU" };
        const adapter = await Promise.race([gpu.requestAdapter(),
          new Promise((r) => setTimeout(() => r(null), WEBGPU_ADAPTER_MS))]);
        if (!adapter) return { ok: false, reason: "no WebGPU adapter (GPU disabled or blocked)" };
        const info = adapter.info || {};
        device = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
        if (!tf.findBackendFactory("webgpu")) importScripts(new URL("tf-backend-webgpu.min.js", base).href);
      }
      if (name === "wasm") tf.wasm.setWasmPaths(base);
      if (!(await within(tf.setBackend(name), START_MS, "starting it"))) return { ok: false, reason: "it did not start" };
      await within(tf.ready(), START_MS, "starting it");
      if (tf.getBackend() !== name) return { ok: false, reason: "it did not start" };
      if (name === "webgl") {
        device = webglRenderer();
        if (!tf.env().getBool("WEBGL_RENDER_FLOAT32_ENABLED")) {
          // float16 textures only (some phones): ~1e-3 per op, far beyond what the
          // master's replay of an audited round accepts
          return { ok: false, reason: "it renders only float16 here", device };
        }
      }
      if (name === "wasm") registerMlitbWasmKernels(tf);
      return { ok: true, device };
    } catch (e) {
      return { ok: false, reason: `it failed to start: ${e.message || e}`, device };
    }
  }

  function webglRenderer() {
    try {
      const gl = new OffscreenCanvas(1, 1).getContext("webgl2");
      const ext = gl && gl.getExtension("WEBGL_debug_renderer_info");
      return ext ? String(gl.getParameter(ext.UNMASKED_RENDERER_WEBGL)) : "";
    } catch (e) {
      return "";
    }
  }

  /** A fixed batch for `engine`: parameters, inputs and targets from a seeded generator. */
  function fixedBatch(engine, n, seed) {
    let s = seed >>> 0; // mulberry32
    const rand = () => {
      s = (s + 0x6d2b79f5) >>> 0;
      let t = Math.imul(s ^ (s >>> 15), 1 | s);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const params = new Float32Array(engine.numParams).map(() => (rand() - 0.5) * 0.2);
    const V = engine.vocab; // token ids in [0, V) for a model that starts with an embedding
    const x = new Float32Array(n * engine.inShape.reduce((a, b) => a * b, 1)).map(() => (V ? Math.floor(rand() * V) : rand()));
    const K = engine.numOutputs;
    const y = engine.loss === "regression"
      ? new Float32Array(n * K).map(() => rand() - 0.5)
      : new Int32Array(n * engine.positions).map(() => Math.floor(rand() * K));
    return { params, x, y, n };
  }

  /** Largest |got - want| relative to the largest |want|; Infinity if anything is not finite. */
  function relError(got, want) {
    if (got.length !== want.length) return Infinity;
    let diff = 0, scale = 0;
    for (let i = 0; i < want.length; i++) {
      if (!Number.isFinite(got[i])) return Infinity;
      diff = Math.max(diff, Math.abs(got[i] - want[i]));
      scale = Math.max(scale, Math.abs(want[i]));
    }
    return diff / Math.max(scale, 1e-12);
  }

  /** The fixed batch's gradient, loss and predictions; `againMs`: a second gradient
   * call's time, once the first compiled whatever the backend compiles. */
  async function forwardBackward(tf, Engine, layers, b) {
    const engine = Engine(tf, layers);
    try {
      engine.setParams(b.params);
      const g = await engine.gradient(b.x, b.y, b.n, false);
      const p = await engine.predict(b.x, b.n);
      const t0 = performance.now();
      await engine.gradient(b.x, b.y, b.n, false);
      return { grad: g.grad, loss: g.loss, predict: p, againMs: performance.now() - t0 };
    } finally {
      engine.dispose();
    }
  }

  /** Vectors/s of forward + backward at batch size B: one warm-up call (shader
   * compilation), then calls until budgetMs has passed (at least one), or until it is
   * clear that it is slower than `floor` vectors/s (less than half the best so far). */
  async function speed(tf, Engine, layers, B, budgetMs, floor = 0) {
    const engine = Engine(tf, layers);
    try {
      const b = fixedBatch(engine, B, 7);
      engine.setParams(b.params);
      await engine.gradient(b.x, b.y, B, true);
      let calls = 0;
      const t0 = performance.now();
      do {
        await engine.gradient(b.x, b.y, B, true);
        calls++;
      } while (performance.now() - t0 < budgetMs && (calls * B) / ((performance.now() - t0) / 1000) >= floor);
      return (calls * B) / ((performance.now() - t0) / 1000);
    } finally {
      engine.dispose();
    }
  }

  /** check(), and when it fails, the cpu backend active again before the error goes on. */
  async function check(tf, Engine, layers, opts = {}) {
    try {
      return await checkBackends(tf, Engine, layers, opts);
    } catch (e) {
      try { await tf.setBackend("cpu"); } catch (e2) { /* nothing left to fall back on */ }
      throw e;
    }
  }

  async function checkBackends(tf, Engine, layers, opts = {}) {
    let { candidates = CANDIDATES } = opts;
    const { vendor = "../vendor/", prefer = "auto", batchSize = 32,
      tolerance = TOLERANCE, budgetMs = 300, log = () => {} } = opts;
    const t0 = performance.now();
    const ref = await start(tf, "cpu", { vendor });
    if (!ref.ok) throw new Error(`TF.js's cpu backend did not start: ${ref.reason}`);
    const probe = Engine(tf, layers); // for the batch's shapes only
    const batch = fixedBatch(probe, CHECK_N, 20260);
    probe.dispose();
    const want = await forwardBackward(tf, Engine, layers, batch);
    const results = [];
    if (prefer === "cpu") candidates = []; // the reference itself: nothing to compare
    const pinnedName = prefer && prefer !== "auto" && candidates.includes(prefer) ? prefer : null;
    // the page's choice first: when it is correct, the others need not be checked
    const order = pinnedName ? [pinnedName, ...candidates.filter((c) => c !== pinnedName)] : candidates;
    for (const name of order) {
      if (pinnedName && results.length && results[0].ok) break;
      const r = { backend: name, ok: false, error: null, vectorsPerS: null, reason: "", device: "" };
      results.push(r);
      const tb = performance.now();
      const s = await start(tf, name, { vendor });
      r.startMs = performance.now() - tb;
      r.device = s.device || "";
      if (!s.ok) { r.reason = s.reason; continue; }
      try {
        const got = await forwardBackward(tf, Engine, layers, batch);
        r.checkMs = performance.now() - tb - r.startMs;
        r.error = Math.max(relError(got.grad, want.grad), relError(got.predict, want.predict),
          relError([got.loss], [want.loss]));
        if (!(r.error <= tolerance)) {
          r.reason = `its gradient differs from the cpu backend's by ${fmt(r.error)} (at most ${fmt(tolerance)} is accepted)`;
          log(`backend ${name} is not used: ${r.reason}`, "warn");
          continue;
        }
        // a batch of batchSize takes at least as long as the check's CHECK_N vectors: if even
        // that bound is below the best so far, timing it would only cost the volunteer time
        const best = Math.max(0, ...results.filter((x) => x.vectorsPerS).map((x) => x.vectorsPerS));
        const bound = batchSize / (Math.max(got.againMs, 0.01) / 1000);
        if (bound < best) r.atMost = bound;
        else r.vectorsPerS = await speed(tf, Engine, layers, batchSize, budgetMs, best / 2);
        r.ms = performance.now() - tb;
        r.ok = true; // correct, and it trains a whole batch
      } catch (e) {
        r.ok = false;
        r.reason = `it failed on this model: ${e.message || e}`;
      }
    }
    const good = results.filter((r) => r.ok);
    let chosen, why;
    const pinned = prefer && prefer !== "auto" ? results.find((r) => r.backend === prefer) : null;
    if (pinned && pinned.ok) {
      chosen = prefer;
      why = "asked for by the page";
    } else if (good.length) {
      const rate = (r) => r.vectorsPerS || r.atMost || 0;
      good.sort((a, b) => rate(b) - rate(a));
      chosen = good[0].backend;
      why = good.length > 1 ? `the fastest of ${good.length} correct backends` : "the only correct backend";
      if (pinned) why += `; ${prefer} was asked for but ${pinned.reason || "is not available"}`;
      else if (prefer && prefer !== "auto") why += `; ${prefer} is unknown`;
    } else if (prefer === "cpu") {
      chosen = "cpu";
      why = "asked for by the page";
    } else {
      chosen = "cpu";
      why = "no faster backend computes correctly here";
    }
    if (chosen === "cpu") {
      const r = { backend: "cpu", ok: true, error: 0, vectorsPerS: null, reason: "the reference", device: "" };
      await start(tf, "cpu", { vendor });
      r.vectorsPerS = await speed(tf, Engine, layers, Math.min(batchSize, 8), budgetMs);
      results.push(r);
    }
    const active = await start(tf, chosen, { vendor });
    if (!active.ok || tf.getBackend() !== chosen) throw new Error(`backend ${chosen} did not start again`);
    return { chosen, why, results, ms: performance.now() - t0 };
  }

  const fmt = (v) => (Number.isFinite(v) ? v.toExponential(1) : String(v));

  /** One line for people: "wasm (the fastest of 2 correct backends): wasm 330/s, webgpu 81/s; webgl not used: ..." */
  function describe(c) {
    const n = (v) => Math.round(v).toLocaleString("en");
    const parts = c.results.map((r) => {
      if (!r.ok) return `${r.backend} not used: ${r.reason}`;
      return r.vectorsPerS ? `${r.backend} ${n(r.vectorsPerS)} vectors/s` : `${r.backend} at most ${n(r.atMost)} vectors/s`;
    });
    return `${c.chosen} (${c.why}). ${parts.join("; ")}.`;
  }

  return { start, check, describe, fixedBatch, relError, CANDIDATES, TOLERANCE };
});
