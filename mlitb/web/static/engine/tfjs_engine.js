/*
 * The browser executor: runs an mlitb model spec (expanded ConvNetJS layers) with
 * TensorFlow.js from the flat float32 parameter vector (docs/model.md, "Layout").
 *
 * The whole vector is ONE tensor P; every layer's weights are pieces of it (one split), reshaped
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
 *       x: Float32Array N*H*W*C (NHWC, pixel/255; token ids for a language model);
 *       y: Int32Array N labels (N*positions token ids for seqsoftmax; Float32Array N*K
 *       targets for regression); sums, not means
 *   await engine.predict(x, n) -> Float32Array N*K (probabilities, or scores;
 *       N*positions*K for seqsoftmax)
 *   engine.positions: targets per item (1, or a sequence's length); engine.vocab: the
 *       token ids a model starting with an embedding takes ([0, vocab); else 0)
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
    "dropout", "lrn", "softmax", "svm", "regression", "gelu", "layernorm", "batchnorm", "globalavgpool",
    "embedding", "posembedding", "attention", "residual", "seqsoftmax"];
  const Layout = typeof module === "object" && module.exports ? require("./layout.js") : self.MlitbLayout;

  // ---- parameter segments, in layout order (engine/layout.js) -------------------
  const check = (list, where) => list.forEach((L, i) => {
    if (!SUPPORTED.includes(L.layer_type)) {
      throw new Error(`layer ${where}${i}: type '${L.layer_type}' is not supported by the browser engine`);
    }
    if (L.layer_type === "residual") check(L.layers || [], `${where}${i}.`);
  });
  check(layers, "");
  const plan = Layout.walk(layers);
  const numParams = plan.numParams;
  const inL = layers[0];
  const inShape = [inL.out_sy, inL.out_sx, inL.out_depth];
  const last = layers[layers.length - 1];
  const loss = last.layer_type;
  const K = last.out_depth; // classes (per position for seqsoftmax)
  const positions = loss === "seqsoftmax" ? last.out_sy * last.out_sx : 1; // targets per item
  let P = tf.zeros([numParams]);
  // dropout masks: those of (seed, step) in the next training forward, then step + 1
  const anyOf = (list, type) => list.some((L) => L.layer_type === type || (L.layers && anyOf(L.layers, type)));
  const hasDropout = anyOf(layers, "dropout");
  const dropout = { seed: 0, step: 0 };

  // Every array of the flat vector P as its own tensor, cut by one split in layout order:
  // the gradient of a split is one concat, where a slice per array cost a zero-padded
  // copy of the whole vector and an add per array (2 x 70 of them for the MNIST net).
  const segs = Layout.segments(layers).arrays; // layout order, contiguous from 0
  function cut(P) {
    if (!segs.length) return new Map();
    const parts = segs.length === 1 ? [P] : tf.split(P, segs.map((g) => g.size));
    return new Map(segs.map((g, i) => [g.off, tf.reshape(parts[i], g.shape)]));
  }
  const arrays = (parts, s) => Object.fromEntries(s.arrays.map((a) => [a.name, parts.get(a.off)]));
  // the value with no gradient (PyTorch's detach): batchnorm's state pull must not reach x
  const stopGradient = tf.customGrad((x) => ({ value: tf.clone(x), gradFunc: (dy) => tf.zerosLike(dy) }));
  const SQRT1_2 = Math.SQRT1_2;
  // a bias a batchnorm removes, without a gradient (layout.js `fixed`; Python's TorchNet.fixed)
  const fx = (s, p, name) => (s.fixed.has(name) ? stopGradient(p[name]) : p[name]);
  // A per-channel vector [C] as [N, 1, 1, C], to add to or multiply with [N, H, W, C]: its
  // gradient is then summed in two stages (H x W, then N), not in one sum over N x H x W.
  // TF.js wasm sums a reduction one float32 after another, and one sum over 6,272 places
  // (a batch of 32 at 14 x 14) put gradients and batch statistics ~1e-5 off PyTorch's:
  // enough to send a ReLU input near 0 the other way (mlitb.master.trust.ties).
  // (A product with ones, not tf.broadcastTo: that is a Tile, whose gradient is a slice and
  // an add per example.)
  const perExample = (v, n) => tf.mul(tf.ones([n, 1, 1, 1]), tf.reshape(v, [1, 1, 1, -1]));

  // A convolution and its bias as one op, on wasm, where the broadcast Add of the bias over
  // the activations cost as much as a small convolution: the forward is TF.js's fused
  // convolution (XNNPACK adds the bias inside its product), the backward the two
  // convolution gradients and the bias's summed in perExample's two stages (each example's
  // positions, then the examples). `needDx` is false where the input is the data (no
  // parameters before it): its gradient is never used, and a custom gradient cannot know
  // that (TF.js prunes it for a plain conv2d), so zeros stand in.
  function convBias(a, w, b, strides, pad, needDx) {
    return tf.customGrad((x, w, b, save) => {
      save([x, w]);
      const gradFunc = (dy, [x, w]) => [
        needDx
          ? tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w },
            { strides, pad, dataFormat: "NHWC", inputShape: x.shape })
          : tf.zerosLike(x),
        tf.engine().runKernel("Conv2DBackpropFilter", { x, dy },
          { strides, pad, dataFormat: "NHWC", filterShape: w.shape }),
        tf.getKernel("MlitbChannelSums", "wasm") ? tf.engine().runKernel("MlitbChannelSums", { x: dy })
          : tf.sum(tf.sum(dy, [1, 2]), 0),
      ];
      return { value: tf.fused.conv2d({ x, filter: w, bias: b, strides, pad }), gradFunc };
    })(a, w, b);
  }

  // ---- forward: NHWC activations -> scores [N, K] -------------------------------
  function run(parts, steps, a, train, ctx) {
    for (const s of steps) {
      const L = s.L, p = arrays(parts, s);
      const upstream = ctx.seenParams === true; // parameters before this step (convBias's needDx)
      if (s.arrays.length) ctx.seenParams = true;
      switch (L.layer_type) {
        case "input": case "softmax": case "svm": case "regression": case "seqsoftmax":
          break;
        case "conv": {
          const w = tf.transpose(p.filters, [1, 2, 3, 0]); // [sy, sx, C, F]
          // zero padding inside the convolution (explicit, ConvNetJS's pad on every side): no
          // padded copy of the activations forward and no slice of its gradient backward
          const pad = L.pad ? [[0, 0], [L.pad, L.pad], [L.pad, L.pad], [0, 0]] : "valid";
          const b = fx(s, p, "biases");
          if (tf.getBackend() === "wasm") a = convBias(a, w, b, L.stride, pad, upstream);
          else a = tf.add(tf.conv2d(a, w, L.stride, pad), perExample(b, a.shape[0]));
          break;
        }
        case "fc": {
          const flat = tf.reshape(a, [a.shape[0], -1]); // NHWC flattens as HWC, like ConvNetJS
          a = tf.add(tf.matMul(flat, p.filters, false, true), fx(s, p, "biases"));
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
        case "gelu": // exact; on wasm two kernels of mlitb's own (engine/wasm_kernels.js)
          if (tf.getBackend() === "wasm" && tf.getKernel("MlitbGelu", "wasm")) a = geluWasm(a);
          else a = tf.mul(tf.mul(0.5, a), tf.add(1, tf.erf(tf.mul(a, SQRT1_2))));
          break;
        case "maxout": {
          const [n, h, w, c] = a.shape;
          const g = L.group_size, groups = Math.floor(c / g);
          if (groups * g !== c) a = tf.slice(a, [0, 0, 0, 0], [n, h, w, groups * g]);
          a = tf.max(tf.reshape(a, [n, h, w, groups, g]), 4);
          break;
        }
        case "dropout": // NHWC: the flat order is the canonical one (MlitbTfjsEngine.dropoutMask)
          if (train) a = tf.mul(a, tf.tensor(MlitbTfjsEngine.dropoutMask(dropout.seed, dropout.step, s.index, a.size, L.drop_prob), a.shape));
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
        case "layernorm": { // per position over the depth (the last axis of NHWC)
          if (tf.getBackend() === "wasm" && tf.getKernel("MlitbLayerNorm", "wasm")) {
            a = layernormWasm(a, p.gain, p.bias, L.eps);
            break;
          }
          const mean = tf.mean(a, 3, true);
          const d = tf.sub(a, mean);
          const inv = tf.rsqrt(tf.add(tf.mean(tf.square(d), 3, true), L.eps));
          const n = a.shape[0];
          a = tf.add(tf.mul(tf.mul(d, inv), perExample(p.gain, n)), perExample(p.bias, n));
          break;
        }
        case "batchnorm": a = batchnorm(L, a, { ...p, bias: fx(s, p, "bias") }, train, ctx); break;
        case "globalavgpool": a = tf.mean(a, [1, 2], true); break;
        case "embedding": { // one-hot x table: TF.js wasm has no gather gradient (UnsortedSegmentSum)
          const [n, h, w] = a.shape;
          const ids = tf.cast(tf.reshape(a, [n * h * w]), "int32");
          a = tf.reshape(tf.matMul(tf.oneHot(ids, L.vocab), p.weights), [n, h, w, L.out_depth]);
          break;
        }
        case "posembedding": a = tf.add(a, tf.reshape(p.weights, a.shape.slice(1))); break;
        case "attention": a = attention(L, a, p); break;
        case "residual": {
          const f = run(parts, s.children, a, train, ctx);
          const x = L.stride
            ? tf.add(tf.conv2d(a, tf.transpose(p.filters, [1, 2, 3, 0]), L.stride, "valid"),
              perExample(fx(s, p, "biases"), a.shape[0]))
            : a;
          a = tf.add(f, x);
          break;
        }
      }
    }
    return a;
  }

  /** Training: the batch's statistics, and the state's pull towards them (0.5 n |state -
   * statistic|^2, its gradient only: mlitb.model.torch_executor._batchnorm). */
  function batchnorm(L, a, p, train, ctx) {
    if (!train) {
      // the running statistics as constants (no gradient), a variance below 0 read as 0
      const inv = tf.rsqrt(tf.add(tf.relu(stopGradient(p.running_var)), L.eps));
      return tf.add(tf.mul(tf.mul(tf.sub(a, stopGradient(p.running_mean)), inv), p.gain), p.bias);
    }
    const [n, h, w, c] = a.shape;
    const count = n * h * w;
    if (tf.getBackend() === "wasm" && tf.getKernel("MlitbBatchNorm", "wasm")) return batchnormWasm(L, a, p, ctx, count);
    // means over N x H x W in two stages (each example's H x W, then the N examples), and
    // everything per channel spread back in two stages: `perExample` says why
    const mean2 = (t) => tf.reshape(tf.mean(tf.mean(t, [1, 2], true), 0), [c]);
    const mean = mean2(a);
    const d = tf.sub(a, perExample(mean, n));
    const variance = mean2(tf.square(d));
    const scale = tf.div(p.gain, tf.sqrt(tf.add(variance, L.eps))); // [C]
    const y = tf.add(tf.mul(d, perExample(scale, n)), perExample(p.bias, n));
    const unbiased = count > 1 ? tf.mul(variance, count / (count - 1)) : variance;
    const pull = tf.add(tf.sum(tf.square(tf.sub(p.running_mean, stopGradient(mean)))),
      tf.sum(tf.square(tf.sub(p.running_var, stopGradient(unbiased)))));
    const term = tf.mul(0.5 * n, pull);
    ctx.state = ctx.state ? tf.add(ctx.state, term) : term;
    return y;
  }

  // GELU and layer norm on wasm: kernels of mlitb's own (engine/wasm_kernels.js), one op each way
  const layernormWasm = (a, gain, bias, eps) => tf.customGrad((x, gain, bias, save) => {
    save([x, gain]);
    const gradFunc = (dy, [x, gain]) => tf.engine().runKernel("MlitbLayerNormGrad", { x, dy, gain }, { eps });
    return { value: tf.engine().runKernel("MlitbLayerNorm", { x, gain, bias }, { eps }), gradFunc };
  })(a, gain, bias);
  const geluWasm = tf.customGrad((x, save) => {
    save([x]);
    const gradFunc = (dy, [x]) => tf.engine().runKernel("MlitbGeluGrad", { x, dy });
    return { value: tf.engine().runKernel("MlitbGelu", { x }), gradFunc };
  });

  /** The same on wasm as three kernels of mlitb's own (engine/wasm_kernels.js): the batch's
   * statistics, read from an alias of `a` that the tape does not follow (they are a function
   * of `a`, but bnGrad's dx already holds their part of the gradient, and the pull takes none),
   * then y and its gradients as one op. */
  function batchnormWasm(L, a, p, ctx, count) {
    const alias = tf.engine().makeTensorFromDataId(a.dataId, a.shape, a.dtype);
    tf.backend().incRef(a.dataId); // the alias holds a reference of its own (its dispose drops one)
    const stats = tf.engine().runKernel("MlitbBatchNormStats", { x: alias }); // [2, C]: mean, biased var
    const eps = L.eps;
    const y = tf.customGrad((x, gain, bias, st, save) => {
      save([x, gain, st]);
      const gradFunc = (dy, [x, gain, st]) => {
        const [dx, dgain, dbias] = tf.engine().runKernel("MlitbBatchNormGrad", { x, dy, stats: st, gain }, { eps });
        return [dx, dgain, dbias, tf.zerosLike(st)];
      };
      return { value: tf.engine().runKernel("MlitbBatchNorm", { x, stats: st, gain, bias }, { eps }), gradFunc };
    })(a, p.gain, p.bias, stats);
    const [mean, variance] = tf.unstack(stats);
    const unbiased = count > 1 ? tf.mul(variance, count / (count - 1)) : variance;
    const pull = tf.add(tf.sum(tf.square(tf.sub(p.running_mean, mean))), tf.sum(tf.square(tf.sub(p.running_var, unbiased))));
    const term = tf.mul(0.5 * a.shape[0], pull);
    ctx.state = ctx.state ? tf.add(ctx.state, term) : term;
    return y;
  }

  /** Multi-head self-attention over the positions (HWC order), heads of D / heads. */
  function attention(L, a, p) {
    const [n, h, w, D] = a.shape;
    const T = h * w, H = L.heads, dh = D / H;
    // the key's bias stays fixed: softmax removes q.b from every score (torch_executor._attention)
    const [bq, bk, bv] = tf.split(p.qkv_biases, 3);
    const bias = tf.concat([bq, stopGradient(bk), bv]);
    const qkv = tf.add(tf.matMul(tf.reshape(a, [n * T, D]), p.qkv, false, true), bias); // [N*T, 3D]
    const heads = (z) => tf.transpose(tf.reshape(z, [n, T, H, dh]), [0, 2, 1, 3]); // [N, H, T, dh]
    const [q, k, v] = tf.split(qkv, 3, 1).map(heads);
    let att = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(dh)); // [N, H, T, T]
    if (L.causal) att = tf.add(att, causalMask(T));
    const y = tf.reshape(tf.transpose(tf.matMul(tf.softmax(att), v), [0, 2, 1, 3]), [n * T, D]);
    return tf.reshape(tf.add(tf.matMul(y, p.out, false, true), p.out_biases), [n, h, w, D]);
  }

  function causalMask(T) { // -1e9 above the diagonal: exp() of it is exactly 0, as PyTorch's -inf
    const m = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -1e9;
    return tf.tensor2d(m, [T, T]);
  }

  function scores(P, x, train, ctx = {}) {
    const a = run(cut(P), plan, x, train, ctx);
    return tf.reshape(a, [a.shape[0], -1]);
  }

  function lossOf(s, y) {
    if (loss === "regression") return tf.mul(0.5, tf.sum(tf.square(tf.sub(s, y))));
    if (loss === "softmax" || loss === "seqsoftmax") {
      const logp = tf.logSoftmax(loss === "seqsoftmax" ? tf.reshape(s, [-1, K]) : s);
      return tf.neg(tf.sum(tf.mul(logp, tf.oneHot(y, K))));
    }
    // svm: sum_i max(0, s_i - s_y + 1) over all i (ConvNetJS's report, incl. i = y)
    const sy = tf.sum(tf.mul(s, tf.oneHot(y, K)), 1, true);
    return tf.sum(tf.relu(tf.add(tf.sub(s, sy), 1)));
  }

  const vocab = layers[1] && layers[1].layer_type === "embedding" ? layers[1].vocab : 0;
  function input(x, n) {
    if (vocab) { // a token id is an integer below the vocabulary, or an error (never a wrong row)
      for (let i = 0; i < x.length; i++) {
        if (!(x[i] >= 0 && x[i] < vocab && Number.isInteger(x[i]))) {
          throw new Error(`token ids must be integers in [0, ${vocab}), got ${x[i]}`);
        }
      }
    }
    return tf.tensor4d(x, [n, inShape[0], inShape[1], inShape[2]]);
  }

  return {
    numParams,
    inShape,
    numOutputs: K,
    positions,
    vocab, // token ids in [0, vocab) (0: not a model of tokens)
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
        const f = (p) => {
          const ctx = {};
          const data = lossOf(scores(p, xt, train, ctx), yt);
          // batchnorm's state pull joins the gradient, not the value (S - S is exactly 0)
          return ctx.state ? tf.add(data, tf.sub(ctx.state, stopGradient(ctx.state))) : data;
        };
        const { value, grads } = tf.valueAndGrads(f)([P]);
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
        if (loss === "seqsoftmax") return tf.softmax(tf.reshape(s, [-1, K]));
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
