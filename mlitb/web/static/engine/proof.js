/*
 * A browser trainer's record of one round, kept until the master may audit it: the
 * item keys of every batch, in order, and checkpoints of the state (the running
 * gradient sum "g", or the parameters "p" and the inner optimizer's "m", "v") every K
 * steps. The same as the native worker's mlitb/worker/proof.py; the wire format is
 * mlitb/protocol/proofs.py (docs/protocol.md, "Audits").
 *
 * Memory is bounded: at most maxSpaced checkpoints every K steps (16, fewer for large
 * models: 64 MiB in all); when there would be more, every other one goes and K doubles.
 * Checkpoints at the start, at the overlap shift and at the end are always kept.
 *
 *   new MlitbProof.ProofRecorder(mode, arrays, numParams)
 *     .checkpoint(t, state, forced)  state: Float32Arrays in `arrays` order (copied)
 *     .step(keys, t, stateFn)        after a step on items `keys`; stateFn() -> state
 *     .shift()                       local overlap: the carry moved onto new parameters
 *     .encode(projectId, iteration) -> ArrayBuffer (a proof frame, type 5)
 *   MlitbProof.localArrays(opt) -> ["p", "m", "v"] | ["p", "v"] | ["p"]
 *   MlitbProof.localState(params, opt) -> the state arrays in that order
 * A classic script (self.MlitbProof in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbProof = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const MAX_SPACED = 16;
  const MAX_PROOF_BYTES = 64 * 1024 * 1024;
  const PROOF = 5;
  const HEADER = 40;

  function ProofRecorder(mode, arrays, numParams) {
    if (!(this instanceof ProofRecorder)) return new ProofRecorder(mode, arrays, numParams);
    this.mode = mode;
    this.arrays = arrays;
    this.numParams = numParams;
    this.batches = [];
    this.keys = [];
    this.every = 1;
    this.points = new Map(); // step -> {t, state: [Float32Array], forced}
    const perCheckpoint = 4 * arrays.length * Math.max(numParams, 1);
    this.maxSpaced = Math.max(2, Math.min(MAX_SPACED, Math.floor(MAX_PROOF_BYTES / perCheckpoint) - 4));
  }

  ProofRecorder.prototype.checkpoint = function (t, state, forced = false) {
    const step = this.batches.length;
    const old = this.points.get(step);
    this.points.set(step, { t, state: state.map((a) => Float32Array.from(a)), forced: forced || !!(old && old.forced) });
    const spaced = [...this.points.entries()].filter(([, p]) => !p.forced).map(([s]) => s);
    if (spaced.length > this.maxSpaced) {
      this.every *= 2;
      for (const s of spaced) if (s % this.every) this.points.delete(s);
    }
  };

  ProofRecorder.prototype.step = function (keys, t, stateFn) {
    this.batches.push(keys.length);
    for (const k of keys) this.keys.push(k);
    if (this.batches.length % this.every === 0) this.checkpoint(t, stateFn());
  };

  ProofRecorder.prototype.shift = function () {
    this.batches.push(0);
  };

  ProofRecorder.prototype.encode = function (projectId, iteration) {
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    const header = {
      mode: this.mode, arrays: this.arrays, batches: this.batches, keys: this.keys,
      checkpoints: steps.map((s) => ({ step: s, t: this.points.get(s).t })),
    };
    let json = JSON.stringify(header);
    json += " ".repeat((4 - (json.length % 4)) % 4); // ASCII only: length in bytes
    const text = new TextEncoder().encode(json);
    const count = steps.length * this.arrays.length * this.numParams;
    const buffer = new ArrayBuffer(HEADER + text.length + 4 * count);
    const v = new DataView(buffer);
    [77, 76, 84, 70].forEach((c, i) => v.setUint8(i, c)); // "MLTF"
    v.setUint8(4, 2); // protocol version
    v.setUint8(5, PROOF);
    v.setUint8(6, 1); // float32
    v.setUint32(8, projectId, true);
    v.setUint32(12, iteration, true);
    v.setUint32(16, count, true);
    v.setUint32(20, text.length, true);
    new Uint8Array(buffer, HEADER, text.length).set(text);
    const floats = new Float32Array(buffer, HEADER + text.length, count);
    let at = 0;
    for (const s of steps) {
      for (const a of this.points.get(s).state) { floats.set(a, at); at += this.numParams; }
    }
    return buffer;
  };

  function localArrays(opt) {
    if (opt.config.optimizer === "adam") return ["p", "m", "v"];
    return Number(opt.config.momentum) ? ["p", "v"] : ["p"];
  }

  function localState(params, opt) {
    const names = localArrays(opt);
    return names.map((n) => (n === "p" ? params : opt.state[n]));
  }

  return { ProofRecorder, localArrays, localState };
});
