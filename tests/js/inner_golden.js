// Runs the browser's inner optimizers (mlitb/web/static/engine/inner.js) in node on golden
// cases from mlitb.optim / mlitb.model.decay, and a whole local round with the TF.js
// engine (cpu backend) for comparison with the PyTorch executor.
// stdin: {"tasks": [task, ...]}, each task one of
//   {"kind": "steps", "layers", "inner", "params" (b64 f32), "steps": [{"grad" (b64 f32), "n"}]}
//       -> {"params": [b64 f32 after each step], "mul_l1", "mul_l2" (b64 f32), "t"}
//   {"kind": "round", "layers", "inner", "params", "batches": [{"x" (b64 f32), "y", "n"}], "dropout" (seed, optional)}
//       -> {"delta" (b64 f32), "loss", "vectors", "steps", "tensors"}
//   {"kind": "same", "inner", "others": [inner, ...]} -> {"same": [bool, ...]}
//   {"kind": "refuse", "inner", "params", "grad", "n"} -> {"error", "unchanged", "t"}
// stdout: {"results": [result | {"error"}]}
// The tasks are built by innerGolden(env) from its environment {tf, Engine, Inner, f32,
// b64}: node's here, a Web Worker's in tests/test_backend_golden.py (any TF.js backend).
function innerGolden({ tf, Engine, Inner, f32, b64 }) {
  function steps(t) {
    const mul = Inner.decayMultipliers(t.layers);
    const p = f32(t.params);
    const opt = new Inner.InnerOptimizer(t.inner, p.length);
    const out = [];
    for (const s of t.steps) {
      opt.step(p, f32(s.grad), s.n, mul);
      out.push(b64(p));
    }
    return { params: out, mul_l1: b64(mul.l1), mul_l2: b64(mul.l2), t: opt.t };
  }

  async function round(t) {
    const engine = Engine(tf, t.layers);
    const start = f32(t.params);
    const opt = Inner.InnerOptimizer(t.inner, engine.numParams); // without `new`, as a factory
    const r = new Inner.LocalRound(engine, opt, start, Inner.decayMultipliers(t.layers));
    for (const [s, b] of t.batches.entries()) {
      const y = engine.loss === "regression" ? new Float32Array(b.y) : new Int32Array(b.y);
      if (t.dropout !== undefined) engine.setDropout(t.dropout, s); // step s's masks, as a trainer's record
      await r.batch(f32(b.x), y, b.n, true);
    }
    const delta = r.delta();
    const unchanged = b64(r.start) === t.params;
    engine.dispose();
    return { delta: b64(delta), loss: r.loss, vectors: r.vectors, steps: r.steps, unchanged,
      tensors: tf.memory().numTensors };
  }

  function same(t) {
    const opt = new Inner.InnerOptimizer(t.inner, 3);
    return { same: t.others.map((o) => opt.sameConfig(o)) };
  }

  function refuse(t) {
    const p = f32(t.params);
    const before = b64(p);
    const opt = new Inner.InnerOptimizer(t.inner, p.length);
    try {
      opt.step(p, f32(t.grad), t.n, null);
      return { error: null };
    } catch (e) {
      return { error: String(e.message), unchanged: b64(p) === before, t: opt.t };
    }
  }

  return { steps, round, same, refuse };
}

if (typeof module === "object" && require.main === module) {
  const tf = require("@tensorflow/tfjs");
  const Engine = require("../../mlitb/web/static/engine/tfjs_engine.js");
  const Inner = require("../../mlitb/web/static/engine/inner.js");
  const f32 = (text) => {
    const buf = Buffer.from(text, "base64");
    return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  };
  const b64 = (arr) => Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64");
  const kinds = innerGolden({ tf, Engine, Inner, f32, b64 });
  (async () => {
    let input = "";
    for await (const chunk of process.stdin) input += chunk;
    const { tasks } = JSON.parse(input);
    if (!(await tf.setBackend("cpu")) || tf.getBackend() !== "cpu") throw new Error("no cpu backend");
    const results = [];
    for (const t of tasks) {
      try {
        results.push(await kinds[t.kind](t));
      } catch (e) {
        results.push({ error: String(e && e.message ? e.message : e) });
      }
    }
    process.stdout.write(JSON.stringify({ results }));
  })();
}
