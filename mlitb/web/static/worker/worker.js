/*
 * A browser worker (Web Worker, classic script): trainer or tracker, speaking the mlitb
 * protocol (docs/protocol.md) over its own WebSocket, fetching its data from the data
 * server, computing with the TF.js engine (engine/tfjs_engine.js). The page only sends
 * commands and shows what this posts back; the page stays responsive.
 *
 * page -> worker: {cmd: "start", wsUrl, httpBase, project, role, capacity, backend, name,
 *                  joinKey, batchSize} | {cmd: "stop"} | {cmd: "classify", id, pixels, shape}
 *                  | {cmd: "generate", id, prompt, length, temperature} (a language model writes on)
 * worker -> page: {type: "status", ...} | {type: "log", level, text} | {type: "test",
 *                  iteration, error} | {type: "prediction", id, probs, labels} | {type: "stopped"}
 *
 * Protocol 2 (when engine/wire.js speaks it): work orders of mode "gradient" (the summed
 * gradient, frame type 2) or "local" (local SGD: inner optimizer steps from the broadcast
 * parameters, engine/inner.js; the parameter change goes back as frame type 3), results
 * compressed as the order says (engine/codecs.js, error feedback kept across orders),
 * parameter-delta frames (type 4) applied to the current parameters, and a tracker that
 * evaluates a sample of the test set at most once per period. A local order with
 * `overlap_ms` keeps the worker stepping after it sent its result, until the next order
 * comes (at most overlap_ms); those steps are moved onto the next parameters
 * (new + (now - sent)) and counted in the next result. Without a `capacity` from
 * the page the join offers memory instead (memory_mb, ~1/8 of the device's, <= 400 MB).
 * Every round is recorded (engine/proof.js: item keys per batch, state checkpoints) and
 * the last ones kept, so that an `audit` from the master is answered with a proof frame
 * (version 2: a commit of hashes, then the `reveal` of what the master names)
 * (verification by recomputation, docs/security.md).
 */
"use strict";
importScripts("../vendor/tf.min.js", "../vendor/tf-backend-wasm.min.js",
  "../engine/layout.js", "../engine/tfjs_engine.js", "../engine/wasm_kernels_bin.js", "../engine/wasm_kernels.js", "../engine/wire.js", "../engine/inner.js",
  "../engine/proof.js", "../engine/backends.js");
try {
  importScripts("../engine/codecs.js"); // optional: without it results go uncompressed
} catch (e) { /* absent: see feedback() */ }
const Wire = self.MlitbWire;
const Inner = self.MlitbInner;
const Proof = self.MlitbProof;
const Backends = self.MlitbBackends;
// wire.js with protocol 2 frames (delta results, parameter deltas, compressed dtypes)?
const V2 = Wire.DELTA !== undefined;
const PROTOCOL = V2 ? 2 : 1;
const DTYPES = { none: 1, float16: 2, int8: 3 }; // work order's compression -> frame dtype
const ALTERNATE_AFTER = 3; // failed connections in a row before trying the next URL
// close codes after which this tab stops (docs/protocol.md): wrong key, unknown project,
// old protocol, deleted, banned; the page explains each (app/notices.js)
const FATAL_CLOSES = [4403, 4404, 4409, 4410, 4453];

const S = {
  cfg: null, ws: null, engine: null, spec: null, labels: [], projectId: 0, clientId: "",
  params: null, iteration: 0, projectState: "", backend: "", state: "starting",
  vectorsProcessed: 0, vectorsPerS: 0, results: 0, testError: null, allocated: 0,
  stopped: false, backoff: 500, busy: false, lastErrors: [],
  // where to connect: the page's server first, then the welcome's `alternatives` (a relay
  // names its master); after ALTERNATE_AFTER failed connections in a row, the next one
  urls: [], urlIndex: 0, failsInRow: 0, welcomed: false,
  // local SGD: the inner optimizer (kept across work orders with the same inner settings)
  // and the spec's decay multipliers; error feedback per (frame kind, dtype) of results
  inner: null, decayMul: null, feedback: new Map(), feedbackKey: "", resyncAt: 0, nextWork: null,
  carry: null, // overlap: {delta, vectors, loss, ms, opt, proof, after} not yet sent, for the order of iteration after + 1
  proofs: new Map(), // iteration -> [{vectors, loss, proof}] of its rounds, for the master's audits
  committed: null, // {iteration, proof}: the round committed (proofs v2) whose reveal the master may ask
  // the learner's generation: +1 on each welcome, lost connection and model change. A round
  // started in an older one is void (its engine, cache, inner state or server are gone):
  // it stops at its next batch and sends nothing, so no half-old result or proof goes out
  gen: 0,
  conn: 0, // +1 on each welcome and lost connection: allocations of an older one are void
  // the keys allocated to this tab now, changed as each allocation arrives (removals at
  // once): a fetch that was asked before a removal must not put its items back in the cache
  owned: new Set(),
  // tracker schedule (welcome's `tracker`): {periodMs, sample} or null = every parameters frame
  tracker: null, lastEvalEnd: -Infinity, lastEvalMs: 0, evalTimer: null, sample: null,
  // the join-time backend check (engine/backends.js) and the spec it was made for
  backendCheck: null, checkedSpec: "", checking: false,
  notice: null, // why the master refused or removed this tab: {code, reason, detail}, for the page
  // data_source=device: the items the page read from this device (app/device_data.js):
  // {pixels, labels (project indices), perLabel, shape}; never sent, only their counts
  dataSource: "server", device: null,
};
// the cache: dense arrays of the items allocated to this worker
const C = { pixels: new Uint8Array(0), labels: new Int32Array(0), keys: [], index: new Map(), n: 0, item: 0 };

const post = (m) => self.postMessage(m);
const log = (text, level = "info") => post({ type: "log", level, text });
function status() {
  post({
    type: "status", state: S.state, backend: S.backend, threads: threadsInUse(), specKey: S.specKey, clientId: S.clientId, iteration: S.iteration,
    projectState: S.projectState, cached: C.n, allocated: S.allocated, vectorsPerS: S.vectorsPerS,
    vectorsProcessed: S.vectorsProcessed, results: S.results, testError: S.testError, role: S.cfg && S.cfg.role,
    labels: S.labels, backendCheck: S.backendCheck, notice: S.notice, dataSource: S.dataSource,
    inShape: S.engine ? S.engine.inShape : null,
  });
}
setInterval(status, 500);

// ---------------------------------------------------------------- backend choice
/**
 * The backend for this model, by measurement (engine/backends.js): every backend the
 * browser offers is run on the project's own model and compared with TF.js's cpu
 * backend; the fastest correct one is used (the page's choice, if it is correct). Done
 * before the first result of a model is sent, again when the model changes.
 */
/** FNV-1a of a model's spec: the key a device remembers its fastest backend under. */
function specKey(key) {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** Which backend to try first: the project owner's pin, else the page's choice, else what
 * this device measured fastest for this model before (the page remembers it), else none
 * (every backend checked and timed). A choice that computes wrongly is never used. */
function preferred(key, pinned) {
  if (pinned && pinned !== "auto") return { prefer: pinned, why: "pinned by the project's owner" };
  if (S.cfg.backend && S.cfg.backend !== "auto") return { prefer: S.cfg.backend, why: "" }; // check() says "asked for by the page"
  const known = (S.cfg.remembered || {})[specKey(key)];
  if (known && known.chosen) return { prefer: known.chosen, why: "this device's fastest for this model (remembered)" };
  return { prefer: "auto", why: "" };
}

async function ensureBackend(spec, pinned = "auto") {
  const key = JSON.stringify(spec);
  if (S.backend && S.checkedSpec === key && S.pinned === pinned) return;
  const before = S.state;
  S.state = "checking this device's backends";
  S.checking = true; // no round, evaluation or classification meanwhile: backends switch under them
  S.pinned = pinned;
  status();
  try {
    const choice = preferred(key, pinned);
    const c = await Backends.check(tf, MlitbTfjsEngine, spec, {
      prefer: choice.prefer, batchSize: S.cfg.batchSize || 32, log,
    });
    if (choice.why && c.chosen === choice.prefer) c.why = choice.why;
    S.specKey = specKey(key);
    S.backend = c.chosen;
    S.backendCheck = { chosen: c.chosen, why: c.why, ms: Math.round(c.ms), text: Backends.describe(c), results: c.results };
    log(`computing with TF.js ${S.backendCheck.text} (checked in ${(c.ms / 1000).toFixed(1)} s)`);
  } catch (e) {
    // the check itself failed (e.g. this model does not build): the reference backend,
    // slow but what the golden vectors hold to PyTorch
    S.backend = "cpu";
    S.backendCheck = { chosen: "cpu", why: "the check failed", ms: 0, text: `cpu (the backend check failed: ${e.message || e})`, results: [] };
    log(`backend check failed: ${e.message || e}; computing with TF.js cpu`, "warn");
  } finally {
    S.checking = false;
    S.checkedSpec = key;
    if (S.state === "checking this device's backends") S.state = before;
  }
}

// ---------------------------------------------------------------- connection
function start(cfg) {
  S.cfg = cfg;
  S.stopped = false;
  // the cores the volunteer gives (app/volunteer.js): wasm's thread pool, fixed when the
  // backend starts (threads need cross-origin isolation: without it wasm runs one)
  const threads = Math.floor(Number(cfg.threads) || 0);
  if (threads > 0 && tf.wasm && tf.wasm.setThreadsCount) {
    // TF.js 4.22's wasm pool takes at most half of navigator.hardwareConcurrency (tfjs
    // #6081, #8513), a cap for pages that compute on their main thread; this is a Web Worker
    // and the volunteer chose the count, so its pool is told there are enough cores. Set
    // before wasm starts (the pool is fixed then). Measured on a 2-core VM: 2 threads train
    // the MNIST and fashion nets 1.17-1.19x faster than 1 (docs/performance.md).
    const real = Number(self.navigator.hardwareConcurrency) || 1;
    if (2 * threads > real) {
      try {
        Object.defineProperty(self.navigator, "hardwareConcurrency", { value: 2 * threads, configurable: true });
      } catch (e) { /* the pool keeps TF.js's cap */ }
    }
    tf.wasm.setThreadsCount(threads);
  }
  S.urls = [{ wsUrl: cfg.wsUrl, httpBase: cfg.httpBase }];
  S.urlIndex = 0;
  S.failsInRow = 0;
  connect();
}

/** A welcome's alternatives (http(s) URLs of other servers of the project) as places to
 * connect to; kept after the page's own, at most 8, anything but http(s) ignored. */
function addAlternatives(list) {
  for (const alt of (Array.isArray(list) ? list : []).slice(0, 8)) {
    let u;
    try { u = new URL(String(alt)); } catch (e) { continue; }
    if (u.protocol !== "http:" && u.protocol !== "https:") continue;
    const path = u.pathname.replace(/\/+$/, "");
    const entry = {
      wsUrl: `${u.protocol === "https:" ? "wss:" : "ws:"}//${u.host}${path}/ws`,
      httpBase: `${u.origin}${path}/`,
    };
    if (!S.urls.some((x) => x.wsUrl === entry.wsUrl)) S.urls.push(entry);
  }
}

let inbox = Promise.resolve();
let allocations = Promise.resolve(); // allocations apply in order, beside the inbox

function connect() {
  if (S.stopped) return;
  S.state = "connecting";
  S.welcomed = false;
  const ws = new WebSocket(S.urls[S.urlIndex].wsUrl);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onopen = () => {
    S.backoff = 500;
    const join = {
      type: "join", protocol: PROTOCOL, project: S.cfg.project, role: S.cfg.role, kind: "browser",
      backend: S.backend || "starting", capacity: 3000, name: S.cfg.name || "",
      join_key: S.cfg.joinKey || "", capabilities: { userAgent: self.navigator.userAgent, proofs: self.MlitbCodecs ? 2 : 1 },
    };
    // the volunteer's key (app/volunteer.js): the master counts credit under a hash of it
    if (/^[A-Za-z0-9_-]{16,100}$/.test(S.cfg.volunteer || "")) join.volunteer = S.cfg.volunteer;
    if (Number(S.cfg.capacity) > 0) join.capacity = Math.floor(Number(S.cfg.capacity));
    else if (V2) {
      // memory-based: the master turns memory_mb into an item cap once it knows the item size
      join.capacity = 10000000;
      join.memory_mb = memoryMb();
    }
    ws.send(JSON.stringify(join));
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
    S.gen++;
    S.conn++;
    if (S.stopped) return;
    const fatal = FATAL_CLOSES.includes(ev.code);
    log(`connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})${fatal ? "" : "; reconnecting"}`,
      fatal ? "error" : "warn");
    if (fatal) {
      S.state = "refused: " + (ev.reason || ev.code);
      S.stopped = true;
      S.notice = { code: ev.code, reason: ev.reason || "", detail: (S.notice && S.notice.detail) || "" };
      status();
      return;
    }
    // full (4429): not fatal, this tab retries; the page says so until a welcome
    S.notice = ev.code === 4429 ? { code: ev.code, reason: ev.reason || "", detail: "" } : S.notice;
    S.state = "reconnecting";
    if (!S.welcomed) S.failsInRow += 1;
    if (S.failsInRow >= ALTERNATE_AFTER && S.urls.length > 1) {
      S.urlIndex = (S.urlIndex + 1) % S.urls.length;
      S.failsInRow = 0;
      log(`trying ${S.urls[S.urlIndex].wsUrl} after ${ALTERNATE_AFTER} failed connections`, "warn");
    }
    setTimeout(connect, S.backoff * (0.75 + 0.5 * Math.random()));
    S.backoff = Math.min(S.backoff * 2, 30000);
  };
}

setInterval(() => {
  if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify({ type: "heartbeat", t: Date.now() / 1000 }));
}, 5000);

const send = (obj) => { if (S.ws && S.ws.readyState === 1) S.ws.send(JSON.stringify(obj)); };

/** Compute threads of the backend in use (shown on the dashboard): wasm's thread pool
 * (1 without cross-origin isolation), 1 for cpu, 0 (not said) for a GPU backend. */
function threadsInUse() {
  try {
    if (S.backend === "wasm" && tf.wasm && tf.wasm.getThreadsCount) return tf.wasm.getThreadsCount();
  } catch (e) { /* not started */ }
  return S.backend === "cpu" ? 1 : 0;
}

/** The cache's memory budget: ~1/8 of the device's memory, at most 400 MB. */
function memoryMb() {
  const gb = Number(self.navigator.deviceMemory) || 2;
  return Math.max(1, Math.floor(Math.min(400, (gb * 1024) / 8)));
}

/** Forget learner state bound to a model: inner optimizer, decay multipliers, error feedback. */
/** Resolves once no round is computing (S.gen++ before: the round stops at its next batch). */
async function roundStopped() {
  while (S.busy) await new Promise((resolve) => setTimeout(resolve, 20));
}

function resetLearner() {
  S.inner = null;
  S.carry = null;
  S.decayMul = null;
  S.feedback.clear();
  S.proofs.clear();
  S.committed = null;
}

async function onText(m) {
  switch (m.type) {
    case "welcome": {
      S.gen++;
      S.conn++;
      S.nextWork = null; // an order of an older connection is void too
      S.welcomed = true;
      S.failsInRow = 0;
      S.notice = null;
      addAlternatives(m.alternatives);
      S.clientId = m.client_id;
      S.projectId = m.project.id;
      S.labels = m.labels;
      S.projectState = m.state;
      S.iteration = m.iteration;
      S.params = null; // the parameters frame follows
      S.resyncAt = 0;
      resetLearner();
      setTracker(m.tracker);
      const conn = S.conn;
      await ensureBackend(m.spec, m.browser_backend || "auto");
      if (conn !== S.conn || S.stopped) break; // closed meanwhile: this welcome is void
      if (S.engine) S.engine.dispose();
      S.spec = m.spec;
      S.engine = MlitbTfjsEngine(tf, m.spec);
      const [h, w, c] = S.engine.inShape;
      // a language model's items are windows of its T inputs + 1 token (mlitb.model.inputs)
      C.item = h * w * c + (S.engine.loss === "seqsoftmax" ? 1 : 0);
      C.n = 0; C.index.clear(); C.keys = [];
      S.allocated = 0;
      S.owned = new Set();
      send({ type: "status", backend: S.backend, ...(threadsInUse() ? { threads: threadsInUse() } : {}) });
      S.state = "joined";
      S.dataSource = m.data_source || "server";
      if (S.dataSource === "device" && S.cfg.role === "trainer") useDeviceData();
      break;
    }
    case "model": // a label was added: same data, one more output; parameters follow
      S.gen++;
      S.nextWork = null; // an order for the old model is void
      await ensureBackend(m.spec, S.pinned || "auto");
      if (S.engine) S.engine.dispose();
      S.spec = m.spec;
      S.labels = m.labels;
      S.engine = MlitbTfjsEngine(tf, m.spec);
      resetLearner();
      log(`the model grew to ${m.labels.length} labels`);
      break;
    case "settings": // the owner pinned a backend (or unpinned it) while this tab trains
      if (S.spec && (m.browser_backend || "auto") !== (S.pinned || "auto")) {
        S.gen++;
        S.nextWork = null; // the round under way computed on the backend being replaced
        await roundStopped(); // it stops at its next batch: no backend switches under it
        const from = S.backend;
        await ensureBackend(S.spec, m.browser_backend || "auto");
        if (S.backend !== from) {
          if (S.engine) S.engine.dispose();
          S.engine = MlitbTfjsEngine(tf, S.spec);
          S.inner = null; // its state lived on the old backend; proofs of past rounds stay
          send({ type: "status", backend: S.backend, ...(threadsInUse() ? { threads: threadsInUse() } : {}) });
        }
        log(`the project's backend setting is now ${m.browser_backend || "auto"}: computing with ${S.backend}`);
      }
      break;
    case "allocation": {
      // Removals apply at once, not after the fetches queued before them: the next round
      // must not train on items the master gave another trainer (its audit checks every
      // key: a tab whose removal waited behind a download was banned for "47 item keys this
      // trainer was never given" in a mixed fleet, 2026-12-07). Additions are fetched in order.
      const gen = S.conn; // an allocation belongs to its connection: a welcome voids it (the cache started over)
      for (const g of m.remove || []) {
        const keys = Wire.textToIds(g.ids).map((i) => g.dataset * 4294967296 + i);
        S.allocated -= keys.length;
        for (const k of keys) S.owned.delete(k);
        removeKeys(keys);
      }
      for (const g of m.add || []) {
        const ids = Wire.textToIds(g.ids);
        S.allocated += ids.length;
        for (const i of ids) S.owned.add(g.dataset * 4294967296 + i);
      }
      allocations = allocations.then(() => fetchAdded(m, gen)).catch((e) => log(`data: ${e.message || e}`, "error"));
      break;
    }
    case "work": work(m); break;
    case "audit": answerAudit(m); break;
    case "reveal": answerReveal(m); break;
    case "state": S.projectState = m.state; break;
    case "error":
      // a ban's reason comes just before its close (4453): kept for the page's notice
      if (m.code === "banned") S.notice = { code: 4453, reason: "banned", detail: String(m.reason || "") };
      log(`master: ${m.code}: ${m.reason}`, "warn");
      break;
    default: break; // heartbeat echoes; unknown types are ignored (forward compatible)
  }
}

function onParams(buffer) {
  const f = Wire.decodeFrame(buffer);
  if (f.kind === Wire.PARAMETERS) {
    S.params = f.values;
    S.iteration = f.iteration;
    S.resyncAt = 0;
  } else if (V2 && f.kind === Wire.PARAM_DELTA) {
    // new parameters = ours + delta, valid only on the parameters of iteration f.base
    if (!S.params || f.base !== S.iteration || f.values.length !== S.params.length) {
      // out of step: ask for a full parameters frame (again after 5 s if none came)
      if (!S.resyncAt || performance.now() - S.resyncAt > 5000) {
        send({ type: "resync", iteration: S.iteration });
        S.resyncAt = performance.now();
      }
      return;
    }
    const next = new Float32Array(S.params.length); // a new array: a running round keeps its start
    for (let i = 0; i < next.length; i++) next[i] = Math.fround(S.params[i] + f.values[i]);
    S.params = next;
    S.iteration = f.iteration;
  } else {
    return;
  }
  if (S.cfg.role === "tracker") {
    if (S.tracker) scheduleEvaluation();
    else evaluate();
  }
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

/** An allocation's added ids, fetched (its removals applied when it arrived). */
async function fetchAdded(m, gen) {
  if (gen !== S.conn) return;
  for (const g of m.add || []) {
    const ids = Wire.textToIds(g.ids);
    // fetched in a random order: a dataset's ids run label by label (one upload sub-folder
    // per label) and the first rounds train on what has arrived (in id order: one or two digits)
    for (let i = ids.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [ids[i], ids[j]] = [ids[j], ids[i]];
    }
    const base = new URL(g.url.replace(/\/?$/, "/"), S.urls[S.urlIndex].httpBase).href;
    for (let s = 0; s < ids.length; s += 4096) {
      if (gen !== S.conn) return;
      await fetchItems(base, g.dataset, ids.slice(s, s + 4096), g.label_map, g.grant, gen);
    }
  }
}

async function fetchItems(base, dataset, ids, labelMap, grant, gen) {
  const headers = { "Content-Type": "application/json" };
  if (grant) headers["X-Read-Grant"] = grant; // a private project's data (given with the allocation)
  const resp = await fetch(`${base}datasets/${dataset}/fetch`, { method: "POST", headers, body: JSON.stringify({ ids }) });
  if (!resp.ok) { log(`data server: ${resp.status} ${await resp.text()}`, "error"); return; }
  const reader = resp.body.getReader();
  const blocks = Wire.BlockReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    for (const b of blocks.push(value)) {
      if (gen !== S.conn) { reader.cancel().catch(() => {}); return; } // a welcome came meanwhile
      grow(C.n + b.n);
      for (let i = 0; i < b.n; i++) {
        const key = dataset * 4294967296 + b.ids[i];
        const label = b.labels[i] < labelMap.length ? labelMap[b.labels[i]] : -1;
        // only what is still allocated: a later allocation may have taken it away meanwhile
        if (C.index.has(key) || label < 0 || !S.owned.has(key)) continue;
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

/** A device project: this device's items (from the page) fill the cache under local keys,
 * and the master hears how many there are per label. None yet: the page asks for them. */
function useDeviceData() {
  if (S.dataSource !== "device" || !S.engine || !S.welcomed) return;
  const d = S.device;
  const [h, w, c] = S.engine.inShape;
  C.n = 0; C.index.clear(); C.keys = [];
  if (!d || d.labels.length === 0 || d.shape.join("x") !== [h, w, c].join("x")) {
    S.allocated = 0;
    S.state = "waiting for your data";
    send({ type: "device_data", items: 0, per_label: {} });
    post({ type: "need_data", shape: [h, w, c], labels: S.labels });
    status();
    return;
  }
  grow(d.labels.length);
  C.pixels.set(d.pixels.subarray(0, d.labels.length * C.item), 0);
  C.labels.set(d.labels, 0);
  for (let i = 0; i < d.labels.length; i++) { C.keys[i] = i; C.index.set(i, i); }
  C.n = d.labels.length;
  S.allocated = C.n;
  send({ type: "device_data", items: C.n, per_label: d.perLabel });
  log(`training on ${C.n} items of this device (they stay here)`);
  S.state = "joined";
  status();
}

// ---------------------------------------------------------------- compute
const yieldNow = () => new Promise((r) => { const ch = new MessageChannel(); ch.port1.onmessage = () => r(); ch.port2.postMessage(0); });
let order = new Uint32Array(0), pos = 0;

function batch(rows) {
  const keys = new Array(rows.length); // item keys (dataset * 2^32 + id), for the round's proof
  if (S.engine.loss === "seqsoftmax") { // token ids: x the window's first T, y its last T
    const T = C.item - 1;
    const x = new Float32Array(rows.length * T), y = new Int32Array(rows.length * T);
    for (let i = 0; i < rows.length; i++) {
      const ids = C.pixels.subarray(rows[i] * C.item, (rows[i] + 1) * C.item);
      for (let j = 0; j < T; j++) { x[i * T + j] = ids[j]; y[i * T + j] = ids[j + 1]; }
      keys[i] = C.keys[rows[i]];
    }
    return [x, y, keys];
  }
  const x = new Float32Array(rows.length * C.item);
  const y = new Int32Array(rows.length);
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const px = C.pixels.subarray(r * C.item, (r + 1) * C.item);
    for (let j = 0; j < C.item; j++) x[i * C.item + j] = px[j] / 255;
    y[i] = C.labels[r];
    keys[i] = C.keys[r];
  }
  return [x, y, keys];
}

/** The master audits the result of m.iteration: send that round's proof, or say why not. */
function answerAudit(m) {
  // the round that sent the audited result: same vectors and summed loss (an iteration is
  // ordered again when its first order got no result at all)
  const same = (S.proofs.get(m.iteration) || []).filter((r) =>
    (m.vectors === undefined || r.vectors === m.vectors) && (m.loss === undefined || r.loss === m.loss));
  const proof = same.length ? same[same.length - 1].proof : null;
  if (!S.ws || S.ws.readyState !== 1) return;
  if (!proof) {
    send({ type: "proof_missing", iteration: m.iteration, reason: "no record of that round (the model or the inner state started over)" });
    return;
  }
  if (!self.MlitbCodecs) { S.ws.send(proof.encode(S.projectId, m.iteration)); return; } // version 1: everything
  S.committed = { iteration: m.iteration, proof }; // version 2: commit now, reveal what the master names
  S.ws.send(proof.commit(S.projectId, m.iteration));
}

/** After a commit the master names the checkpoints and segments to reveal. */
function answerReveal(m) {
  if (!S.ws || S.ws.readyState !== 1) return;
  const c = S.committed;
  S.committed = null;
  if (!c || c.iteration !== m.iteration) {
    send({ type: "proof_missing", iteration: m.iteration, reason: "no commit of that round to reveal" });
    return;
  }
  try {
    S.ws.send(c.proof.reveal(S.projectId, m.iteration, m));
  } catch (e) {
    send({ type: "proof_missing", iteration: m.iteration, reason: String(e.message || e) });
  }
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

/**
 * A work order: {iteration, work_ms} and, in protocol 2, mode ("gradient" | "local"),
 * inner (local SGD's inner optimizer settings), batch_size, compression ("none" |
 * "float16" | "int8") and vectors (> 0: stop after exactly that many vectors, or
 * new parameters arrive first; work_ms does not limit it).
 */
async function work(m) {
  const it = m.iteration, workMs = m.work_ms;
  if (S.busy) { S.nextWork = m; return; } // the round in progress stops at the next batch: this one follows
  if (S.checking) return; // the backend check runs (a new model): the order is void
  if (!S.engine || !S.params || it !== S.iteration || C.n === 0) return;
  const mode = m.mode || "gradient";
  if (mode !== "gradient" && mode !== "local") { log(`work order of unknown mode '${mode}' ignored`, "warn"); return; }
  if (mode === "local" && !V2) { log("a local work order needs protocol 2 frames (engine/wire.js)", "error"); return; }
  const dtype = DTYPES[m.compression || "none"];
  if (dtype === undefined) { log(`work order with unknown compression '${m.compression}' ignored`, "warn"); return; }
  const target = Number(m.vectors) > 0 ? Math.floor(Number(m.vectors)) : 0;
  S.busy = true;
  S.state = "training";
  const gen = S.gen;
  try {
    if (S.failBackend) { // the diagnostic command fail_backend (tests of the fallback below)
      S.failBackend = false;
      throw new Error("the backend failed (simulated by the page's fail_backend command)");
    }
    const r = mode === "local" ? await localRound(it, workMs, target, m, gen) : await gradientRound(it, workMs, target, m, gen);
    if (gen !== S.gen || r.vectors === 0) return; // void: a welcome, a lost connection or a new model came meanwhile
    // newer parameters arrived meanwhile: protocol 2 sends the (partial) result anyway, the
    // master applies it with a staleness weight if it is at most max_staleness late
    if (it !== S.iteration && !V2) return;
    S.vectorsPerS = r.vectors / (r.ms / 1000);
    S.vectorsProcessed += r.vectors;
    S.results++;
    if (S.ws && S.ws.readyState === 1) {
      S.ws.send(encodeResult(it, r, mode === "local" ? Wire.DELTA : Wire.RESULT, dtype));
      if (!S.proofs.has(it)) S.proofs.set(it, []);
      S.proofs.get(it).push({ vectors: r.vectors, loss: r.loss, proof: r.proof });
      for (const old of [...S.proofs.keys()]) if (old < it - 2) S.proofs.delete(old);
    }
    if (mode === "local" && m.overlap_ms > 0 && !target && r.end) await overlapRound(m.overlap_ms, r.end, gen, it, rateCap(m, m.overlap_ms));
  } catch (e) {
    if (mode === "local") S.inner = null; // start the next round afresh
    log(`training failed: ${e.message || e}`, "error");
    // a GPU backend that fails mid-round (a lost context, a driver reset): this round's work
    // is dropped, and the worker goes on with wasm, saying so
    if (gen === S.gen && S.backend !== "wasm" && S.backend !== "cpu") await fallBack(`${S.backend} failed mid-round: ${e.message || e}`);
  } finally {
    S.busy = false;
    if (!S.stopped) S.state = "waiting"; // a refusal's state stays on the page
    const next = S.nextWork;
    S.nextWork = null;
    if (next && next.iteration === S.iteration) work(next);
  }
}

/** Leave a failed backend for wasm (cpu if wasm does not start): a new engine for the same
 * model, the inner optimizer afresh; the page, the master and the remembered choice follow. */
async function fallBack(reason) {
  const from = S.backend;
  let to = "wasm";
  if (!(await Backends.start(tf, "wasm")).ok) { to = "cpu"; await Backends.start(tf, "cpu"); }
  S.backend = to;
  S.inner = null;
  if (S.engine) S.engine.dispose();
  S.engine = MlitbTfjsEngine(tf, S.spec);
  S.backendCheck = { chosen: to, why: `fell back: ${reason}`, ms: 0, text: `${to} (fell back from ${from}: ${reason})`, results: [] };
  log(`computing with TF.js ${to} from now on: ${reason}`, "warn");
  send({ type: "status", backend: S.backend, ...(threadsInUse() ? { threads: threadsInUse() } : {}) });
  status();
}

// Batches until the next one would overrun workMs, or (target > 0) exactly target vectors.
// At most `most` vectors (rateCap): the master refuses a larger count as implausible.
const batchSize = (B, target, done, most = 0) => Math.min(target ? Math.min(B, target - done) : B, most ? most - done : B);
/** The most vectors a round of workMs may count at the order's max_vectors_per_s (0: no cap). */
const rateCap = (m, workMs) => (Number(m.max_vectors_per_s) > 0 ? Math.max(1, Math.floor((m.max_vectors_per_s * workMs) / 1000)) : 0);
// Fixed work (target > 0) is exactly `target` vectors, whatever the time, as on native workers.
const stop = (it, t0, workMs, lastBatch, target, done, most = 0) => (most > 0 && done >= most) ||
  (target > 0 ? done >= target : performance.now() - t0 + lastBatch > workMs) || it !== S.iteration;
// A round goes on only in the generation it started in, and only with data to train on.
const live = (gen) => gen === S.gen && C.n > 0;

/** A dropout net's next step draws the masks of (the record's seed, the step's index in the
 *  record), as the master's replay does (engine/tfjs_engine.js dropoutMask). */
function masks(proof) {
  if (proof.dropoutSeed !== null) S.engine.setDropout(proof.dropoutSeed, proof.batches.length);
}

/** Mode "gradient": the gradient summed over every vector, at the parameters of `it`. */
async function gradientRound(it, workMs, target, m, gen) {
  const most = rateCap(m, workMs);
  const start = S.params; // never changed in place: a new frame makes a new array
  const total = new Float32Array(S.engine.numParams);
  const proof = new Proof.ProofRecorder("gradient", ["g"], total.length, S.engine.hasDropout);
  proof.checkpoint(0, [total], true);
  const t0 = performance.now();
  let vectors = 0, loss = 0, lastBatch = 0, lastYield = t0;
  const B = S.cfg.batchSize || m.batch_size || 32; // the page's choice first, as in protocol 1
  for (;;) {
    if (!live(gen)) break;
    const tb = performance.now();
    const [x, y, keys] = batch(nextRows(batchSize(B, target, vectors, most)));
    // every batch at the round's parameters: a classify or tracker call between batches
    // may have set others
    S.engine.setParams(start);
    masks(proof);
    const r = await S.engine.gradient(x, y, keys.length, true);
    for (let i = 0; i < total.length; i++) total[i] += r.grad[i];
    vectors += keys.length;
    loss += r.loss;
    proof.step(keys, 0, () => [total]);
    lastBatch = performance.now() - tb;
    if (stop(it, t0, workMs, lastBatch, target, vectors, most)) break;
    if (performance.now() - lastYield > 100) { await yieldNow(); lastYield = performance.now(); }
  }
  proof.checkpoint(0, [total], true);
  return { values: total, vectors, loss, ms: performance.now() - t0, proof };
}

/**
 * Mode "local" (local SGD): inner optimizer steps on cached data from the parameters of
 * `it`, one per batch of inner.batch_size; the result is start - end (float32). The inner
 * optimizer's state carries over to the next order with the same inner settings.
 */
async function localRound(it, workMs, target, m, gen) {
  const most = rateCap(m, workMs);
  const cfg = m.inner || {};
  const n = S.engine.numParams;
  if (!S.inner || S.inner.numParams !== n || !S.inner.sameConfig(cfg)) {
    S.inner = new Inner.InnerOptimizer(cfg, n);
  }
  const opt = S.inner;
  // decay multipliers, and batchnorm's state, which moves by its own rule (inner.js)
  if (!S.decayMul || S.decayMul.l1.length !== n) S.decayMul = Inner.decayMultipliers(S.spec);
  const mul = opt.config.l1_decay || opt.config.l2_decay || S.decayMul.state ? S.decayMul : null;
  const round = new Inner.LocalRound(S.engine, opt, S.params, mul); // S.params is never changed in place
  const carry = S.carry;
  S.carry = null;
  // the overlap's steps continue the round of the iteration before: a carry from an older
  // one (this tab had no order meanwhile: a slow device) started from parameters the
  // master no longer holds against it (its audit would fail); it is dropped
  // (and only into an order with overlap: the master allows a carry's vectors only then)
  const carried = carry && carry.opt === opt && carry.delta.length === n && !target && carry.after === it - 1 &&
    m.overlap_ms > 0;
  // the overlap's steps, moved onto the new parameters: start - (sent - now)
  if (carried) for (let i = 0; i < n; i++) round.params[i] = round.start[i] - carry.delta[i];
  // the round's record: the overlap's steps, the shift, then this round's steps
  const proof = carried ? carry.proof : new Proof.ProofRecorder("local", Proof.localArrays(opt), n, S.engine.hasDropout);
  if (carried) proof.shift();
  const state = () => Proof.localState(round.params, opt);
  proof.checkpoint(opt.t, state(), true);
  const t0 = performance.now();
  let lastBatch = 0, lastYield = t0;
  const B = opt.batchSize || m.batch_size || S.cfg.batchSize || 32; // inner steps: the algorithm's batch size
  for (;;) {
    if (!live(gen)) break;
    const tb = performance.now();
    const [x, y, keys] = batch(nextRows(batchSize(B, target, round.vectors, most)));
    masks(proof);
    await round.batch(x, y, keys.length, true); // setParams(p), gradient, inner step
    proof.step(keys, opt.t, state);
    lastBatch = performance.now() - tb;
    if (stop(it, t0, workMs, lastBatch, target, round.vectors, most)) break;
    if (performance.now() - lastYield > 100) { await yieldNow(); lastYield = performance.now(); }
  }
  proof.checkpoint(opt.t, state(), true);
  const ms = performance.now() - t0;
  if (!carried) return { values: round.delta(), vectors: round.vectors, loss: round.loss, ms, end: round.params, proof };
  return { values: round.delta(), vectors: round.vectors + carry.vectors, loss: round.loss + carry.loss,
    ms: ms + carry.ms, end: round.params, proof };
}

/**
 * Overlap (local SGD): after a result went out, keep stepping from where the round ended
 * (`end`) until the next work order or new parameters arrive, at most mostMs; the change
 * is kept in S.carry for the local round of iteration `after` + 1, which moves it onto the
 * new parameters (a later round drops it: the master checks the overlap's start against
 * the parameters of the iteration before the audited one).
 */
async function overlapRound(mostMs, end, gen, after, most = 0) {
  const opt = S.inner;
  if (!opt || S.nextWork || !live(gen)) return;
  const it = S.iteration;
  const mul = opt.config.l1_decay || opt.config.l2_decay || (S.decayMul && S.decayMul.state) ? S.decayMul : null;
  const round = new Inner.LocalRound(S.engine, opt, end, mul);
  const proof = new Proof.ProofRecorder("local", Proof.localArrays(opt), opt.numParams, S.engine.hasDropout);
  const state = () => Proof.localState(round.params, opt);
  proof.checkpoint(opt.t, state(), true);
  const t0 = performance.now();
  let lastBatch = 0, lastYield = t0;
  const B = opt.batchSize || S.cfg.batchSize || 32;
  while (!S.nextWork && it === S.iteration && live(gen) && performance.now() - t0 + lastBatch <= mostMs &&
    !(most > 0 && round.vectors >= most)) {
    const tb = performance.now();
    const [x, y, keys] = batch(nextRows(batchSize(B, 0, round.vectors, most)));
    masks(proof);
    await round.batch(x, y, keys.length, true);
    proof.step(keys, opt.t, state);
    lastBatch = performance.now() - tb;
    if (performance.now() - lastYield > 100) { await yieldNow(); lastYield = performance.now(); }
  }
  if (round.vectors > 0 && S.inner === opt && gen === S.gen) {
    proof.checkpoint(opt.t, state(), true);
    S.carry = { delta: round.delta(), vectors: round.vectors, loss: round.loss, ms: performance.now() - t0, opt, proof,
      after };
  }
}

/** The result frame: protocol 1 as before; protocol 2 with its kind and, if asked, compressed. */
function encodeResult(it, r, kind, dtype) {
  if (!V2) return Wire.encodeResult(S.projectId, it, r.values, r.vectors, r.loss, S.vectorsPerS, r.ms);
  let payload = r.values, dt = 1;
  if (dtype === 1) { S.feedback.clear(); S.feedbackKey = ""; } // uncompressed: no residual to carry on
  if (dtype !== 1) {
    const fb = feedback(kind, dtype, r.values.length);
    if (fb) { payload = fb.encode(r.values); dt = dtype; }
  }
  return Wire.encodeResult(S.projectId, it, payload, r.vectors, r.loss, S.vectorsPerS, r.ms,
    { kind, dtype: dt, protocol: 2, count: r.values.length });
}

/** The error-feedback encoder for (frame kind, dtype), kept across work orders; null without codecs.js. */
let warnedNoCodecs = false;
function feedback(kind, dtype, n) {
  const codecs = self.MlitbCodecs;
  if (!codecs || !codecs.ErrorFeedback) {
    if (!warnedNoCodecs) log("engine/codecs.js is missing: results go uncompressed", "warn");
    warnedNoCodecs = true;
    return null;
  }
  const key = `${kind}:${dtype}`;
  if (S.feedbackKey !== key) S.feedback.clear(); // a residual belongs to one kind and dtype in a row
  S.feedbackKey = key;
  let e = S.feedback.get(key);
  if (!e || e.n !== n) {
    const F = codecs.ErrorFeedback; // a class or a factory
    e = { n, fb: F.prototype ? new F(n, dtype) : F(n, dtype) };
    S.feedback.set(key, e);
  }
  return e.fb;
}

/** The welcome's tracker schedule: {period_ms, sample}, or none (evaluate every parameters frame). */
function setTracker(t) {
  if (S.evalTimer) clearTimeout(S.evalTimer);
  S.evalTimer = null;
  S.tracker = t && typeof t === "object"
    ? { periodMs: Math.max(0, Number(t.period_ms) || 0), sample: Math.max(0, Math.floor(Number(t.sample) || 0)) }
    : null;
  S.lastEvalEnd = -Infinity;
  S.lastEvalMs = 0;
  S.sample = null;
}

/**
 * With a tracker schedule: evaluate the newest parameters at most once per period_ms
 * after the end of the last evaluation, and no sooner than 19x its duration (so
 * evaluating takes <= 5 % of the time). One timer at most; it evaluates whatever
 * parameters are newest when it fires.
 */
function scheduleEvaluation() {
  if (!S.tracker || S.evalTimer || S.busy) return; // busy: evaluate() reschedules when done
  const wait = S.lastEvalEnd + Math.max(S.tracker.periodMs, 19 * S.lastEvalMs) - performance.now();
  if (wait <= 0) { evaluate(); return; }
  S.evalTimer = setTimeout(() => { S.evalTimer = null; evaluate(); }, wait);
}

/** The rows to evaluate: all (null), or a fixed random sample, redrawn only when the cache changes size. */
function testRows() {
  const k = S.tracker && S.tracker.sample > 0 ? Math.min(S.tracker.sample, C.n) : C.n;
  if (k >= C.n) { S.sample = null; return null; }
  if (!S.sample || S.sample.n !== C.n || S.sample.rows.length !== k) {
    const idx = new Uint32Array(C.n).map((_, i) => i);
    for (let i = 0; i < k; i++) { // partial Fisher-Yates: the first k are a uniform sample
      const j = i + Math.floor(Math.random() * (C.n - i));
      const t = idx[i]; idx[i] = idx[j]; idx[j] = t;
    }
    S.sample = { n: C.n, rows: idx.slice(0, k).sort() };
  }
  return S.sample.rows;
}

async function evaluate() {
  if (!S.engine || !S.params || C.n === 0 || S.busy) return;
  if (S.checking) { // again after the backend check
    if (!S.evalTimer) S.evalTimer = setTimeout(() => { S.evalTimer = null; evaluate(); }, 500);
    return;
  }
  S.busy = true;
  const it = S.iteration, t0 = performance.now();
  // this evaluation's engine and parameters: a classify between batches may set others,
  // a new model replaces the engine (the evaluation is then dropped)
  const engine = S.engine, params = S.params, gen = S.gen;
  try {
    let wrong = 0, lossSum = 0;
    const K = engine.numOutputs;
    // a classifier's confusion: counts[true * K + predicted] (not kept for a language model)
    const confusion = engine.loss === "softmax" || engine.loss === "svm" ? new Array(K * K).fill(0) : null;
    const sample = testRows();
    const count = sample ? sample.length : C.n;
    for (let s = 0; s < count; s += 256) {
      if (gen !== S.gen) return;
      const rows = sample ? sample.subarray(s, s + 256) : new Uint32Array(Math.min(256, C.n - s)).map((_, i) => s + i);
      const [x, y] = batch(rows);
      engine.setParams(params);
      const p = await engine.predict(x, rows.length);
      const per = y.length / rows.length; // targets per item: 1, or a window's T (mlitb.model.inputs.score)
      for (let i = 0; i < y.length; i++) {
        let best = 0;
        for (let k = 1; k < K; k++) if (p[i * K + k] > p[i * K + best]) best = k;
        if (best !== y[i]) wrong += 1 / per;
        if (confusion) confusion[y[i] * K + best] += 1;
        if (engine.loss === "softmax" || engine.loss === "seqsoftmax") {
          lossSum -= Math.log(Math.max(p[i * K + y[i]], 1e-12)) / per;
        }
      }
      await yieldNow();
    }
    if (gen !== S.gen) return;
    S.testError = wrong / count;
    send({ type: "test_result", iteration: it, error: S.testError, loss: lossSum / count, count });
    post({ type: "test", iteration: it, error: S.testError, confusion, labels: S.labels });
    S.state = "tracking";
  } finally {
    S.busy = false;
    S.lastEvalEnd = performance.now();
    S.lastEvalMs = S.lastEvalEnd - t0;
    if (S.tracker && S.iteration !== it) scheduleEvaluation(); // newer parameters came meanwhile
  }
}

async function classify(m) {
  if (!S.engine || !S.params || S.checking) {
    post({ type: "prediction", id: m.id, error: S.checking ? "checking this device's backends: try again in a moment" : "no model yet" });
    return;
  }
  S.engine.setParams(S.params);
  const x = new Float32Array(m.pixels.length);
  for (let i = 0; i < x.length; i++) x[i] = m.pixels[i] / 255;
  const p = await S.engine.predict(x, 1);
  post({ type: "prediction", id: m.id, probs: Array.from(p), labels: S.labels });
}

/** A language model writes on from `m.prompt`: `m.length` characters, each drawn from the
 * model's next-token probabilities (at `m.temperature`; 0: the likeliest) at the last
 * position of the window (the prompt's last T characters; a causal model's later positions
 * do not change earlier ones, so a short window is padded on the right). Characters the
 * vocabulary lacks are left out of the prompt, and said. */
async function generate(m) {
  if (!S.engine || !S.params || S.checking || S.engine.loss !== "seqsoftmax") {
    post({ type: "prediction", id: m.id, error: S.engine && S.engine.loss !== "seqsoftmax" ? "not a language model" : "no model yet" });
    return;
  }
  const vocab = S.labels, index = new Map(vocab.map((c, i) => [c, i]));
  const chars = Array.from(String(m.prompt || ""));
  const unknown = [...new Set(chars.filter((c) => !index.has(c)))];
  const ids = chars.filter((c) => index.has(c)).map((c) => index.get(c));
  if (!ids.length) ids.push(index.has("\n") ? index.get("\n") : 0);
  const T = S.engine.inShape[1], K = S.engine.numOutputs;
  const temperature = Math.max(0, Number(m.temperature ?? 0.8));
  S.engine.setParams(S.params);
  let out = "";
  for (let step = 0; step < Math.min(Number(m.length) || 200, 2000); step++) {
    const window = ids.slice(-T), x = new Float32Array(T);
    window.forEach((t, i) => { x[i] = t; });
    const p = await S.engine.predict(x, 1); // [T, K] probabilities
    const at = (window.length - 1) * K;
    let next = 0;
    if (temperature === 0) {
      for (let k = 1; k < K; k++) if (p[at + k] > p[at + next]) next = k;
    } else { // p^(1/t), renormalised
      const w = Array.from({ length: K }, (_, k) => Math.pow(p[at + k], 1 / temperature));
      let r = Math.random() * w.reduce((a, b) => a + b, 0);
      while (next < K - 1 && (r -= w[next]) > 0) next++;
    }
    ids.push(next);
    out += vocab[next];
  }
  post({ type: "prediction", id: m.id, text: out, unknown });
}

self.onmessage = (e) => {
  const m = e.data;
  if (m.cmd === "start") start(m);
  else if (m.cmd === "classify") classify(m);
  else if (m.cmd === "generate") generate(m);
  else if (m.cmd === "device_data") { S.device = m.data; useDeviceData(); }
  else if (m.cmd === "fail_backend") S.failBackend = true; // diagnostics: the next round fails
  else if (m.cmd === "stop") {
    S.stopped = true;
    if (S.ws) { try { S.ws.send(JSON.stringify({ type: "leave", reason: "stopped in the page" })); } catch (e) {} S.ws.close(1000); }
    post({ type: "stopped" });
  }
};
