// Runs the browser engine (mlitb/web/static/engine/tfjs_engine.js) on golden cases from
// the PyTorch executor: in node with TF.js' cpu or wasm backend (this file as a script),
// or in Chromium on any backend (tests/test_backend_golden.py loads runCases into a Web
// Worker: the same code, so both executors are held to the same cases).
// stdin: {"backend": "cpu" | "wasm", "cases": [{"layers", "params" (b64 f32), "x" (b64 f32), "y", "n", "train",
//         "dropout" ([seed, step], optional)}]}
// stdout: {"results": [{"loss", "grad" (b64 f32), "predict" (b64 f32), "tensors"} | {"error"}]}
// In a browser the arrays travel as plain arrays of numbers instead of base64.
async function runCases(tf, Engine, cases, f32, enc) {
  const results = [];
  for (const c of cases) {
    try {
      const engine = Engine(tf, c.layers);
      engine.setParams(f32(c.params));
      if (c.dropout) engine.setDropout(c.dropout[0], c.dropout[1]); // the seeded masks of (seed, step)
      const x = f32(c.x);
      const y = engine.loss === "regression" ? new Float32Array(c.y) : new Int32Array(c.y);
      const g = await engine.gradient(x, y, c.n, c.train);
      const p = await engine.predict(x, c.n);
      engine.dispose();
      results.push({ loss: g.loss, grad: enc(g.grad), predict: enc(p), tensors: tf.memory().numTensors });
    } catch (e) {
      results.push({ error: String(e && e.message ? e.message : e) });
    }
  }
  return results;
}

if (typeof module === "object" && require.main === module) {
  const tf = require("@tensorflow/tfjs");
  const Engine = require("../../mlitb/web/static/engine/tfjs_engine.js");
  const f32 = (b64) => {
    const buf = Buffer.from(b64, "base64");
    return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  };
  const b64 = (arr) => Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64");
  (async () => {
    let input = "";
    for await (const chunk of process.stdin) input += chunk;
    const { cases, backend = "cpu" } = JSON.parse(input);
    if (backend === "wasm") {
      require("@tensorflow/tfjs-backend-wasm");
      require("../../mlitb/web/static/engine/wasm_kernels.js")(tf);
    }
    if (!(await tf.setBackend(backend)) || tf.getBackend() !== backend) throw new Error(`no ${backend} backend`);
    process.stdout.write(JSON.stringify({ results: await runCases(tf, Engine, cases, f32, b64) }));
  })();
}
