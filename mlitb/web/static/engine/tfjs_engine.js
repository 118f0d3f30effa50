/*
 * The browser executor: runs an mlitb model spec (expanded ConvNetJS layers) with
 * TensorFlow.js from the flat float32 parameter vector (docs/model.md, "Layout").
 *
 * The whole vector is ONE tensor P; every layer's weights are slices of it, reshaped
 * to the flat layout's own order ([F, sy, sx, C] conv filters, [N, in] fc weights)
 * and transposed inside the graph. So the gradient with respect to P is already the
 * flat gradient: one download per batch, no re-packing. Semantics follow
 * mlitb/model/torch_executor.py exactly (golden vectors check it).
 *
 * Interface (small on purpose, so another engine - e.g. a WebGPU one - can replace it):
 *   const engine = MlitbTfjsEngine(tf, layers)       // expanded spec
 *   engine.setParams(Float32Array)                    // length engine.numParams
 *   engine.setDropout(seed, step)                     // masks of the next training gradient
 *       (each training gradient then advances step by one; engine.hasDropout says if any)
 *   await engine.gradient(x, y, n, train) -> {grad: Float32Array, loss: number, count: n}
 *       x: Float32Array N*H*W*C (NHWC, pixel/255); y: Int32Array N labels
 *       (Float32Array N*K targets for regression); sums, not means
 *   await engine.predict(x, n) -> Float32Array N*K (probabilities, or scores)
 *   engine.dispose()
 * Results are read from the backend asynchronously (tensor.data(), never dataSync()):
 * TF.js's webgpu backend reads synchronously by drawing the buffer through two canvases,
 * which gives all zeros under Chromium's SwiftShader WebGPU (a tab that sent those
 * gradients was banned at its first audit); its asynchronous read maps a staging buffer
 * and is exact. On wasm and cpu the asynchronous read is the synchronous one, resolved.
 * Loaded as a classic script (self.MlitbTfjsEngine) or with require() in node.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory;
  else root.MlitbTfjsEngine = factory;
})(typeof self !== "undefined" ? self : this, function MlitbTfjsEngine(tf, layers) {
  "use strict";
  const SUPPORTED = ["input", "conv", "fc", "pool", "relu", "sigmoid", "tanh", "maxout",
    "dropout", "lrn", "softmax", "svm", "regression"];

  // ---- parameter segments, in layout order -------------------------------------
  let offset = 0;
  const plan = layers.map((L, i) => {
    if (!SUPPORTED.includes(L.layer_type)) {
      throw new Error(`layer ${i}: type '${L.layer_type}' is not supported by the browser engine`);
    }
    const step = { L, type: L.layer_type };
    if (L.layer_type === "conv") {
      const prev = layers[i - 1];
      const C = prev.out_depth;
      step.w = { off: offset, shape: [L.out_depth, L.sy, L.sx, C] };
      offset += L.out_depth * L.sy * L.sx * C;
      step.b = { off: offset, shape: [L.out_depth] };
      offset += L.out_depth;
    } else if (L.layer_type === "fc") {
      step.w = { off: offset, shape: [L.out_depth, L.num_inputs] };
      offset += L.out_depth * L.num_inputs;
      step.b = { off: offset, shape: [L.out_depth] };
      offset += L.out_depth;
    }
    return step;
  });
  const numParams = offset;
  const inL = layers[0];
  const inShape = [inL.out_sy, inL.out_sx, inL.out_depth];
  const last = layers[layers.length - 1];
  const loss = last.layer_type;
  const K = last.out_depth;
  let P = tf.zeros([numParams]);
  // dropout masks: those of (seed, step) in the next training forward, then step + 1
  const hasDropout = layers.some((L) => L.layer_type === "dropout");
  const dropout = { seed: 0, step: 0 };

  const piece = (P, seg) => tf.reshape(tf.slice(P, seg.off, seg.shape.reduce((a, b) => a * b, 1)), seg.shape);

  // ---- forward: NHWC activations -> scores [N, K] -------------------------------
  function scores(P, x, train) {
    let a = x;
    for (const [i, s] of plan.entries()) {
      const L = s.L;
      switch (s.type) {
        case "input": case "softmax": case "svm": case "regression":
          break;
        case "conv": {
          const w = tf.transpose(piece(P, s.w), [1, 2, 3, 0]); // [sy, sx, C, F]
          if (L.pad) a = tf.pad(a, [[0, 0], [L.pad, L.pad], [L.pad, L.pad], [0, 0]]);
          a = tf.add(tf.conv2d(a, w, L.stride, "valid"), piece(P, s.b));
          break;
        }
        case "fc": {
          const flat = tf.reshape(a, [a.shape[0], -1]); // NHWC flattens as HWC, like ConvNetJS
          a = tf.add(tf.matMul(flat, piece(P, s.w), false, true), piece(P, s.b));
          a = tf.reshape(a, [a.shape[0], 1, 1, L.out_depth]);
          break;
        }
        case "pool": {
          // padded positions never win the max (ConvNetJS skips them)
          if (L.pad) a = tf.pad(a, [[0, 0], [L.pad, L.pad], [L.pad, L.pad], [0, 0]], -3.0e38);
          a = tf.maxPool(a, [L.sy, L.sx], L.stride, "valid");
          break;
        }
        case "relu": a = tf.relu(a); break;
        case "sigmoid": a = tf.sigmoid(a); break;
        case "tanh": a = tf.tanh(a); break;
        case "maxout": {
          const [n, h, w, c] = a.shape;
          const g = L.group_size, groups = Math.floor(c / g);
          if (groups * g !== c) a = tf.slice(a, [0, 0, 0, 0], [n, h, w, groups * g]);
          a = tf.max(tf.reshape(a, [n, h, w, groups, g]), 4);
          break;
        }
        case "dropout": // NHWC: the flat order is the canonical one (MlitbTfjsEngine.dropoutMask)
          if (train) a = tf.mul(a, tf.tensor(MlitbTfjsEngine.dropoutMask(dropout.seed, dropout.step, i, a.size, L.drop_prob), a.shape));
          else a = tf.mul(a, L.drop_prob); // ConvNetJS's test-time scaling
          break;
        case "lrn": {
          const half = Math.floor(L.n / 2);
          const sq = tf.pad(tf.square(a), [[0, 0], [0, 0], [0, 0], [half, half]]);
          // window sum over channels: a depth-wise 1x1 "conv" along C via cumulative slices
          const C = a.shape[3];
          let win = tf.slice(sq, [0, 0, 0, 0], [-1, -1, -1, C]);
          for (let j = 1; j <= 2 * half; j++) win = tf.add(win, tf.slice(sq, [0, 0, 0, j], [-1, -1, -1, C]));
          a = tf.div(a, tf.pow(tf.add(L.k, tf.mul(L.alpha / L.n, win)), L.beta));
          break;
        }
      }
    }
    return tf.reshape(a, [a.shape[0], -1]);
  }

  function lossOf(s, y) {
    if (loss === "regression") return tf.mul(0.5, tf.sum(tf.square(tf.sub(s, y))));
    if (loss === "softmax") {
      const logp = tf.logSoftmax(s);
      return tf.neg(tf.sum(tf.mul(logp, tf.oneHot(y, K))));
    }
    // svm: sum_i max(0, s_i - s_y + 1) over all i (ConvNetJS's report, incl. i = y)
    const sy = tf.sum(tf.mul(s, tf.oneHot(y, K)), 1, true);
    return tf.sum(tf.relu(tf.add(tf.sub(s, sy), 1)));
  }

  function input(x, n) {
    return tf.tensor4d(x, [n, inShape[0], inShape[1], inShape[2]]);
  }

  return {
    numParams,
    inShape,
    numOutputs: K,
    loss,
    backend: () => tf.getBackend(),
    hasDropout,
    /** The dropout masks of the next training gradient: those of (seed, step) (32-bit). */
    setDropout(seed, step) {
      dropout.seed = seed >>> 0;
      dropout.step = step >>> 0;
    },
    setParams(values) {
      if (values.length !== numParams) {
        throw new Error(`expected ${numParams} parameters, got ${values.length}`);
      }
      const next = tf.tensor1d(values, "float32");
      P.dispose();
      P = next;
    },
    async gradient(x, y, n, train = true) {
      const out = tf.tidy(() => {
        const xt = input(x, n);
        const yt = loss === "regression" ? tf.tensor2d(y, [n, K]) : tf.tensor1d(y, "int32");
        const { value, grads } = tf.valueAndGrads((p) => lossOf(scores(p, xt, train), yt))([P]);
        return [value, grads[0]];
      });
      if (train && hasDropout) dropout.step = (dropout.step + 1) >>> 0;
      try {
        const [lossValue, grad] = await Promise.all([out[0].data(), out[1].data()]);
        return { grad: new Float32Array(grad), loss: lossValue[0], count: n };
      } finally {
        out[0].dispose();
        out[1].dispose();
      }
    },
    async predict(x, n) {
      const out = tf.tidy(() => {
        const s = scores(P, input(x, n), false);
        return loss === "softmax" ? tf.softmax(s) : s;
      });
      try {
        return new Float32Array(await out.data());
      } finally {
        out.dispose();
      }
    },
    dispose() {
      P.dispose();
    },
  };
});

/*
 * Dropout masks that the PyTorch executor draws alike (mlitb/model/dropout.py, docs/model.md):
 * with mix(a, v) = lowbias32(a ^ lowbias32(v)) on 32-bit values, key = mix(mix(lowbias32(seed),
 * step), layer) and element e (canonical NHWC index) is kept when mix(key, e) >=
 * floor(drop_prob * 2^32).
 *   MlitbTfjsEngine.dropoutMask(seed, step, layer, count, dropProb) -> Float32Array of 1/0
 *   MlitbTfjsEngine.lowbias32(x) -> uint32
 */
(function (Engine) {
  "use strict";
  function lowbias32(x) {
    x ^= x >>> 16;
    x = Math.imul(x, 0x7feb352d);
    x ^= x >>> 15;
    x = Math.imul(x, 0x846ca68b);
    x ^= x >>> 16;
    return x >>> 0;
  }
  const mix = (a, v) => lowbias32(a ^ lowbias32(v));
  let hashed = new Uint32Array(0); // lowbias32 of 0, 1, 2, ...: the same for every mask
  function dropoutMask(seed, step, layer, count, dropProb) {
    if (hashed.length < count) {
      const next = new Uint32Array(Math.max(count, 2 * hashed.length));
      next.set(hashed);
      for (let e = hashed.length; e < next.length; e++) next[e] = lowbias32(e);
      hashed = next;
    }
    const key = mix(mix(lowbias32(seed >>> 0), step >>> 0), layer >>> 0);
    const cut = Math.floor(dropProb * 4294967296);
    const out = new Float32Array(count);
    for (let e = 0; e < count; e++) out[e] = lowbias32(key ^ hashed[e]) >= cut ? 1 : 0;
    return out;
  }
  Engine.lowbias32 = lowbias32;
  Engine.dropoutMask = dropoutMask;
})(typeof module === "object" && module.exports ? module.exports : self.MlitbTfjsEngine);
