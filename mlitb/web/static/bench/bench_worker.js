// Browser compute benchmark (benchmarks/browser_bench.py drives it): forward+backward
// vectors/s of one net, same batch, per TF.js backend and for ConvNetJS, in a Web Worker;
// mode "wasm-threads": wasm with a given pool size; mode "pick": the backend a volunteer's
// tab would pick. Backends start as the volunteer's worker starts them (engine/backends.js).
"use strict";
self.window = self; // convnet-min.js publishes itself as window.convnetjs
importScripts("../vendor/tf.min.js", "../vendor/tf-backend-wasm.min.js", "../engine/layout.js", "../engine/tfjs_engine.js",
  "../engine/wasm_kernels_bin.js", "../engine/wasm_kernels.js", "../engine/backends.js", "../vendor/convnet-min.js");

async function timeLoop(fn, seconds) {
  await fn(); await fn(); // warm-up: shader compilation, wasm start-up
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) { await fn(); n++; }
  return { calls: n, seconds: (performance.now() - t0) / 1000 };
}

async function tfjs(backend, layers, batch, seconds) {
  try {
    const s = await MlitbBackends.start(tf, backend);
    if (!s.ok) return { error: s.reason };
    const engine = MlitbTfjsEngine(tf, layers);
    engine.setParams(new Float32Array(engine.numParams).map(() => (Math.random() - 0.5) * 0.1));
    // token ids and a target per position for a language model, pixels and a label otherwise
    const V = engine.vocab;
    const x = new Float32Array(batch * engine.inShape.reduce((a, b) => a * b)).map(() => (V ? Math.floor(Math.random() * V) : Math.random()));
    const y = new Int32Array(batch * engine.positions).map(() => Math.floor(Math.random() * engine.numOutputs));
    const r = await timeLoop(() => engine.gradient(x, y, batch, true), seconds);
    engine.dispose();
    return { vectors_per_s: (r.calls * batch) / r.seconds, calls: r.calls, device: s.device || "" };
  } catch (e) {
    return { error: String(e.message || e) };
  }
}

function convnetjsRun(defs, batch, seconds) {
  const net = new convnetjs.Net();
  net.makeLayers(defs);
  const trainer = new convnetjs.Trainer(net, { method: "sgd", learning_rate: 0.01, batch_size: batch, momentum: 0 });
  const inp = defs[0];
  const vols = Array.from({ length: batch }, () => {
    const v = new convnetjs.Vol(inp.out_sx, inp.out_sy, inp.out_depth, 0);
    for (let i = 0; i < v.w.length; i++) v.w[i] = Math.random();
    return v;
  });
  const labels = vols.map(() => Math.floor(Math.random() * 10));
  for (let i = 0; i < batch; i++) trainer.train(vols[i], labels[i]); // warm-up
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < seconds * 1000) { for (let i = 0; i < batch; i++) trainer.train(vols[i], labels[i]); n++; }
  return { vectors_per_s: (n * batch) / ((performance.now() - t0) / 1000), calls: n };
}

/** wasm alone with `threads` in its pool (a fresh worker: the pool is fixed at start).
 * `cores`: the logical cores this worker reports (navigator.hardwareConcurrency), set
 * before wasm starts: TF.js 4.22's pool takes at most half of them, so a 2-core machine
 * must report 4 for a 2-thread measurement (the benchmark says so when it does). */
async function wasmThreads(layers, batch, seconds, threads, cores) {
  if (cores) Object.defineProperty(self.navigator, "hardwareConcurrency", { value: cores, configurable: true });
  tf.wasm.setThreadsCount(threads);
  const r = await tfjs("wasm", layers, batch, seconds);
  if (!r.error) r.threads = tf.wasm.getThreadsCount();
  return r;
}

/** What a volunteer's tab picks: the worker's own check (worker/worker.js), defaults. */
async function pick(layers, batch) {
  const c = await MlitbBackends.check(tf, MlitbTfjsEngine, layers, { batchSize: batch });
  return { chosen: c.chosen, why: c.why, ms: c.ms, text: MlitbBackends.describe(c) };
}

self.onmessage = async (e) => {
  const { layers, defs, batch, seconds, backends, mode } = e.data;
  if (mode === "wasm-threads") {
    const r = await wasmThreads(layers, batch, seconds, e.data.threads, e.data.cores);
    self.postMessage({ done: { [`tfjs-wasm-${e.data.threads}t`]: r } });
    return;
  }
  if (mode === "pick") {
    try {
      self.postMessage({ done: { pick: await pick(layers, batch) } });
    } catch (err) {
      self.postMessage({ done: { pick: { error: String(err.message || err) } } });
    }
    return;
  }
  const out = {};
  for (const b of backends) {
    out[`tfjs-${b}`] = await tfjs(b, layers, batch, seconds);
    self.postMessage({ progress: b, result: out[`tfjs-${b}`] });
  }
  if (defs) out.convnetjs = convnetjsRun(defs, batch, seconds); // ConvNetJS only has ConvNetJS's layers
  self.postMessage({ done: out });
};
