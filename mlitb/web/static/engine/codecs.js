/*
 * The tensor codecs of protocol version 2 for JavaScript: the same bytes, bit for bit,
 * as mlitb/protocol/codecs.py, whose docstring is the normative format:
 *   dtype 1 float32: 4 bytes/value, LE.
 *   dtype 2 float16: 2 bytes/value, LE; clip to +-65504, round to nearest even
 *                    (subnormals included), every NaN -> 0x7E00; decode widens exactly.
 *   dtype 3 int8:    BLOCK = 256 values per float32 scale; payload = ceil(n/256) float32
 *                    LE scales, then n int8. scale = f32(maxabs / 127), q = 0 if
 *                    scale == 0 else clip(rint_even(f32(x / scale)), -127, 127);
 *                    decode x = f32(q * scale). Non-finite values cannot be encoded;
 *                    a NaN, infinite or negative scale is refused when decoding.
 * float32 arithmetic is Math.fround of the double result: for +, -, * and / of float32
 * operands the double result rounded once more to float32 is the correctly rounded
 * float32 result, the same as numpy's float32 operations.
 * A classic script (self.MlitbCodecs in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbCodecs = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const FLOAT32 = 1;
  const FLOAT16 = 2;
  const INT8 = 3;
  const BLOCK = 256; // values per int8 block
  const F16_MAX = 65504; // largest finite half
  const F16_NAN = 0x7e00;
  const NAMES = { 1: "float32", 2: "float16", 3: "int8" };
  const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const fround = Math.fround;
  const f32Scratch = new Float32Array(1);
  const u32Scratch = new Uint32Array(f32Scratch.buffer);

  function checkDtype(dtype) {
    if (!Object.prototype.hasOwnProperty.call(NAMES, dtype) || typeof dtype !== "number") {
      throw new Error(`unknown dtype ${dtype}: expected 1 (float32), 2 (float16) or 3 (int8)`);
    }
  }

  function checkCount(n) {
    if (!Number.isInteger(n) || n < 0) throw new Error(`value count must be an integer >= 0, got ${n}`);
  }

  const nblocks = (n) => Math.ceil(n / BLOCK);

  /** Bytes of the payload carrying n values in dtype. */
  function payloadSize(dtype, n) {
    checkDtype(dtype);
    checkCount(n);
    if (dtype === FLOAT32) return 4 * n;
    if (dtype === FLOAT16) return 2 * n;
    return 4 * nblocks(n) + n;
  }

  /** Round half to even (Math.round rounds halves up); t is a float32 value. */
  function rintEven(t) {
    const f = Math.floor(t);
    const d = t - f; // exact: |t| < 2^24 here
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  /** float32 value -> IEEE half bits, as numpy's astype(np.float16) after the clip. */
  function toHalf(x) {
    if (x !== x) return F16_NAN;
    f32Scratch[0] = x > F16_MAX ? F16_MAX : x < -F16_MAX ? -F16_MAX : x;
    const bits = u32Scratch[0];
    const sign = (bits >>> 16) & 0x8000;
    const exp = (bits >>> 23) & 0xff; // biased float32 exponent
    const mant = bits & 0x7fffff; // 23 bits
    const e = exp - 127 + 15; // biased half exponent
    if (e >= 1) {
      // normal half (e <= 30 after the clip): keep 10 bits, round on the 13 dropped
      let h = (e << 10) | (mant >>> 13);
      const rem = mant & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h += 1; // a carry into the exponent is right
      return sign | h;
    }
    if (e < -10) return sign; // below 2^-25: rounds to zero (float32 subnormals too)
    // subnormal half: units of 2^-24; value = m * 2^(e - 14) units with m the 24-bit significand
    const m = mant | 0x800000;
    const shift = 14 - e; // 14..24
    let h = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h += 1; // h = 0x400 is the smallest normal
    return sign | h;
  }

  /** IEEE half bits -> its value (exact in float32). */
  function fromHalf(h) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) return s * m * 5.960464477539063e-8; // m * 2^-24
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (1024 + m) * POW2[e]; // exact: 11 significant bits
  }
  const POW2 = Float64Array.from({ length: 31 }, (_, e) => Math.pow(2, e - 25)); // half exponent -> 2^(e-25)

  /** Uint8Array over the bytes of an ArrayBuffer or any view. */
  function bytesOf(payload) {
    if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
    if (ArrayBuffer.isView(payload)) return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
    throw new Error("payload must be an ArrayBuffer or a typed array");
  }

  /** Float32Array (n) -> payload bytes (Uint8Array) in dtype. */
  function encode(values, dtype) {
    checkDtype(dtype);
    if (!(values instanceof Float32Array)) values = Float32Array.from(values);
    const n = values.length;
    const out = new Uint8Array(payloadSize(dtype, n));
    const view = new DataView(out.buffer);
    if (dtype === FLOAT32) {
      if (LITTLE) out.set(new Uint8Array(values.buffer, values.byteOffset, 4 * n)); // exact bits, NaNs too
      else for (let i = 0; i < n; i++) view.setFloat32(4 * i, values[i], true);
      return out;
    }
    if (dtype === FLOAT16) {
      for (let i = 0; i < n; i++) view.setUint16(2 * i, toHalf(values[i]), true);
      return out;
    }
    const nb = nblocks(n);
    const q8 = new Int8Array(out.buffer, 4 * nb, n); // (n) int8 after the scales
    for (let b = 0; b < nb; b++) {
      const lo = b * BLOCK;
      const hi = Math.min(n, lo + BLOCK);
      let maxabs = 0;
      for (let i = lo; i < hi; i++) {
        const a = Math.abs(values[i]);
        if (!Number.isFinite(a)) throw new Error(`int8 cannot carry non-finite values: value ${i} is ${values[i]}`);
        if (a > maxabs) maxabs = a;
      }
      const scale = fround(maxabs / 127);
      view.setFloat32(4 * b, scale, true);
      if (scale === 0) continue; // q = 0: the bytes are zero already
      for (let i = lo; i < hi; i++) {
        const q = rintEven(fround(values[i] / scale));
        q8[i] = q > 127 ? 127 : q < -127 ? -127 : q;
      }
    }
    return out;
  }

  /** payload (Uint8Array, any view or ArrayBuffer) -> new Float32Array (n). */
  function decode(payload, dtype, n) {
    checkDtype(dtype);
    checkCount(n);
    const bytes = bytesOf(payload);
    const expected = payloadSize(dtype, n);
    if (bytes.length !== expected) {
      throw new Error(`${NAMES[dtype]} payload for ${n} values must be ${expected} bytes, got ${bytes.length}`);
    }
    const out = new Float32Array(n);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (dtype === FLOAT32) {
      if (LITTLE) new Uint8Array(out.buffer).set(bytes); // exact bits, NaNs too
      else for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    if (dtype === FLOAT16) {
      for (let i = 0; i < n; i++) out[i] = fromHalf(view.getUint16(2 * i, true));
      return out;
    }
    const nb = nblocks(n);
    for (let b = 0; b < nb; b++) {
      const scale = view.getFloat32(4 * b, true);
      if (!Number.isFinite(scale) || scale < 0 || Object.is(scale, -0)) {
        throw new Error(`int8 block ${b} has scale ${scale}: expected a finite scale >= 0`);
      }
      const hi = Math.min(n, (b + 1) * BLOCK);
      for (let i = b * BLOCK; i < hi; i++) out[i] = fround(view.getInt8(4 * nb + i) * scale);
    }
    return out;
  }

  /**
   * Client-side encoder that sends its rounding error next time instead of losing it:
   * y = x + e, p = encode(y), e = y - decode(p) (all float32). The sum of what arrives
   * tracks the sum of what was meant to within half a quantization step.
   */
  function ErrorFeedback(n, dtype) {
    checkDtype(dtype);
    checkCount(n);
    let residual = new Float32Array(n); // (n) float32
    return {
      get residual() {
        return residual;
      },
      encode(x) {
        if (x.length !== n) throw new Error(`ErrorFeedback holds ${n} values, got ${x.length}`);
        if (dtype === FLOAT32) return encode(x, FLOAT32);
        const y = new Float32Array(n);
        for (let i = 0; i < n; i++) y[i] = x[i] + residual[i]; // stored as float32: one rounding
        const p = encode(y, dtype);
        const d = decode(p, dtype, n);
        let finite = true;
        for (let i = 0; i < n; i++) { residual[i] = y[i] - d[i]; if (!Number.isFinite(residual[i])) finite = false; }
        if (!finite) residual = new Float32Array(n); // never carry a NaN/Inf into every later payload
        return p;
      },
      reset() {
        residual = new Float32Array(n);
      },
    };
  }

  /** params[i] = float32(params[i] + decode(payload)[i]), in place: a parameter delta. */
  function applyDelta(params, payload, dtype) {
    const d = decode(payload, dtype, params.length);
    for (let i = 0; i < params.length; i++) params[i] = params[i] + d[i]; // Float32Array store rounds
  }

  return {
    FLOAT32,
    FLOAT16,
    INT8,
    BLOCK,
    DTYPES: { none: FLOAT32, float32: FLOAT32, float16: FLOAT16, int8: INT8 },
    dtypeName: (code) => (checkDtype(code), NAMES[code]),
    payloadSize,
    encode,
    decode,
    ErrorFeedback,
    applyDelta,
    toHalf,
    fromHalf,
  };
});
