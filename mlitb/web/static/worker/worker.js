/*
 * A browser worker (Web Worker, classic script): trainer or tracker, speaking the mlitb
 * protocol (docs/protocol.md) over its own WebSocket, fetching its data from the data
 * server, computing with the TF.js engine (engine/tfjs_engine.js). The page only sends
 * commands and shows what this posts back; the page stays responsive.
 *
 * page -> worker: {cmd: "start", wsUrl, httpBase, project, role, capacity, backend, name,
 *                  joinKey, batchSize} | {cmd: "stop"} | {cmd: "classify", id, pixels, shape}
 * worker -> page: {type: "status", ...} | {type: "log", level, text} | {type: "test",
 *                  iteration, error} | {type: "prediction", id, probs, labels} | {type: "stopped"}
 */
"use strict";
importScripts("../vendor/tf.min.js", "../vendor/tf-backend-wasm.min.js",
  "../engine/tfjs_engine.js", "../engine/wasm_kernels.js", "../engine/wire.js");
const Wire = self.MlitbWire;

const S = {
  cfg: null, ws: null, engine: null, spec: null, labels: [], projectId: 0, clientId: "",
  params: null, iteration: 0, projectState: "", backend: "", state: "starting",
  vectorsProcessed: 0, vectorsPerS: 0, results: 0, testError: null, allocated: 0,
  stopped: false, backoff: 500, busy: false, lastErrors: [],
};
// the cache: dense arrays of the items allocated to this worker
const C = { pixels: new Uint8Array(0), labels: new Int32Array(0), keys: [], index: new Map(), n: 0, item: 0 };

const post = (m) => self.postMessage(m);
const log = (text, level = "info") => post({ type: "log", level, text });
function status() {
  post({
    type: "status", state: S.state, backend: S.backend, clientId: S.clientId, iteration: S.iteration,
    projectState: S.projectState, cached: C.n, allocated: S.allocated, vectorsPerS: S.vectorsPerS,
    vectorsProcessed: S.vectorsProcessed, results: S.results, testError: S.testError, role: S.cfg && S.cfg.role,
    labels: S.labels,
  });
}
setInterval(status, 500);

// ---------------------------------------------------------------- backend choice
async function softwareWebGL() {
  try {
    const gl = new OffscreenCanvas(1, 1).getContext("webgl2") || new OffscreenCanvas(1, 1).getContext("webgl");
    if (!gl) return true;
    const ext = gl.getExtension("WEBGL_debug_renderer_info");
    const name = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : "";
    return /swiftshader|llvmpipe|software/i.test(name);
  } catch (e) { return true; }
}

async function chooseBackend(preferred) {
  // Auto: webgpu, then webgl (unless software-rendered: wasm is ~20x faster then), then
  // wasm (SIMD, with mlitb's gradient kernels), then cpu.
  let order = ["webgpu", "webgl", "wasm", "cpu"];
  if (preferred && preferred !== "auto") order = [preferred, ...order.filter((b) => b !== preferred)];
  for (const b of order) {
    try {
      if (b === "webgpu") {
        // requestAdapter can hang where GPUs are disabled: give it 3 s
        const adapter = self.navigator.gpu &&
          (await Promise.race([self.navigator.gpu.requestAdapter(), new Promise((r) => setTimeout(() => r(null), 3000))]));
        if (!adapter) continue;
        if (!tf.findBackendFactory("webgpu")) importScripts("../vendor/tf-backend-webgpu.min.js");
      }
      if (b === "webgl" && preferred !== "webgl" && (await softwareWebGL())) continue;
      if (b === "wasm") {
        tf.wasm.setWasmPaths(new URL("../vendor/", self.location.href).href);
      }
      if (!(await tf.setBackend(b))) continue;
      await tf.ready();
      if (tf.getBackend() !== b) continue;
      if (b === "wasm") registerMlitbWasmKernels(tf);
      return b;
    } catch (e) {
      log(`backend ${b} unavailable: ${e.message || e}`, "debug");
    }
  }
  throw new Error("no TF.js backend could start");
}

// ---------------------------------------------------------------- connection
function start(cfg) {
  S.cfg = cfg;
  S.stopped = false;
  connect();
}

let inbox = Promise.resolve();
let allocations = Promise.resolve(); // allocations apply in order, beside the inbox

function connect() {
  if (S.stopped) return;
  S.state = "connecting";
  const ws = new WebSocket(S.cfg.wsUrl);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => {
    S.backoff = 500;
    ws.send(JSON.stringify({
      type: "join", protocol: 1, project: S.cfg.project, role: S.cfg.role, kind: "browser",
      backend: S.backend || "starting", capacity: S.cfg.capacity || 3000, name: S.cfg.name || "",
      join_key: S.cfg.joinKey || "", capabilities: { userAgent: self.navigator.userAgent },
    }));
    S.state = "joining";
  };
  // Messages are handled in arrival order: the welcome's backend start-up is awaited
  // before the allocation and parameters that follow it (long jobs - fetching data,
  // training - are started, not awaited, so the queue never stalls on them).
  ws.onmessage = (ev) => {
    inbox = inbox.then(() => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onParams(ev.data)))
      .catch((e) => log(`message failed: ${e.message || e}`, "error"));
  };
  ws.onclose = (ev) => {
    S.ws = null;
    if (S.stopped) return;
    const fatal = [4403, 4404, 4409, 4410].includes(ev.code);
    log(`connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})${fatal ? "" : "; reconnecting"}`,
      fatal ? "error" : "warn");
    if (fatal) { S.state = "refused: " + (ev.reason || ev.code); S.stopped = true; return; }
    S.state = "reconnecting";
    setTimeout(connect, S.backoff * (0.75 + 0.5 * Math.random()));
    S.backoff = Math.min(S.backoff * 2, 30000);
  };
}

setInterval(() => {
  if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify({ type: "heartbeat", t: Date.now() / 1000 }));
}, 5000);

const send = (obj) => { if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify(obj)); };

async function onText(m) {
  switch (m.type) {
    case "welcome": {
      S.clientId = m.client_id;
      S.projectId = m.project.id;
      S.labels = m.labels;
      S.projectState = m.state;
      S.iteration = m.iteration;
      if (!S.backend) {
        S.backend = await chooseBackend(S.cfg.backend);
        log(`computing with TF.js ${S.backend}`);
      }
      if (S.engine) S.engine.dispose();
      S.spec = m.spec;
      S.engine = MlitbTfjsEngine(tf, m.spec);
      const [h, w, c] = S.engine.inShape;
      C.item = h * w * c;
      C.n = 0; C.index.clear(); C.keys = [];
      S.allocated = 0;
      send({ type: "status", backend: S.backend });
      S.state = "joined";
      break;
    }
    case "model": // a label was added: same data, one more output; parameters follow
      if (S.engine) S.engine.dispose();
      S.spec = m.spec;
      S.labels = m.labels;
      S.engine = MlitbTfjsEngine(tf, m.spec);
      log(`the model grew to ${m.labels.length} labels`);
      break;
    case "allocation":
      allocations = allocations.then(() => allocation(m)).catch((e) => log(`data: ${e.message || e}`, "error"));
      break;
    case "work": work(m.iteration, m.work_ms); break;
    case "state": S.projectState = m.state; break;
    case "error":
      log(`master: ${m.code}: ${m.reason}`, "warn");
      break;
    default: break; // heartbeat echoes; unknown types are ignored (forward compatible)
  }
}

function onParams(buffer) {
  const f = Wire.decodeFrame(buffer);
  if (f.kind !== Wire.PARAMETERS) return;
  S.params = f.values;
  S.iteration = f.iteration;
  if (S.cfg.role === "tracker") evaluate();
}

// ---------------------------------------------------------------- data
function grow(need) {
  if (need * C.item <= C.pixels.length) return;
  const cap = Math.max(need, 2 * (C.pixels.length / Math.max(C.item, 1)), 256);
  const p = new Uint8Array(cap * C.item); p.set(C.pixels.subarray(0, C.n * C.item)); C.pixels = p;
  const l = new Int32Array(cap); l.set(C.labels.subarray(0, C.n)); C.labels = l;
}

function removeKeys(keys) {
  for (const key of keys) {
    const row = C.index.get(key);
    if (row === undefined) continue;
    C.index.delete(key);
    const last = C.n - 1;
    if (row !== last) {
      C.pixels.copyWithin(row * C.item, last * C.item, (last + 1) * C.item);
      C.labels[row] = C.labels[last];
      C.keys[row] = C.keys[last];
      C.index.set(C.keys[row], row);
    }
    C.n--;
  }
}

async function allocation(m) {
  for (const g of m.remove || []) {
    const ids = Wire.textToIds(g.ids);
    S.allocated -= ids.length;
    removeKeys(ids.map((i) => g.dataset * 4294967296 + i));
  }
  for (const g of m.add || []) {
    const ids = Wire.textToIds(g.ids);
    S.allocated += ids.length;
    const base = new URL(g.url.replace(/\/?$/, "/"), S.cfg.httpBase).href;
    for (let s = 0; s < ids.length; s += 4096) {
      await fetchItems(base, g.dataset, ids.slice(s, s + 4096), g.label_map);
    }
  }
}

async function fetchItems(base, dataset, ids, labelMap) {
  const resp = await fetch(`${base}datasets/${dataset}/fetch`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids }),
  });
  if (!resp.ok) { log(`data server: ${resp.status} ${await resp.text()}`, "error"); return; }
  const reader = resp.body.getReader();
  const blocks = Wire.BlockReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    for (const b of blocks.push(value)) {
      grow(C.n + b.n);
      for (let i = 0; i < b.n; i++) {
        const key = dataset * 4294967296 + b.ids[i];
        const label = b.labels[i] < labelMap.length ? labelMap[b.labels[i]] : -1;
        if (C.index.has(key) || label < 0) continue;
        C.pixels.set(b.pixels.subarray(i * C.item, (i + 1) * C.item), C.n * C.item);
        C.labels[C.n] = label;
        C.keys[C.n] = key;
        C.index.set(key, C.n);
        C.n++;
      }
      send({ type: "cached", dataset, ids: Array.from(b.ids) });
    }
  }
}

// ---------------------------------------------------------------- compute
const yieldNow = () => new Promise((r) => { const ch = new MessageChannel(); ch.port1.onmessage = () => r(); ch.port2.postMessage(0); });
let order = new Uint32Array(0), pos = 0;

function batch(rows) {
  const x = new Float32Array(rows.length * C.item);
  const y = new Int32Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const px = C.pixels.subarray(r * C.item, (r + 1) * C.item);
    for (let j = 0; j < C.item; j++) x[i * C.item + j] = px[j] / 255;
    y[i] = C.labels[r];
  }
  return [x, y];
}

function nextRows(b) {
  if (pos >= order.length || order.length !== C.n) {
    order = new Uint32Array(C.n).map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(Math.random() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
    pos = 0;
  }
  const rows = order.subarray(pos, pos + b);
  pos += rows.length;
  return rows;
}

async function work(it, workMs) {
  if (!S.engine || !S.params || it !== S.iteration || C.n === 0 || S.busy) return;
  S.busy = true;
  S.state = "training";
  try {
    S.engine.setParams(S.params);
    const total = new Float32Array(S.engine.numParams);
    const t0 = performance.now();
    let vectors = 0, loss = 0, lastBatch = 0, lastYield = t0;
    const B = S.cfg.batchSize || 32;
    for (;;) {
      const tb = performance.now();
      const [x, y] = batch(nextRows(B));
      const r = S.engine.gradient(x, y, y.length, true);
      for (let i = 0; i < total.length; i++) total[i] += r.grad[i];
      vectors += y.length;
      loss += r.loss;
      lastBatch = performance.now() - tb;
      if (performance.now() - t0 + lastBatch > workMs || it !== S.iteration) break;
      if (performance.now() - lastYield > 100) { await yieldNow(); lastYield = performance.now(); }
    }
    const ms = performance.now() - t0;
    if (it !== S.iteration) return; // newer parameters arrived: this result would be late
    S.vectorsPerS = vectors / (ms / 1000);
    S.vectorsProcessed += vectors;
    S.results++;
    if (S.ws && S.ws.readyState === 1) {
      S.ws.send(Wire.encodeResult(S.projectId, it, total, vectors, loss, S.vectorsPerS, ms));
    }
  } catch (e) {
    log(`training failed: ${e.message || e}`, "error");
  } finally {
    S.busy = false;
    S.state = "waiting";
  }
}

async function evaluate() {
  if (!S.engine || !S.params || C.n === 0 || S.busy) return;
  S.busy = true;
  try {
    const it = S.iteration;
    S.engine.setParams(S.params);
    let wrong = 0, lossSum = 0;
    const K = S.engine.numOutputs;
    for (let s = 0; s < C.n; s += 256) {
      const rows = new Uint32Array(Math.min(256, C.n - s)).map((_, i) => s + i);
      const [x, y] = batch(rows);
      const p = S.engine.predict(x, y.length);
      for (let i = 0; i < y.length; i++) {
        let best = 0;
        for (let k = 1; k < K; k++) if (p[i * K + k] > p[i * K + best]) best = k;
        if (best !== y[i]) wrong++;
        if (S.engine.loss === "softmax") lossSum -= Math.log(Math.max(p[i * K + y[i]], 1e-12));
      }
      await yieldNow();
    }
    S.testError = wrong / C.n;
    send({ type: "test_result", iteration: it, error: S.testError, loss: lossSum / C.n, count: C.n });
    post({ type: "test", iteration: it, error: S.testError });
    S.state = "tracking";
  } finally {
    S.busy = false;
  }
}

function classify(m) {
  if (!S.engine || !S.params) { post({ type: "prediction", id: m.id, error: "no model yet" }); return; }
  S.engine.setParams(S.params);
  const x = new Float32Array(m.pixels.length);
  for (let i = 0; i < x.length; i++) x[i] = m.pixels[i] / 255;
  const p = S.engine.predict(x, 1);
  post({ type: "prediction", id: m.id, probs: Array.from(p), labels: S.labels });
}

self.onmessage = (e) => {
  const m = e.data;
  if (m.cmd === "start") start(m);
  else if (m.cmd === "classify") classify(m);
  else if (m.cmd === "stop") {
    S.stopped = true;
    if (S.ws) { try { S.ws.send(JSON.stringify({ type: "leave", reason: "stopped in the page" })); } catch (e) {} S.ws.close(1000); }
    post({ type: "stopped" });
  }
};
