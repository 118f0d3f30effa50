/*
 * A browser trainer's record of one round, kept until the master may audit it: the
 * item keys of every batch, in order, and checkpoints of the state (the running
 * gradient sum "g", or the parameters "p" and the inner optimizer's "m", "v") every K
 * steps. The same as the native worker's mlitb/worker/proof.py; the wire format is
 * mlitb/protocol/proofs.py (docs/protocol.md, "Audits").
 *
 * Memory is bounded: at most maxSpaced checkpoints every K steps (32, fewer for large
 * models: 64 MiB in all, a tab's share; the native recorder allows 256 MiB,
 * mlitb.protocol.proofs.spaced_kept); when there would be more, every other one goes and K doubles.
 * Checkpoints at the start, at the overlap shift and at the end are always kept.
 *
 *   new MlitbProof.ProofRecorder(mode, arrays, numParams, dropout = false)
 *     .dropoutSeed                   a dropout net's: random 32 bits, the masks of step s are
 *                                    (dropoutSeed, s) (the header's dropout_seed); else null
 *     .checkpoint(t, state, forced)  state: Float32Arrays in `arrays` order (copied)
 *     .step(keys, t, stateFn)        after a step on items `keys`; stateFn() -> state
 *     .shift()                       local overlap: the carry moved onto new parameters
 *     .encode(projectId, iteration) -> ArrayBuffer (a version-1 proof frame, type 5: everything)
 *     .commit(projectId, iteration) -> ArrayBuffer (a version-2 commit: hashes and the int8 chain)
 *     .reveal(projectId, iteration, request) -> ArrayBuffer (the reveal the master asked for)
 *   MlitbProof.sha256(bytes) -> hex digest (our own: crypto.subtle is missing on plain-http
 *     LAN addresses, where phones join)
 *   MlitbProof.localArrays(opt) -> ["p", "m", "v"] | ["p", "v"] | ["p"]
 *   MlitbProof.localState(params, opt) -> the state arrays in that order
 * A classic script (self.MlitbProof in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbProof = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const MAX_SPACED = 32; // mlitb.protocol.proofs.SPACED_RECORDED
  const MAX_PROOF_BYTES = 64 * 1024 * 1024;
  const PROOF = 5;
  const HEADER = 40;
  const INT8 = 3;
  const BLOCK = 256;

  // ------------------------------------------------------------------ SHA-256 (FIPS 180-4)
  const K256 = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  function bytesOf(data) {
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }

  /** Hex SHA-256 of the bytes of an ArrayBuffer or any typed array. */
  function sha256(data) {
    const bytes = bytesOf(data);
    const n = bytes.length;
    const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    const w = new Uint32Array(64);
    const block = (src, at) => {
      for (let i = 0; i < 16; i++, at += 4) w[i] = (src[at] << 24) | (src[at + 1] << 16) | (src[at + 2] << 8) | src[at + 3];
      for (let i = 16; i < 64; i++) {
        const a = w[i - 15], b = w[i - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (let i = 0; i < 64; i++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (k + S1 + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
    };
    const whole = n - (n % 64);
    for (let at = 0; at < whole; at += 64) block(bytes, at);
    const tail = new Uint8Array(n % 64 < 56 ? 64 : 128); // the rest, 0x80, zeros, the bit length
    tail.set(bytes.subarray(whole));
    tail[n % 64] = 0x80;
    const bits = new DataView(tail.buffer);
    bits.setUint32(tail.length - 8, Math.floor(n / 0x20000000), false); // n * 8 >> 32
    bits.setUint32(tail.length - 4, (n * 8) >>> 0, false);
    for (let at = 0; at < tail.length; at += 64) block(tail, at);
    let hex = "";
    for (const v of h) hex += v.toString(16).padStart(8, "0");
    return hex;
  }

  /** Item keys (numbers: dataset * 2^32 + id) as int64 little-endian bytes. */
  function keyBytes(keys, from, to) {
    const out = new Uint8Array(8 * (to - from));
    const v = new DataView(out.buffer);
    for (let i = from; i < to; i++) {
      const k = keys[i];
      v.setUint32(8 * (i - from), k % 0x100000000, true);
      v.setUint32(8 * (i - from) + 4, Math.floor(k / 0x100000000), true);
    }
    return out;
  }

  function codecs() {
    const c = (typeof self !== "undefined" && self.MlitbCodecs) || (typeof require === "function" ? require("./codecs.js") : null);
    if (!c) throw new Error("proofs of version 2 need engine/codecs.js");
    return c;
  }

  /** One proof frame: the 40-byte header, the JSON (padded to 4 bytes), the parts. */
  function frame(projectId, iteration, header, count, parts) {
    let json = JSON.stringify(header);
    json += " ".repeat((4 - (json.length % 4)) % 4); // ASCII only: length in bytes
    const text = new TextEncoder().encode(json);
    let size = HEADER + text.length;
    for (const p of parts) size += p.byteLength;
    const out = new Uint8Array(size);
    const v = new DataView(out.buffer);
    [77, 76, 84, 70].forEach((c, i) => v.setUint8(i, c)); // "MLTF"
    v.setUint8(4, 2); // protocol version
    v.setUint8(5, PROOF);
    v.setUint8(6, 1); // float32
    v.setUint32(8, projectId, true);
    v.setUint32(12, iteration, true);
    v.setUint32(16, count, true);
    v.setUint32(20, text.length, true);
    out.set(text, HEADER);
    let at = HEADER + text.length;
    for (const p of parts) { out.set(bytesOf(p), at); at += p.byteLength; }
    return out.buffer;
  }

  /** A random 32-bit seed (a dropout net's masks: any value is as good as another). */
  function randomSeed() {
    const c = typeof crypto !== "undefined" && crypto.getRandomValues ? crypto : null;
    return c ? c.getRandomValues(new Uint32Array(1))[0] : Math.floor(Math.random() * 4294967296) >>> 0;
  }

  function ProofRecorder(mode, arrays, numParams, dropout = false) {
    if (!(this instanceof ProofRecorder)) return new ProofRecorder(mode, arrays, numParams, dropout);
    this.mode = mode;
    // a dropout net's masks are those of (this seed, the step's index in this record)
    // (engine/tfjs_engine.js dropoutMask): stated in the proof, so that the master replays them
    this.dropoutSeed = dropout ? randomSeed() : null;
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
    if (this.dropoutSeed !== null) header.dropout_seed = this.dropoutSeed;
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

  ProofRecorder.prototype.stepsAndOffsets = function () {
    const steps = [...this.points.keys()].sort((a, b) => a - b);
    const offsets = [0];
    for (const b of this.batches) offsets.push(offsets[offsets.length - 1] + b);
    return [steps, offsets];
  };

  /** Version 2, phase 1: hashes of every checkpoint's arrays and every segment's keys, and
   *  the first array of every checkpoint (the first float32, then int8 changes). */
  ProofRecorder.prototype.commit = function (projectId, iteration) {
    const C = codecs();
    const [steps, offsets] = this.stepsAndOffsets();
    const runs = [];
    for (const b of this.batches) {
      if (runs.length && runs[runs.length - 1][1] === b) runs[runs.length - 1][0]++;
      else runs.push([1, b]);
    }
    const header = {
      version: 2, phase: "commit", mode: this.mode, arrays: this.arrays, batches: runs,
      checkpoints: steps.map((s) => ({ step: s, t: this.points.get(s).t })),
      hashes: steps.map((s) => this.points.get(s).state.map((a) => sha256(a))),
      segments: steps.slice(1).map((s, j) => sha256(keyBytes(this.keys, offsets[steps[j]], offsets[s]))),
      delta: "int8",
    };
    if (this.dropoutSeed !== null) header.dropout_seed = this.dropoutSeed;
    const first = this.points.get(steps[0]).state[0];
    const rebuilt = Float32Array.from(first);
    const parts = [first];
    for (const s of steps.slice(1)) {
      const a = this.points.get(s).state[0];
      const change = new Float32Array(a.length);
      for (let i = 0; i < a.length; i++) change[i] = a[i] - rebuilt[i];
      const payload = C.encode(change, INT8);
      const back = C.decode(payload, INT8, a.length);
      for (let i = 0; i < a.length; i++) rebuilt[i] += back[i];
      parts.push(payload);
    }
    return frame(projectId, iteration, header, this.numParams, parts);
  };

  /** Version 2, phase 2: every array of request.checkpoints, the first of request.firsts
   *  (float32), then the keys of request.segments (int64 LE), as the master asked. */
  ProofRecorder.prototype.reveal = function (projectId, iteration, request) {
    const [steps, offsets] = this.stepsAndOffsets();
    const segments = request.segments, full = request.checkpoints, firsts = request.firsts || [];
    const ok = (v, top) => Array.isArray(v) && v.every((i) => Number.isInteger(i) && i >= 0 && i < top);
    if (!ok(segments, steps.length - 1) || !ok(full, steps.length) || !ok(firsts, steps.length)) {
      throw new Error("the reveal request names checkpoints or segments this record does not have");
    }
    const parts = [];
    for (const c of full) for (const a of this.points.get(steps[c]).state) parts.push(a);
    for (const c of firsts) parts.push(this.points.get(steps[c]).state[0]);
    const count = parts.reduce((n, a) => n + a.length, 0);
    for (const j of segments) parts.push(keyBytes(this.keys, offsets[steps[j]], offsets[steps[j + 1]]));
    const header = { version: 2, phase: "reveal", segments, checkpoints: full, firsts };
    return frame(projectId, iteration, header, count, parts);
  };

  function localArrays(opt) {
    if (opt.config.optimizer === "adam") return ["p", "m", "v"];
    return Number(opt.config.momentum) ? ["p", "v"] : ["p"];
  }

  function localState(params, opt) {
    const names = localArrays(opt);
    return names.map((n) => (n === "p" ? params : opt.state[n]));
  }

  return { ProofRecorder, localArrays, localState, sha256, keyBytes };
});
