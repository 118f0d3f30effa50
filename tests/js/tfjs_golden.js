// Runs the browser engine (mlitb/web/static/engine/tfjs_engine.js) in node with
// TensorFlow.js' cpu backend on golden cases from the PyTorch executor.
// stdin: {"backend": "cpu" | "wasm", "cases": [{"layers", "params" (b64 f32), "x" (b64 f32), "y", "n", "train"}]}
// stdout: {"results": [{"loss", "grad" (b64 f32), "predict" (b64 f32)} | {"error"}]}
const tf = require("@tensorflow/tfjs");
const Engine = require("../../mlitb/web/static/engine/tfjs_engine.js");

const f32 = (b64) => {
  const buf = Buffer.from(b64, "base64");
  return new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
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
  const results = cases.map((c) => {
    try {
      const engine = Engine(tf, c.layers);
      engine.setParams(f32(c.params));
      const x = f32(c.x);
      const y = engine.loss === "regression" ? new Float32Array(c.y) : new Int32Array(c.y);
      const g = engine.gradient(x, y, c.n, c.train);
      const p = engine.predict(x, c.n);
      engine.dispose();
      return { loss: g.loss, grad: b64(g.grad), predict: b64(p), tensors: tf.memory().numTensors };
    } catch (e) {
      return { error: String(e && e.message ? e.message : e) };
    }
  });
  process.stdout.write(JSON.stringify({ results }));
})();
