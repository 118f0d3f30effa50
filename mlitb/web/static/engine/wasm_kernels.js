/*
 * Gradient kernels the TF.js wasm backend (4.22) lacks or runs slowly, composed from its
 * own fast kernels (XNNPACK Conv2D, Transpose, Reverse, PadV2, Slice, Reshape):
 *   Conv2DBackpropFilter  - missing in tfjs-backend-wasm 4.22: a conv net cannot train;
 *   Conv2DBackpropInput   - present but a slow plain loop;
 *   MaxPoolGrad           - present but wrong: a window whose values are all negative
 *                           sends its gradient to the window's first element (its max
 *                           starts at 0), found by mlitb's golden vectors. Ours is a plain
 *                           loop over the heap with the first maximum winning, as PyTorch.
 * The mlitb engine pads explicitly and convolves with 'valid' padding, any stride, no
 * dilation - exactly what these support; other attributes raise a clear error.
 *   dW = transpose( conv2d( x^T[C,H,W,N], dy^T[OH,OW,N,F], dilation = stride ) )[:KH,:KW]
 *   dX = conv2d( pad(dilate(dy, stride), K-1), reverse(W)^T[KH,KW,F,C] )
 * Measured here: ~1,500 vectors/s for the paper's MNIST net against 26 on the cpu backend.
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

  function run(backend, temps, name, inputs, attrs) {
    const out = k(name)({ inputs, backend, attrs });
    temps.push(out);
    return out;
  }

  function check(attrs) {
    const pad = attrs.pad;
    const dil = attrs.dilations;
    const dilOk = dil === undefined || dil === 1 || (Array.isArray(dil) && dil.every((d) => d === 1));
    if (pad !== "valid" || !dilOk || (attrs.dataFormat && attrs.dataFormat !== "NHWC")) {
      throw new Error(`mlitb wasm conv gradient supports pad 'valid', NHWC, no dilation; got ${JSON.stringify(attrs)}`);
    }
    return Array.isArray(attrs.strides) ? attrs.strides : [attrs.strides, attrs.strides];
  }

  function backpropFilter({ inputs, backend, attrs }) {
    const { x, dy } = inputs;
    const [sh, sw] = check(attrs);
    const [KH, KW, C, F] = attrs.filterShape;
    const temps = [];
    try {
      const xT = run(backend, temps, "Transpose", { x }, { perm: [3, 1, 2, 0] });
      const dyT = run(backend, temps, "Transpose", { x: dy }, { perm: [1, 2, 0, 3] });
      const r = run(backend, temps, "Conv2D", { x: xT, filter: dyT },
        { strides: [1, 1], pad: "valid", dataFormat: "NHWC", dilations: [sh, sw] });
      const rs = run(backend, temps, "Slice", { x: r }, { begin: [0, 0, 0, 0], size: [C, KH, KW, F] });
      const out = k("Transpose")({ inputs: { x: rs }, backend, attrs: { perm: [1, 2, 0, 3] } });
      return out;
    } finally {
      for (const t of temps) backend.disposeData(t.dataId);
    }
  }

  function backpropInput({ inputs, backend, attrs }) {
    const { dy, filter } = inputs;
    const [sh, sw] = check(attrs);
    const [N, H, W, C] = attrs.inputShape;
    const [KH, KW, , F] = filter.shape;
    const [, OH, OW] = dy.shape;
    const temps = [];
    try {
      let d = dy;
      if (sh > 1 || sw > 1) {
        const r6 = run(backend, temps, "Reshape", { x: d }, { shape: [N, OH, 1, OW, 1, F] });
        const p6 = run(backend, temps, "PadV2", { x: r6 },
          { paddings: [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]], constantValue: 0 });
        const r4 = run(backend, temps, "Reshape", { x: p6 }, { shape: [N, OH * sh, OW * sw, F] });
        d = run(backend, temps, "Slice", { x: r4 },
          { begin: [0, 0, 0, 0], size: [N, (OH - 1) * sh + 1, (OW - 1) * sw + 1, F] });
      }
      const dh = (OH - 1) * sh + 1, dw = (OW - 1) * sw + 1;
      const padded = run(backend, temps, "PadV2", { x: d }, {
        paddings: [[0, 0], [KH - 1, H - dh], [KW - 1, W - dw], [0, 0]], constantValue: 0,
      });
      const rev = run(backend, temps, "Reverse", { x: filter }, { dims: [0, 1] });
      const wT = run(backend, temps, "Transpose", { x: rev }, { perm: [0, 1, 3, 2] });
      return k("Conv2D")({
        inputs: { x: padded, filter: wT }, backend,
        attrs: { strides: [1, 1], pad: "valid", dataFormat: "NHWC", dilations: [1, 1] },
      });
    } finally {
      for (const t of temps) backend.disposeData(t.dataId);
    }
  }

  function maxPoolGrad({ inputs, backend, attrs }) {
    const { dy, input } = inputs;
    const info = tf.backend_util.computePool2DInfo(input.shape, attrs.filterSize, attrs.strides, 1,
      attrs.pad, attrs.dimRoundingMode);
    const out = backend.makeOutput(input.shape, "float32");
    // views after makeOutput: growing the wasm heap detaches older views
    const x = backend.typedArrayFromHeap(input);
    const g = backend.typedArrayFromHeap(dy);
    const dx = backend.typedArrayFromHeap(out);
    dx.fill(0);
    const { batchSize: N, inHeight: H, inWidth: W, inChannels: C, outHeight: OH, outWidth: OW } = info;
    const { strideHeight: sh, strideWidth: sw, filterHeight: fh, filterWidth: fw } = info;
    const top = info.padInfo.top, left = info.padInfo.left;
    for (let n = 0; n < N; n++) {
      for (let oy = 0; oy < OH; oy++) {
        const y0 = oy * sh - top;
        for (let ox = 0; ox < OW; ox++) {
          const x0 = ox * sw - left;
          for (let c = 0; c < C; c++) {
            let best = -Infinity, at = -1;
            for (let ky = 0; ky < fh; ky++) {
              const y = y0 + ky;
              if (y < 0 || y >= H) continue;
              for (let kx = 0; kx < fw; kx++) {
                const xx = x0 + kx;
                if (xx < 0 || xx >= W) continue;
                const i = ((n * H + y) * W + xx) * C + c;
                if (x[i] > best || at < 0) { best = x[i]; at = i; }
              }
            }
            if (at >= 0) dx[at] += g[((n * OH + oy) * OW + ox) * C + c];
          }
        }
      }
    }
    return out;
  }

  const names = ["Conv2DBackpropFilter", "Conv2DBackpropInput", "MaxPoolGrad"];
  for (const name of names) {
    if (tf.getKernel(name, B)) tf.unregisterKernel(name, B);
  }
  tf.registerKernel({ kernelName: "Conv2DBackpropFilter", backendName: B, kernelFunc: backpropFilter });
  tf.registerKernel({ kernelName: "Conv2DBackpropInput", backendName: B, kernelFunc: backpropInput });
  tf.registerKernel({ kernelName: "MaxPoolGrad", backendName: B, kernelFunc: maxPoolGrad });
  return names;
});
