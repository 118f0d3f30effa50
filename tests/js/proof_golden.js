// A local round (and a gradient round) in node with the browser's own engine, inner
// optimizer and proof recorder (mlitb/web/static/engine/{tfjs_engine,inner,proof}.js, TF.js
// cpu, or wasm with mlitb's own kernels), so that tests/test_verification.py can check the JS proof frame with the master's
// PyTorch replay.
// stdin: {"backend": "cpu" (default) | "wasm", "tasks": [{"mode": "local" | "gradient", "layers", "inner", "params" (b64 f32),
//                    "batches": [{"x" (b64 f32), "y", "keys"}], "max_spaced" (optional)}]}
// stdout: {"results": [{"proof" (b64 frame), "values" (b64 f32: the result), "vectors",
//                       "commit" (b64: the version-2 commit), "reveal" (b64: the reveal of
//                       every segment and every checkpoint), "sha256" (hex digests of `hash`)}]}
//         `hash` (optional, stdin): [b64 byte strings] to hash with the JS SHA-256
const tf = require("@tensorflow/tfjs");
const Engine = require("../../mlitb/web/static/engine/tfjs_engine.js");
const Inner = require("../../mlitb/web/static/engine/inner.js");
const Proof = require("../../mlitb/web/static/engine/proof.js");

const f32 = (b64) => {
  const buf = Buffer.from(b64, "base64");
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
};
const b64 = (arr) => Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64");

async function run(t) {
  const engine = Engine(tf, t.layers);
  const start = f32(t.params);
  let values, vectors = 0, proof;
  if (t.mode === "local") {
    const opt = new Inner.InnerOptimizer(t.inner, engine.numParams);
    const r = new Inner.LocalRound(engine, opt, start, Inner.decayMultipliers(t.layers));
    proof = new Proof.ProofRecorder("local", Proof.localArrays(opt), engine.numParams);
    if (t.max_spaced) proof.maxSpaced = t.max_spaced; // fewer, longer segments
    const state = () => Proof.localState(r.params, opt);
    proof.checkpoint(opt.t, state(), true);
    for (const b of t.batches) {
      await r.batch(f32(b.x), new Int32Array(b.y), b.y.length, true);
      proof.step(b.keys, opt.t, state);
    }
    proof.checkpoint(opt.t, state(), true);
    values = r.delta();
    vectors = r.vectors;
  } else {
    engine.setParams(start);
    const total = new Float32Array(engine.numParams);
    proof = new Proof.ProofRecorder("gradient", ["g"], engine.numParams);
    proof.checkpoint(0, [total], true);
    for (const b of t.batches) {
      const g = await engine.gradient(f32(b.x), new Int32Array(b.y), b.y.length, true);
      for (let i = 0; i < total.length; i++) total[i] += g.grad[i];
      vectors += b.y.length;
      proof.step(b.keys, 0, () => [total]);
    }
    proof.checkpoint(0, [total], true);
    values = total;
  }
  engine.dispose();
  const all = proof.points.size;
  const everything = { segments: [...Array(all - 1).keys()], checkpoints: [...Array(all).keys()], firsts: [] };
  const bytes = (buffer) => Buffer.from(buffer).toString("base64");
  return { proof: bytes(proof.encode(1, 5)), values: b64(values), vectors, commit: bytes(proof.commit(1, 5)),
           reveal: bytes(proof.reveal(1, 5, everything)),
           sha256: (t.hash || []).map((h) => Proof.sha256(Buffer.from(h, "base64"))) };
}

(async () => {
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const { tasks, backend = "cpu" } = JSON.parse(input);
  if (backend === "wasm") {
    require("@tensorflow/tfjs-backend-wasm");
    require("../../mlitb/web/static/engine/wasm_kernels.js")(tf);
  }
  if (!(await tf.setBackend(backend)) || tf.getBackend() !== backend) throw new Error(`no ${backend} backend`);
  const results = [];
  for (const t of tasks) {
    try {
      results.push(await run(t));
    } catch (e) {
      results.push({ error: String(e && e.stack ? e.stack : e) });
    }
  }
  process.stdout.write(JSON.stringify({ results }));
})();
