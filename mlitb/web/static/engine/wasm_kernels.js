/*
 * Gradient kernels the TF.js wasm backend (4.22) lacks, gets wrong or runs slowly:
 *   Conv2DBackpropFilter  - missing in tfjs-backend-wasm 4.22: a conv net cannot train.
 *                           Ours: mlitb's own WebAssembly SIMD kernel (wasm_kernels_bin.js,
 *                           built from mlitb/web/wasm_kernels.c), a product of matrices
 *                           over the batch's positions with 4 x 8 blocks in registers;
 *   Conv2DBackpropInput   - present but a slow plain loop. Ours: stride 1, a convolution
 *                           (XNNPACK) of dy with the reversed filter; strided, our own
 *                           WebAssembly kernel scattering dy through the filter;
 *   MaxPoolGrad           - present but wrong: a window whose values are all negative
 *                           sends its gradient to the window's first element (its max
 *                           starts at 0), found by mlitb's golden vectors. Ours: the
 *                           WebAssembly kernel, first maximum winning, as PyTorch.
 *   BatchMatMul           - XNNPACK only for one untransposed product, else a plain loop
 *                           10x slower. Ours: a single product transposed first, then
 *                           XNNPACK; a batched one (attention's heads) our own kernel;
 *   Slice, SplitV         - each copied its whole input first (readSync). Ours: in place.
 *   (batch norm, GELU,    - mlitb's own kernel names (MlitbBatchNorm*, MlitbGelu*,
 *    layer norm, a bias's   MlitbLayerNorm*, MlitbChannelSums), which engine/tfjs_engine.js
 *    gradient)              calls on wasm where TF.js ran ~30, ~12 and ~20 ops and their
 *                           gradients, and a transpose before a sum over H and W.
 * Convolutions may be padded ('valid', 'same', a number or explicit [[0,0],[t,b],[l,r],[0,0]]),
 * any stride, no dilation (other attributes raise a clear error).
 *   dW = x^T dy over (n, oy, ox): the kernel reads x zero-padded, copied into its memory
 *   dX = conv2d( dy, reverse(W)^T[KH,KW,F,C], padding K-1-padding ) for stride 1; strided: ours
 * The WebAssembly kernels have their own memory: inputs are copied in and results out
 * (~0.1 ms a step for the paper's MNIST net). They run on one thread: with a pool of
 * threads (a volunteer giving more than one core) the filter gradient is the dilated
 * convolution of XNNPACK, which runs on every thread of the pool.
 * Measured (node, one thread, the paper's MNIST net, batch 32; docs/performance.md): the
 * filter gradients 4.8 -> 2.4 ms a step, max-pool's gradient 3.3 -> 0.5 ms.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory;
  else root.registerMlitbWasmKernels = factory;
})(typeof self !== "undefined" ? self : this, function registerMlitbWasmKernels(tf) {
  "use strict";
  const B = "wasm";
  const k = (name) => {
    const kernel = tf.getKernel(name, B);
    if (!kernel) throw new Error(`wasm backend has no ${name} kernel`);
    return kernel.kernelFunc;
  };

  // ---- the WebAssembly module: its own memory, arrays placed one after another ----------
  const inNode = typeof module === "object" && module.exports;
  const b64 = inNode ? require("./wasm_kernels_bin.js") : self.MlitbWasmKernelsBinary;
  if (typeof b64 !== "string") throw new Error("engine/wasm_kernels_bin.js must load before wasm_kernels.js");
  const bytes = inNode ? Buffer.from(b64, "base64") : Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  const own = new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports;
  const memory = own.memory;
  const base = (own.__heap_base.value + 15) & ~15;
  // byte offsets of arrays of these float counts, 16-byte aligned (SIMD loads), each with
  // 16 floats of slack; the memory grows as needed (views taken after this call)
  function place(counts) {
    let at = base;
    const offsets = counts.map((n) => { const o = at; at += (((n + 3) & ~3) + 16) * 4; return o; });
    if (at > memory.buffer.byteLength) memory.grow(Math.ceil((at - memory.buffer.byteLength) / 65536));
    return offsets;
  }
  const up4 = (n) => (n + 3) & ~3;

  function convInfo(xShape, filterShape, attrs) {
    const dil = attrs.dilations;
    const dilOk = dil === undefined || dil === 1 || (Array.isArray(dil) && dil.every((d) => d === 1));
    if (!dilOk || (attrs.dataFormat && attrs.dataFormat !== "NHWC")) {
      throw new Error(`mlitb wasm conv gradient supports NHWC and no dilation; got ${JSON.stringify(attrs)}`);
    }
    return tf.backend_util.computeConv2DInfo(xShape, filterShape, attrs.strides, 1, attrs.pad,
      attrs.dimRoundingMode, false, "channelsLast");
  }

  // TF.js's wasm thread pool (1 without SharedArrayBuffer, or as the volunteer chose)
  const poolSize = () => (tf.wasm && tf.wasm.getThreadsCount ? tf.wasm.getThreadsCount() : 1);

  // The filter gradient as a convolution that XNNPACK runs on the whole pool:
  //   dW = transpose( conv2d( x^T[C,H,W,N], dy^T[OH,OW,N,F], dilation = stride ) )[:KH,:KW]
  // Slower than ours on one thread (the MNIST net: 4.8 against 2.4 ms a step), but ours
  // runs on one thread only: with a pool, this one keeps every thread busy.
  function backpropFilterOnPool({ inputs, backend, attrs }, info) {
    const { dy } = inputs;
    const [KH, KW, C, F] = attrs.filterShape;
    const { top, bottom, left, right } = info.padInfo;
    const temps = [];
    try {
      let x = inputs.x;
      if (top || bottom || left || right) {
        x = run(backend, temps, "PadV2", { x }, {
          paddings: [[0, 0], [top, bottom], [left, right], [0, 0]], constantValue: 0,
        });
      }
      const xT = run(backend, temps, "Transpose", { x }, { perm: [3, 1, 2, 0] });
      const dyT = run(backend, temps, "Transpose", { x: dy }, { perm: [1, 2, 0, 3] });
      const r = run(backend, temps, "Conv2D", { x: xT, filter: dyT },
        { strides: [1, 1], pad: "valid", dataFormat: "NHWC", dilations: [info.strideHeight, info.strideWidth] });
      const rs = run(backend, temps, "Slice", { x: r }, { begin: [0, 0, 0, 0], size: [C, KH, KW, F] });
      return k("Transpose")({ inputs: { x: rs }, backend, attrs: { perm: [1, 2, 0, 3] } });
    } finally {
      for (const t of temps) backend.disposeData(t.dataId);
    }
  }

  function backpropFilter(args) {
    const { inputs, backend, attrs } = args;
    const { x, dy } = inputs;
    const info = convInfo(x.shape, attrs.filterShape, attrs);
    if (poolSize() > 2) return backpropFilterOnPool(args, info);
    const [KH, KW, C, F] = attrs.filterShape;
    const [N, H, W] = x.shape;
    const { top, left } = info.padInfo;
    const { outHeight: OH, outWidth: OW, strideHeight: sh, strideWidth: sw } = info;
    // x as the kernel reads it: padded, only as far as the windows reach
    const Hp = (OH - 1) * sh + KH, Wp = (OW - 1) * sw + KW;
    const Fp = up4(F), R = KH * KW * C, R4 = up4(R);
    const out = backend.makeOutput([KH, KW, C, F], "float32");
    const [px, pg, poff, pdw] = place([N * Hp * Wp * C, N * OH * OW * Fp, R4, R4 * Fp]);
    const heap = new Float32Array(memory.buffer);
    const xs = backend.typedArrayFromHeap(x);
    const X = px >> 2;
    if (top === 0 && left === 0 && Hp === H && Wp === W) heap.set(xs, X);
    else {
      heap.fill(0, X, X + N * Hp * Wp * C);
      const y0 = Math.max(0, top), y1 = Math.min(Hp, top + H); // padded rows holding x's rows
      const c0 = Math.max(0, left), c1 = Math.min(Wp, left + W);
      for (let n = 0; n < N; n++) {
        for (let y = y0; y < y1; y++) {
          const src = ((n * H + y - top) * W + c0 - left) * C;
          heap.set(xs.subarray(src, src + (c1 - c0) * C), X + ((n * Hp + y) * Wp + c0) * C);
        }
      }
    }
    const g = backend.typedArrayFromHeap(dy), G = pg >> 2;
    if (Fp === F) heap.set(g, G);
    else {
      heap.fill(0, G, G + N * OH * OW * Fp);
      for (let i = 0; i < N * OH * OW; i++) heap.set(g.subarray(i * F, i * F + F), G + i * Fp);
    }
    const offsets = new Int32Array(memory.buffer, poff, R4);
    for (let r = 0; r < R4; r++) {
      const c = r % C, kw = Math.floor(r / C) % KW, kh = Math.floor(r / (C * KW));
      offsets[r] = r < R ? (kh * Wp + kw) * C + c : 0;
    }
    heap.fill(0, pdw >> 2, (pdw >> 2) + R4 * Fp);
    own.filter_grad(px, pg, poff, pdw, N, Hp, Wp, C, OH, OW, Fp, R4, sh, sw);
    const dw = new Float32Array(memory.buffer, pdw, R * Fp); // memory.buffer: the same after the call
    const o = backend.typedArrayFromHeap(out);
    if (Fp === F) o.set(dw);
    else for (let r = 0; r < R; r++) o.set(dw.subarray(r * Fp, r * Fp + F), r * F);
    return out;
  }

  function run(backend, temps, name, inputs, attrs) {
    const out = k(name)({ inputs, backend, attrs });
    temps.push(out);
    return out;
  }

  // Stride > 1: ours, scattering each dy position through the filter into the padded dx
  // (the dilated-dy convolution below multiplies sh * sw times as many products, mostly
  // zeros, and TF.js wasm's 6-D pad that dilates is slow: the residual net's stride-2
  // layers took 10 ms each a step)
  function backpropInputStrided({ inputs, backend, attrs }, info) {
    const { dy, filter } = inputs;
    const [N, H, W, C] = attrs.inputShape;
    const [KH, KW, , F] = filter.shape;
    const { outHeight: OH, outWidth: OW, strideHeight: sh, strideWidth: sw } = info;
    const { top, left } = info.padInfo;
    const Hp = (OH - 1) * sh + KH, Wp = (OW - 1) * sw + KW, Cp = up4(C);
    const out = backend.makeOutput([N, H, W, C], "float32");
    const [pg, pw, pdx] = place([N * OH * OW * F, KH * KW * F * Cp, N * Hp * Wp * Cp]);
    const heap = new Float32Array(memory.buffer);
    heap.set(backend.typedArrayFromHeap(dy), pg >> 2);
    const w = backend.typedArrayFromHeap(filter); // [KH, KW, C, F] -> [KH, KW, F, Cp]
    const Wt = pw >> 2;
    heap.fill(0, Wt, Wt + KH * KW * F * Cp);
    for (let kk = 0; kk < KH * KW; kk++) {
      for (let c = 0; c < C; c++) for (let f = 0; f < F; f++) heap[Wt + (kk * F + f) * Cp + c] = w[(kk * C + c) * F + f];
    }
    const D = pdx >> 2;
    heap.fill(0, D, D + N * Hp * Wp * Cp);
    own.input_grad(pg, pw, pdx, N, OH, OW, F, Hp, Wp, Cp, KH, KW, sh, sw);
    // dx[n, y, x] = padded[n, y + top, x + left]; rows and columns past the last window: 0
    const o = backend.typedArrayFromHeap(out);
    o.fill(0);
    const x0 = Math.max(0, -left), x1 = Math.min(W, Wp - left);
    for (let n = 0; n < N; n++) {
      for (let y = Math.max(0, -top); y < Math.min(H, Hp - top); y++) {
        const src = D + ((n * Hp + y + top) * Wp + x0 + left) * Cp, dst = ((n * H + y) * W + x0) * C;
        if (Cp === C) o.set(heap.subarray(src, src + (x1 - x0) * C), dst); // a row at once
        else for (let x = 0; x < x1 - x0; x++) o.set(heap.subarray(src + x * Cp, src + x * Cp + C), dst + x * C);
      }
    }
    return out;
  }

  // Stride 1: a convolution (XNNPACK) of dy with the reversed, transposed filter
  function backpropInput(args) {
    const { inputs, backend, attrs } = args;
    const { dy, filter } = inputs;
    const [N, H, W, C] = attrs.inputShape;
    const info = convInfo(attrs.inputShape, filter.shape, attrs);
    if (info.strideHeight > 1 || info.strideWidth > 1) return backpropInputStrided(args, info);
    const [KH, KW, , F] = filter.shape;
    const { outHeight: OH, outWidth: OW } = info;
    const { top, left } = info.padInfo;
    const temps = [];
    try {
      if (KH === 1 && KW === 1 && top === 0 && left === 0 && OH === H && OW === W) {
        // a 1 x 1 convolution (a transformer's MLP) is a product of matrices, dX = dy W^T:
        // XNNPACK's matrix product (batchMatMul below) runs it 1.5-2x faster than as a conv
        const dy2 = { dataId: dy.dataId, shape: [N * H * W, F], dtype: "float32" };
        const w2 = { dataId: filter.dataId, shape: [C, F], dtype: "float32" };
        const dx = batchMatMul({ inputs: { a: dy2, b: w2 }, backend, attrs: { transposeA: false, transposeB: true } });
        dx.shape = [N, H, W, C];
        return dx;
      }
      // dX[y] = sum over kh of dy[y + top - kh] * W[kh]: a 'valid' convolution with the
      // reversed filter once dy's row y + top - (KH-1) lands at row y, i.e. KH-1-top rows of
      // zeros above it and enough below to give H rows. A padding wider than the filter
      // (never from mlitb's specs) cannot be a negative pad: the rows are cropped after.
      const pt = KH - 1 - top, pl = KW - 1 - left;
      const pb = H + KH - 1 - pt - OH, pr = W + KW - 1 - pl - OW;
      const paddings = [[0, 0], [Math.max(0, pt), Math.max(0, pb)], [Math.max(0, pl), Math.max(0, pr)], [0, 0]];
      const rev = run(backend, temps, "Reverse", { x: filter }, { dims: [0, 1] });
      const wT = run(backend, temps, "Transpose", { x: rev }, { perm: [0, 1, 3, 2] });
      if (Math.min(pt, pb, pl, pr) >= 0) { // XNNPACK pads as it reads: no padded copy of dy
        return k("Conv2D")({ inputs: { x: dy, filter: wT }, backend,
          attrs: { strides: [1, 1], pad: paddings, dataFormat: "NHWC", dilations: [1, 1] } });
      }
      const padded = run(backend, temps, "PadV2", { x: dy }, { paddings, constantValue: 0 });
      const conv = { strides: [1, 1], pad: "valid", dataFormat: "NHWC", dilations: [1, 1] };
      const full = run(backend, temps, "Conv2D", { x: padded, filter: wT }, conv);
      const begin = [0, Math.max(0, -pt), Math.max(0, -pl), 0];
      return k("Slice")({ inputs: { x: full }, backend, attrs: { begin, size: [N, H, W, C] } });
    } finally {
      for (const t of temps) backend.disposeData(t.dataId);
    }
  }

  function maxPoolGrad({ inputs, backend, attrs }) {
    const { dy, input } = inputs;
    const info = tf.backend_util.computePool2DInfo(input.shape, attrs.filterSize, attrs.strides, 1,
      attrs.pad, attrs.dimRoundingMode);
    const { batchSize: N, inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW } = info;
    const out = backend.makeOutput(input.shape, "float32");
    const nx = N * H * W * C;
    const [px, pg, pdx] = place([nx, N * OH * OW * C, nx]);
    const heap = new Float32Array(memory.buffer);
    heap.set(backend.typedArrayFromHeap(input), px >> 2);
    heap.set(backend.typedArrayFromHeap(dy), pg >> 2);
    own.maxpool_grad(px, pg, pdx, N, H, W, C, OH, OW, info.filterHeight, info.filterWidth,
      info.strideHeight, info.strideWidth, info.padInfo.top, info.padInfo.left);
    backend.typedArrayFromHeap(out).set(new Float32Array(memory.buffer, pdx, nx));
    return out;
  }

  // ---- products of matrices ------------------------------------------------------------
  // TF.js wasm's BatchMatMul is XNNPACK (on the whole pool) only for one untransposed
  // product; a transposed or batched one is a plain loop, 0.4-0.8 G multiply-adds a second
  // against 5-8 here (the charlm transformer's attention: 2/3 of its step). So a single
  // transposed product is transposed first (TF.js's Transpose, ~0.3 ms for [768, 384]) and
  // goes to XNNPACK; a batched one (attention's heads) is our WebAssembly kernel.
  const batchMatMulTf = k("BatchMatMul");
  // its wasm function is bound by its setup when the backend starts: ours keeps that setup
  const batchMatMulSetup = tf.getKernel("BatchMatMul", B).setupFunc;
  function batchMatMul(args) {
    const { inputs: { a, b }, backend, attrs } = args;
    const { transposeA: ta, transposeB: tb } = attrs;
    const ra = a.shape.length, rb = b.shape.length;
    const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2)), batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
    if (a.dtype !== "float32" || b.dtype !== "float32") return batchMatMulTf(args);
    if (batchA === 1 && batchB === 1) {
      if (!ta && !tb) return batchMatMulTf(args);
      const temps = [];
      try {
        const flip = (t, r) => run(backend, temps, "Transpose", { x: t }, { perm: [...Array(r - 2).keys(), r - 1, r - 2] });
        return batchMatMulTf({ inputs: { a: ta ? flip(a, ra) : a, b: tb ? flip(b, rb) : b }, backend,
          attrs: { ...attrs, transposeA: false, transposeB: false } });
      } finally {
        for (const t of temps) backend.disposeData(t.dataId);
      }
    }
    // batched: the same batch on both sides or one matrix for all (else TF.js broadcasts)
    const sameBatch = ra === rb && a.shape.slice(0, -2).every((d, i) => d === b.shape[i]);
    if (!sameBatch && batchA !== 1 && batchB !== 1) return batchMatMulTf(args);
    const M = ta ? a.shape[ra - 1] : a.shape[ra - 2], K = ta ? a.shape[ra - 2] : a.shape[ra - 1];
    const N = tb ? b.shape[rb - 2] : b.shape[rb - 1], Np = up4(N);
    const batch = Math.max(batchA, batchB);
    const outShape = (batchA >= batchB ? a : b).shape.slice(0, -2).concat([M, N]);
    const out = backend.makeOutput(outShape, "float32");
    const [c] = ownCall(backend, [a, b], [batch * M * Np, K * Np], (pa, pb, pc, pp) => own.matmul(pa, pb, pc, pp,
      batch, M, K, N, Np, ta ? 1 : 0, tb ? 1 : 0, batchA === 1 ? 0 : M * K, batchB === 1 ? 0 : K * N));
    const o = backend.typedArrayFromHeap(out);
    if (Np === N) o.set(c);
    else for (let r = 0; r < batch * M; r++) o.set(c.subarray(r * Np, r * Np + N), r * N);
    return out;
  }

  // ---- slices -----------------------------------------------------------------------------
  // TF.js wasm's Slice (and SplitV, which slices) reads its input with readSync, a copy of
  // the whole tensor: the engine cuts each step's flat parameter vector into its arrays, so
  // the charlm transformer's 818,241 floats were copied 54 times a step (75 ms). Ours reads
  // the input where it lies and copies only the slice, a run of its last axis at a time.
  const sliceTf = k("Slice");
  function sliceOf(x, begin, size, backend) {
    const out = backend.makeOutput(size, x.dtype); // before the views: it may grow the heap
    const src = backend.typedArrayFromHeap(x), dst = backend.typedArrayFromHeap(out);
    const r = x.shape.length, n = tf.util.sizeFromShape(size);
    if (n === 0) return out;
    const strides = tf.util.computeStrides(x.shape);
    if (r === 0 || tf.slice_util.isSliceContinous(x.shape, begin, size)) {
      const at = r === 0 ? 0 : tf.slice_util.computeFlatOffset(begin, strides);
      dst.set(src.subarray(at, at + n));
      return out;
    }
    const inner = size[r - 1], idx = new Array(r - 1).fill(0);
    for (let o = 0; o < n; o += inner) {
      let at = begin[r - 1];
      for (let d = 0; d < r - 1; d++) at += (begin[d] + idx[d]) * strides[d];
      dst.set(src.subarray(at, at + inner), o);
      for (let d = r - 2; d >= 0 && ++idx[d] === size[d]; d--) idx[d] = 0;
    }
    return out;
  }
  const numeric = (x) => x.dtype === "float32" || x.dtype === "int32" || x.dtype === "bool";
  function slice(args) {
    const { inputs: { x }, attrs, backend } = args;
    if (!numeric(x)) return sliceTf(args);
    const [begin, size] = tf.slice_util.parseSliceParams(x, attrs.begin, attrs.size);
    return sliceOf(x, begin, size, backend);
  }
  const splitVTf = k("SplitV");
  function splitV(args) {
    const { inputs: { x }, attrs, backend } = args;
    if (!numeric(x)) return splitVTf(args);
    const axis = tf.util.parseAxisParam(attrs.axis, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x, attrs.numOrSizeSplits, axis);
    const begin = new Array(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = x.shape.slice();
      size[axis] = s;
      const out = sliceOf(x, begin.slice(), size, backend);
      begin[axis] += s;
      return out;
    });
  }

  // ---- kernels of mlitb's own names, called by engine/tfjs_engine.js on wasm ------------------
  // Copies `ins` (tensors on TF.js's heap, or Float32Arrays) into our memory, places `outs`
  // floats each after them, calls fn with every offset (the inputs', then the outputs') and
  // returns the outputs as views of our memory. The caller makes its TF.js outputs first:
  // makeOutput may grow TF.js's heap, which moves every view of it.
  function ownCall(backend, ins, outs, fn) {
    const arrays = ins.map((t) => (t instanceof Float32Array ? t : backend.typedArrayFromHeap(t)));
    const offsets = place([...arrays.map((a) => a.length), ...outs]);
    const heap = new Float32Array(memory.buffer);
    arrays.forEach((a, i) => heap.set(a, offsets[i] >> 2));
    fn(...offsets);
    return outs.map((n, i) => new Float32Array(memory.buffer, offsets[ins.length + i], n));
  }
  const put = (backend, t, values) => backend.typedArrayFromHeap(t).set(values);
  // [N, P, C] of an [N, ..., C] tensor: images, positions in each, channels
  const npc = (shape) => [shape[0], shape.slice(1, -1).reduce((a, b) => a * b, 1), shape[shape.length - 1]];

  // batch norm in training: three kernels where TF.js ran ~30 ops (sums, means, broadcasts)
  // and their gradients, a third of the fashion net's step
  function bnStats({ inputs: { x }, backend }) {
    const [N, P, C] = npc(x.shape);
    const out = backend.makeOutput([2, C], "float32");
    const [stats] = ownCall(backend, [x], [2 * C, C], (px, ps, pa) => own.bn_stats(px, ps, pa, N, P, C));
    put(backend, out, stats);
    return out;
  }
  // [mean, 1 / sqrt(var + eps), third] from bnStats's [mean, var], as float32 (PyTorch's invstd)
  function coefficients(stats, C, eps, third) {
    const coef = new Float32Array(3 * C);
    coef.set(stats.subarray(0, C));
    for (let c = 0; c < C; c++) coef[C + c] = 1 / Math.fround(Math.sqrt(Math.fround(stats[C + c] + eps)));
    coef.set(third, 2 * C);
    return coef;
  }
  function bnApply({ inputs: { x, stats, gain, bias }, backend, attrs }) {
    const [, , C] = npc(x.shape), n = tf.util.sizeFromShape(x.shape);
    const out = backend.makeOutput(x.shape, "float32");
    const coef = coefficients(backend.typedArrayFromHeap(stats), C, attrs.eps, backend.typedArrayFromHeap(bias));
    const g = backend.typedArrayFromHeap(gain);
    for (let c = 0; c < C; c++) coef[C + c] *= g[c]; // [mean, scale = gain * inv, bias]
    const [y] = ownCall(backend, [x, coef], [n], (px, pc, py) => own.bn_apply(px, pc, py, n / C, C));
    put(backend, out, y);
    return out;
  }
  function bnGrad({ inputs: { x, dy, stats, gain }, backend, attrs }) {
    const [N, P, C] = npc(x.shape), n = N * P * C;
    const dx = backend.makeOutput(x.shape, "float32");
    const dgain = backend.makeOutput([C], "float32"), dbias = backend.makeOutput([C], "float32");
    const coef = coefficients(backend.typedArrayFromHeap(stats), C, attrs.eps, backend.typedArrayFromHeap(gain));
    const [d, sums] = ownCall(backend, [x, dy, coef], [n, 2 * C, 2 * C],
      (px, pg, pc, pdx, ps, pa) => own.bn_grad(px, pg, pc, pdx, ps, pa, N, P, C));
    put(backend, dx, d);
    put(backend, dbias, sums.subarray(0, C));
    put(backend, dgain, sums.subarray(C, 2 * C));
    return [dx, dgain, dbias];
  }

  // a bias's gradient: per channel, each image's positions summed, then the images
  function channelSums({ inputs: { x }, backend }) {
    const [N, P, C] = npc(x.shape);
    const out = backend.makeOutput([C], "float32");
    const [sums] = ownCall(backend, [x], [C, C], (px, po, pa) => own.channel_sums(px, po, pa, N, P, C));
    put(backend, out, sums);
    return out;
  }

  // layer norm over the last axis, per position: ~20 ops and their tape in TF.js
  function lnForward({ inputs: { x, gain, bias }, backend, attrs }) {
    const [, , D] = npc(x.shape), n = tf.util.sizeFromShape(x.shape);
    const out = backend.makeOutput(x.shape, "float32");
    const [y] = ownCall(backend, [x, gain, bias], [n],
      (px, pg, pb, py) => own.ln_forward(px, pg, pb, py, n / D, D, attrs.eps));
    put(backend, out, y);
    return out;
  }
  function lnGrad({ inputs: { x, dy, gain }, backend, attrs }) {
    const [N, P, D] = npc(x.shape), n = N * P * D;
    const dx = backend.makeOutput(x.shape, "float32");
    const dgain = backend.makeOutput([D], "float32"), dbias = backend.makeOutput([D], "float32");
    const [d, sums] = ownCall(backend, [x, dy, gain], [n, 2 * D, 2 * D],
      (px, pg, pw, pdx, ps, pa) => own.ln_grad(px, pg, pw, pdx, ps, pa, N, P, D, attrs.eps));
    put(backend, dx, d);
    put(backend, dgain, sums.subarray(0, D));
    put(backend, dbias, sums.subarray(D, 2 * D));
    return [dx, dgain, dbias];
  }

  // the exact GELU: ~12 ops in TF.js (its Erf and Exp scalar). The kernels run up4(n) lanes:
  // place() leaves slack past every array
  function gelu({ inputs: { x }, backend }) {
    const n = tf.util.sizeFromShape(x.shape);
    const out = backend.makeOutput(x.shape, "float32");
    const [y] = ownCall(backend, [x], [n], (px, py) => own.gelu(px, py, up4(n)));
    put(backend, out, y);
    return out;
  }
  function geluGrad({ inputs: { x, dy }, backend }) {
    const n = tf.util.sizeFromShape(x.shape);
    const out = backend.makeOutput(x.shape, "float32");
    const [d] = ownCall(backend, [x, dy], [n], (px, pg, pd) => own.gelu_grad(px, pg, pd, up4(n)));
    put(backend, out, d);
    return out;
  }

  // Identity (every tensor the tape saves for the backward pass is cloned) and a Cast to the
  // same dtype copy the whole tensor on TF.js wasm; tensors are immutable, so they share
  // the data and count one more reference, as wasm's own Reshape does (and TF.js cpu's
  // Identity). ~1.5 ms of a 19-ms step of the MNIST net.
  const share = (fallback) => (args) => {
    const { x } = args.inputs;
    if (x.dtype === "string" || (args.attrs && args.attrs.dtype && args.attrs.dtype !== x.dtype)) {
      return fallback(args);
    }
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
  const identity = share(k("Identity")), cast = share(k("Cast"));

  const names = ["Conv2DBackpropFilter", "Conv2DBackpropInput", "MaxPoolGrad", "Identity", "Cast",
    "BatchMatMul", "Slice", "SplitV", "MlitbBatchNormStats", "MlitbBatchNorm", "MlitbBatchNormGrad",
    "MlitbGelu", "MlitbGeluGrad", "MlitbLayerNorm", "MlitbLayerNormGrad",
    "MlitbChannelSums"];
  for (const name of names) {
    if (tf.getKernel(name, B)) tf.unregisterKernel(name, B);
  }
  tf.registerKernel({ kernelName: "Conv2DBackpropFilter", backendName: B, kernelFunc: backpropFilter });
  tf.registerKernel({ kernelName: "Conv2DBackpropInput", backendName: B, kernelFunc: backpropInput });
  tf.registerKernel({ kernelName: "MaxPoolGrad", backendName: B, kernelFunc: maxPoolGrad });
  tf.registerKernel({ kernelName: "Identity", backendName: B, kernelFunc: identity });
  tf.registerKernel({ kernelName: "Cast", backendName: B, kernelFunc: cast });
  tf.registerKernel({ kernelName: "BatchMatMul", backendName: B, kernelFunc: batchMatMul, setupFunc: batchMatMulSetup });
  tf.registerKernel({ kernelName: "Slice", backendName: B, kernelFunc: slice });
  tf.registerKernel({ kernelName: "SplitV", backendName: B, kernelFunc: splitV });
  tf.registerKernel({ kernelName: "MlitbBatchNormStats", backendName: B, kernelFunc: bnStats });
  tf.registerKernel({ kernelName: "MlitbBatchNorm", backendName: B, kernelFunc: bnApply });
  tf.registerKernel({ kernelName: "MlitbBatchNormGrad", backendName: B, kernelFunc: bnGrad });
  tf.registerKernel({ kernelName: "MlitbGelu", backendName: B, kernelFunc: gelu });
  tf.registerKernel({ kernelName: "MlitbGeluGrad", backendName: B, kernelFunc: geluGrad });
  tf.registerKernel({ kernelName: "MlitbLayerNorm", backendName: B, kernelFunc: lnForward });
  tf.registerKernel({ kernelName: "MlitbLayerNormGrad", backendName: B, kernelFunc: lnGrad });
  tf.registerKernel({ kernelName: "MlitbChannelSums", backendName: B, kernelFunc: channelSums });
  return names;
});
