/*
 * The binary formats of mlitb for JavaScript (docs/protocol.md, README "Data format"):
 * tensor frames (40-byte header + float32 LE, or v2 float16 / int8 via engine/codecs.js) and data-server item blocks (32-byte
 * header + ids + labels + pixels), plus the id-list text syntax ("0:5,9").
 * A classic script (self.MlitbWire in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbWire = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const FRAME_HEADER = 40;
  const BLOCK_HEADER = 32;
  const PARAMETERS = 1;
  const RESULT = 2;
  const DELTA = 3; // v2: parameter change start - end of local steps
  const PARAM_DELTA = 4; // v2: add to the parameters of `base` to get `iteration`'s
  const FLOAT32 = 1;
  const Codecs = () => (typeof self !== "undefined" && self.MlitbCodecs) ||
    (typeof require === "function" ? require("./codecs.js") : null);

  /** One binary message -> {kind, project, iteration, base, dtype, version, values: Float32Array}. */
  function decodeFrame(buffer) {
    if (buffer.byteLength < FRAME_HEADER) throw new Error(`frame of ${buffer.byteLength} bytes is too short`);
    const v = new DataView(buffer);
    const magic = String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3));
    if (magic !== "MLTF") throw new Error(`frame: bad magic ${magic}`);
    const version = v.getUint8(4), kind = v.getUint8(5), dtype = v.getUint8(6);
    if (version !== 1 && version !== 2) throw new Error(`frame: protocol version ${version} not supported`);
    const count = v.getUint32(16, true);
    let values;
    if (dtype === FLOAT32) {
      if (buffer.byteLength !== FRAME_HEADER + 4 * count) throw new Error("frame: size does not match its header");
      values = new Float32Array(buffer.slice(FRAME_HEADER)); // copy: aligned, owned
    } else {
      const C = Codecs();
      if (!C || version < 2) throw new Error(`frame: dtype ${dtype} not supported`);
      if (buffer.byteLength !== FRAME_HEADER + C.payloadSize(dtype, count)) throw new Error("frame: size does not match its header");
      values = C.decode(new Uint8Array(buffer, FRAME_HEADER), dtype, count);
    }
    return {
      kind, version, dtype,
      project: v.getUint32(8, true),
      iteration: v.getUint32(12, true),
      base: v.getUint32(20, true), // parameter delta only
      values,
    };
  }

  /**
   * A result frame. `values`: Float32Array (float32), or the codec's Uint8Array payload
   * with opts.count values. opts: {kind: RESULT | DELTA, dtype: 1 | 2 | 3, protocol: 1 | 2, count}.
   */
  function encodeResult(project, iteration, values, vectors, loss, vectorsPerS, computeMs, opts = {}) {
    const kind = opts.kind || RESULT, dtype = opts.dtype || FLOAT32, version = opts.protocol || 1;
    const count = dtype === FLOAT32 ? values.length : opts.count;
    const bytes = dtype === FLOAT32 ? 4 * count : values.byteLength;
    const buffer = new ArrayBuffer(FRAME_HEADER + bytes);
    const v = new DataView(buffer);
    [77, 76, 84, 70].forEach((c, i) => v.setUint8(i, c)); // "MLTF"
    v.setUint8(4, version);
    v.setUint8(5, kind);
    v.setUint8(6, dtype);
    v.setUint8(7, 0);
    v.setUint32(8, project, true);
    v.setUint32(12, iteration, true);
    v.setUint32(16, count, true);
    v.setUint32(20, vectors, true);
    v.setFloat64(24, loss, true);
    v.setFloat32(32, vectorsPerS, true);
    v.setUint32(36, Math.round(computeMs), true);
    if (dtype === FLOAT32) new Float32Array(buffer, FRAME_HEADER).set(values); // little-endian everywhere browsers run
    else new Uint8Array(buffer, FRAME_HEADER).set(values);
    return buffer;
  }

  /** Incremental parser of item blocks: push(Uint8Array chunk) -> complete blocks. */
  function BlockReader() {
    let buf = new Uint8Array(0);
    return {
      push(chunk) {
        const joined = new Uint8Array(buf.length + chunk.length);
        joined.set(buf, 0);
        joined.set(chunk, buf.length);
        buf = joined;
        const out = [];
        while (buf.length >= BLOCK_HEADER) {
          const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
          const magic = String.fromCharCode(buf[0], buf[1], buf[2], buf[3]);
          if (magic !== "MLDB") throw new Error(`item block: bad magic ${magic}`);
          const n = v.getUint32(12, true), h = v.getUint16(16, true), w = v.getUint16(18, true);
          const c = v.getUint16(20, true), payload = v.getUint32(24, true);
          const size = BLOCK_HEADER + payload;
          if (buf.length < size) break;
          const bytes = buf.slice(0, size); // own copy, aligned at 0
          const dataset = v.getUint32(8, true);
          out.push({
            dataset, n, shape: [h, w, c],
            ids: new Uint32Array(bytes.buffer, BLOCK_HEADER, n),
            labels: new Uint16Array(bytes.buffer.slice(BLOCK_HEADER + 4 * n, BLOCK_HEADER + 6 * n)),
            pixels: new Uint8Array(bytes.buffer, BLOCK_HEADER + 6 * n, n * h * w * c),
          });
          buf = buf.slice(size);
        }
        return out;
      },
      leftover() { return buf.length; },
    };
  }

  function textToIds(text) {
    const out = [];
    for (const part of text.split(",")) {
      if (!part) continue;
      const i = part.indexOf(":");
      if (i < 0) out.push(parseInt(part, 10));
      else for (let k = parseInt(part.slice(0, i), 10), e = parseInt(part.slice(i + 1), 10); k < e; k++) out.push(k);
    }
    return out;
  }

  return {
    FRAME_HEADER, BLOCK_HEADER, PARAMETERS, RESULT, DELTA, PARAM_DELTA, FLOAT32,
    decodeFrame, encodeResult, BlockReader, textToIds,
  };
});
