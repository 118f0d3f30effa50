// mlitb's own wasm kernels (engine/wasm_kernels.js) through TF.js's own gradients, in node:
// tests/test_wasm_kernels.py holds them to PyTorch.
// stdin: {"pool": threads the kernels are told TF.js's pool has (default 1), "cases": [{"op": "conv", "x", "xShape", "w", "wShape", "r", "stride", "pad"} |
//                   {"op": "pool", "x", "xShape", "r", "size", "stride"} |
//                   {"op": "matmul", "x", "xShape", "w", "wShape", "ta", "tb", "r", "grad" (false: y only)} |
//                   {"op": "gelu", "x", "xShape", "r"} (y, and dx for dy = r) |
//                   {"op": "slice", "x", "xShape", "dtype", "begin", "size"} |
//                   {"op": "split", "x", "xShape", "dtype", "sizes", "axis"}]}   (arrays: b64 f32)
//   loss = sum(op(x) * r); r is cut to op(x)'s size
// stdout: {"results": [{"dx", "dw" (conv, matmul), "y" (matmul), "shape" (op(x)'s), "parts"
//          (slice, split: b64 of each part as float32)}], "tensors": left over}
const tf = require("@tensorflow/tfjs");
require("@tensorflow/tfjs-backend-wasm");
require("../../mlitb/web/static/engine/wasm_kernels.js")(tf);
const f32 = (b64) => {
  const buf = Buffer.from(b64, "base64");
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
};
const b64 = (arr) => Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64");
(async () => {
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const { cases, pool = 1 } = JSON.parse(input);
  if (pool > 1) tf.wasm = { ...(tf.wasm || {}), getThreadsCount: () => pool }; // node runs one thread
  if (!(await tf.setBackend("wasm"))) throw new Error("no wasm backend");
  const results = cases.map((c) => tf.tidy(() => {
    const x = tf.tensor(f32(c.x), c.xShape), r = f32(c.r);
    const dot = (y) => tf.sum(tf.mul(y, tf.tensor(r.subarray(0, y.size), y.shape)));
    if (c.op === "pool") {
      const y = tf.maxPool(x, c.size, c.stride, "valid");
      return { dx: b64(tf.grad((x) => dot(tf.maxPool(x, c.size, c.stride, "valid")))(x).dataSync()), shape: y.shape };
    }
    if (c.op === "gelu") { // mlitb's kernels (engine/tfjs_engine.js uses them on wasm)
      const y = tf.engine().runKernel("MlitbGelu", { x });
      const dx = tf.engine().runKernel("MlitbGeluGrad", { x, dy: tf.tensor(r.subarray(0, x.size), x.shape) });
      return { y: b64(y.dataSync()), dx: b64(dx.dataSync()), shape: y.shape };
    }
    if (c.op === "slice" || c.op === "split") {
      // (TF.js wasm's Cast of float32 to bool keeps the value's low byte: notEqual is 0 / 1)
      const xt = c.dtype === "bool" ? tf.notEqual(x, 0) : c.dtype === "float32" ? x : tf.cast(x, c.dtype);
      const parts = c.op === "slice" ? [tf.slice(xt, c.begin, c.size)] : tf.split(xt, c.sizes, c.axis);
      return { parts: parts.map((p) => b64(tf.cast(p, "float32").dataSync())), shapes: parts.map((p) => p.shape),
        dtypes: parts.map((p) => p.dtype) };
    }
    const w = tf.tensor(f32(c.w), c.wShape);
    if (c.op === "matmul") {
      const mm = (a, b) => tf.matMul(a, b, c.ta, c.tb);
      const y = mm(x, w);
      if (c.grad === false) return { y: b64(y.dataSync()), shape: y.shape }; // (TF.js: no broadcast gradient)
      const [dx, dw] = tf.grads((a, b) => dot(mm(a, b)))([x, w]);
      return { y: b64(y.dataSync()), dx: b64(dx.dataSync()), dw: b64(dw.dataSync()), shape: y.shape };
    }
    const conv = (x, w) => tf.conv2d(x, w, c.stride, c.pad);
    const [dx, dw] = tf.grads((x, w) => dot(conv(x, w)))([x, w]);
    return { dx: b64(dx.dataSync()), dw: b64(dw.dataSync()), shape: conv(x, w).shape };
  }));
  process.stdout.write(JSON.stringify({ results, tensors: tf.memory().numTensors }));
})();
