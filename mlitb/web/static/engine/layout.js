/*
 * The flat parameter layout of an expanded spec, as mlitb/model/layout.py and
 * docs/model.md ("The flat parameter vector") define it: every layer depth-first (a
 * residual block before its sub-layers: Python's Spec.walk), each layer's arrays in
 * its own order. The browser engine (tfjs_engine.js) slices its parameters by it and
 * the inner optimizers (inner.js) take their decay multipliers and batchnorm's state
 * rates from it, so the three agree by construction.
 *
 *   MlitbLayout.walk(layers) -> [{L, index, inShape: [H, W, D], arrays: [{name, shape, off, size,
 *       l1, l2, rate}], children: [...], fixed: Set of array names}]   (the top level; a
 *       block's sub-layers in .children; fixed: biases a batchnorm removes, which get no
 *       gradient: mlitb.model.layout.fixed_arrays)
 *   MlitbLayout.segments(layers) -> {numParams, arrays: [...every array in layout order]}
 *   MlitbLayout.multipliers(layers) -> {l1: Float32Array, l2: Float32Array,
 *       state: {idx: Int32Array, rate: Float32Array} | null}
 *       decay multipliers per parameter (mlitb.model.layout.decay_multipliers) and the
 *       elements that are state, not trained, with their rate (layout.state_rates)
 * A classic script (self.MlitbLayout) and a CommonJS module (node).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbLayout = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const dflt = (v, d) => (v === undefined || v === null ? d : v);
  const SHIFT_THROUGH = ["pool", "globalavgpool"]; // a per-channel constant passes through them

  /** [[name, shape, l1, l2, rate]] of one expanded layer L on an input of shape [H, W, D]. */
  function arraysOf(L, [H, W, D]) {
    const out = L.out_depth;
    const l1 = dflt(L.l1_decay_mul, 1), l2 = dflt(L.l2_decay_mul, 1);
    switch (L.layer_type) {
      case "conv": return [["filters", [out, L.sy, L.sx, D], l1, l2, 0], ["biases", [out], 0, 0, 0]];
      case "fc": return [["filters", [out, L.num_inputs], l1, l2, 0], ["biases", [out], 0, 0, 0]];
      case "layernorm": return [["gain", [D], 0, 0, 0], ["bias", [D], 0, 0, 0]];
      case "batchnorm":
        return [["gain", [D], 0, 0, 0], ["bias", [D], 0, 0, 0],
          ["running_mean", [D], 0, 0, L.momentum], ["running_var", [D], 0, 0, L.momentum]];
      case "embedding": return [["weights", [L.vocab, out], 0, l2, 0]];
      case "posembedding": return [["weights", [H * W, D], 0, 0, 0]];
      case "attention":
        return [["qkv", [3 * D, D], 0, l2, 0], ["qkv_biases", [3 * D], 0, 0, 0],
          ["out", [D, D], 0, l2, 0], ["out_biases", [D], 0, 0, 0]];
      case "residual":
        return L.stride ? [["filters", [out, 1, 1, D], 0, l2, 0], ["biases", [out], 0, 0, 0]] : [];
      default: return [];
    }
  }

  function walk(layers) {
    let off = 0, index = 0;
    // tailFeedsBn: the list is a residual block's whose sum goes on to a batchnorm
    const visit = (list, shape, tailFeedsBn = false) => list.map((L, i) => {
      const step = { L, index: index++, inShape: shape, arrays: [], children: [], fixed: new Set() };
      // a per-channel bias a batchnorm removes (through pooling only) stays fixed (layout.fixed_arrays)
      let j = i + 1;
      while (j < list.length && SHIFT_THROUGH.includes(list[j].layer_type)) j++;
      const feeds = j < list.length ? list[j].layer_type === "batchnorm" : tailFeedsBn;
      if (feeds && (L.layer_type === "conv" || L.layer_type === "fc")) step.fixed.add("biases");
      if (feeds && L.layer_type === "batchnorm") step.fixed.add("bias");
      if (feeds && L.layer_type === "residual" && L.stride) step.fixed.add("biases");
      for (const [name, shp, l1, l2, rate] of arraysOf(L, shape)) {
        const size = shp.reduce((a, b) => a * b, 1);
        step.arrays.push({ name, shape: shp, off, size, l1, l2, rate });
        off += size;
      }
      if (L.layer_type === "residual") step.children = visit(L.layers, shape, feeds);
      shape = [L.out_sy, L.out_sx, L.out_depth];
      return step;
    });
    const top = visit(layers, [0, 0, 0]);
    top.numParams = off;
    return top;
  }

  function segments(layers) {
    const top = walk(layers), arrays = [];
    const collect = (steps) => steps.forEach((s) => { arrays.push(...s.arrays); collect(s.children); });
    collect(top);
    return { numParams: top.numParams, arrays };
  }

  function multipliers(layers) {
    const { numParams, arrays } = segments(layers);
    const l1 = new Float32Array(numParams), l2 = new Float32Array(numParams);
    const idx = [], rate = [];
    for (const a of arrays) {
      l1.fill(a.l1, a.off, a.off + a.size);
      l2.fill(a.l2, a.off, a.off + a.size);
      if (a.rate) for (let i = a.off; i < a.off + a.size; i++) { idx.push(i); rate.push(a.rate); }
    }
    return { l1, l2, state: idx.length ? { idx: Int32Array.from(idx), rate: Float32Array.from(rate) } : null };
  }

  return { walk, segments, multipliers };
});
