/*
 * The binary formats of mlitb for JavaScript (docs/protocol.md, README "Data format"):
 * tensor frames (40-byte header + float32 LE) and data-server item blocks (32-byte
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

  function decodeFrame(buffer) {
    if (buffer.byteLength < FRAME_HEADER) throw new Error(`frame of ${buffer.byteLength} bytes is too short`);
    const v = new DataView(buffer);
    const magic = String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3));
    if (magic !== "MLTF") throw new Error(`frame: bad magic ${magic}`);
    if (v.getUint8(4) !== 1) throw new Error(`frame: protocol version ${v.getUint8(4)} not supported`);
    const count = v.getUint32(16, true);
    if (buffer.byteLength !== FRAME_HEADER + 4 * count) throw new Error("frame: size does not match its header");
    return {
      kind: v.getUint8(5),
      project: v.getUint32(8, true),
      iteration: v.getUint32(12, true),
      values: new Float32Array(buffer.slice(FRAME_HEADER)), // copy: aligned, owned
    };
  }

  function encodeResult(project, iteration, grad, vectors, loss, vectorsPerS, computeMs) {
    const buffer = new ArrayBuffer(FRAME_HEADER + 4 * grad.length);
    const v = new DataView(buffer);
    [77, 76, 84, 70].forEach((c, i) => v.setUint8(i, c)); // "MLTF"
    v.setUint8(4, 1);
    v.setUint8(5, RESULT);
    v.setUint8(6, 1); // float32
    v.setUint8(7, 0);
    v.setUint32(8, project, true);
    v.setUint32(12, iteration, true);
    v.setUint32(16, grad.length, true);
    v.setUint32(20, vectors, true);
    v.setFloat64(24, loss, true);
    v.setFloat32(32, vectorsPerS, true);
    v.setUint32(36, Math.round(computeMs), true);
    new Float32Array(buffer, FRAME_HEADER).set(grad); // little-endian on every platform browsers run on
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

  return { FRAME_HEADER, BLOCK_HEADER, PARAMETERS, RESULT, decodeFrame, encodeResult, BlockReader, textToIds };
});
