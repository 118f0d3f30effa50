// Starting browser workers (trainer or tracker) from a page: each is a Web Worker
// running worker/worker.js; this module only relays commands and status (and keeps the
// device's fastest backend per model, app/volunteer.js).
import { rememberBackend, rememberedBackends } from "./volunteer.js";

export function wsUrl(path = "/ws") {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}

let counter = 0;

// tfjsflags: TF.js's own debugging flags ("NAME:value,..."), read by TF.js from the
// worker script's query string (e.g. WEBGL_FORCE_F16_TEXTURES:true to see a phone's
// float16-only WebGL on a desktop).
export function startWorker({ project, role = "trainer", backend = "auto", capacity = undefined, name = "", joinKey = "", volunteer = "", threads = 0,
  batchSize = undefined, tfjsflags = "", onStatus = () => {}, onLog = () => {}, onTest = () => {}, onNeedData = () => {} }) {
  const worker = new Worker(`/static/worker/worker.js${tfjsflags ? `?tfjsflags=${encodeURIComponent(tfjsflags)}` : ""}`);
  const id = ++counter;
  const pending = new Map();
  const handle = { id, role, worker, status: { state: "starting", role } };
  worker.onmessage = (e) => {
    const m = e.data;
    if (m.type === "status") { handle.status = m; rememberBackend(m); onStatus(m, handle); }
    else if (m.type === "log") onLog(m, handle);
    else if (m.type === "test") onTest(m, handle);
    else if (m.type === "need_data") onNeedData(m, handle);
    else if (m.type === "prediction" && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
  };
  worker.onerror = (e) => onLog({ level: "error", text: `worker failed: ${e.message}` }, handle);
  worker.postMessage({ cmd: "start", wsUrl: wsUrl(), httpBase: location.origin + "/", project, role, backend,
    capacity, name, joinKey, batchSize, volunteer, threads, remembered: rememberedBackends() });
  handle.stop = () => { worker.postMessage({ cmd: "stop" }); setTimeout(() => worker.terminate(), 500); };
  // a device project's items (app/device_data.js): to the worker only, never to a server
  handle.deviceData = (data) => worker.postMessage({ cmd: "device_data", data });
  // diagnostics: the worker's next round fails as a lost GPU would (it falls back to wasm)
  handle.failBackend = () => worker.postMessage({ cmd: "fail_backend" });
  handle.classify = (pixels, shape) => new Promise((resolve) => {
    const rid = Math.random();
    pending.set(rid, resolve);
    worker.postMessage({ cmd: "classify", id: rid, pixels, shape });
  });
  handle.generate = (prompt, length = 200, temperature = 0.8) => new Promise((resolve) => {
    const rid = Math.random();
    pending.set(rid, resolve);
    worker.postMessage({ cmd: "generate", id: rid, prompt, length, temperature });
  });
  return handle;
}
