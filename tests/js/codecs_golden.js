// Runs mlitb/web/static/engine/codecs.js on golden vectors from mlitb/protocol/codecs.py.
// stdin: {"cases": [{"dtype", "x" (b64 f32), "payload" (b64, Python's)}],
//         "feedback": [{"dtype", "n", "rounds": [b64 f32]}],
//         "deltas": [{"dtype", "base" (b64 f32), "payloads": [b64]}],
//         "errors": [{"op": "decode", "dtype", "n", "payload"} | {"op": "encode", "dtype", "x"}
//                    | {"op": "payloadSize", "dtype", "n"}],
//         "sizes": [[dtype, n]]}
// stdout: {"cases": [{"payload" (JS encode of x), "decoded" (JS decode of Python's payload)}],
//          "feedback": [[b64 payload per round]], "deltas": [[b64 f32 params after each payload]],
//          "errors": [message | null], "sizes": [bytes]}
const C = require("../../mlitb/web/static/engine/codecs.js");

const bytes = (b64) => new Uint8Array(Buffer.from(b64, "base64"));
const f32 = (b64) => {
  const b = bytes(b64);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const b64 = (arr) => Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64");

const attempt = (fn) => {
  try {
    fn();
    return null;
  } catch (e) {
    return String(e && e.message ? e.message : e);
  }
};

(async () => {
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const req = JSON.parse(input);
  const cases = (req.cases || []).map((c) => ({
    payload: b64(C.encode(f32(c.x), c.dtype)),
    // decode from an odd byte offset too: payloads sit inside frames
    decoded: b64(C.decode(bytes(c.payload), c.dtype, f32(c.x).length)),
    decodedShifted: (() => {
      const p = bytes(c.payload);
      const shifted = new Uint8Array(p.length + 1);
      shifted.set(p, 1);
      return b64(C.decode(shifted.subarray(1), c.dtype, f32(c.x).length));
    })(),
  }));
  const feedback = (req.feedback || []).map((f) => {
    const ef = C.ErrorFeedback(f.n, f.dtype);
    return f.rounds.map((x) => b64(ef.encode(f32(x))));
  });
  const deltas = (req.deltas || []).map((d) => {
    const params = f32(d.base);
    return d.payloads.map((p) => {
      C.applyDelta(params, bytes(p), d.dtype);
      return b64(params);
    });
  });
  const errors = (req.errors || []).map((e) =>
    attempt(() => {
      if (e.op === "decode") C.decode(bytes(e.payload), e.dtype, e.n);
      else if (e.op === "encode") C.encode(f32(e.x), e.dtype);
      else C.payloadSize(e.dtype, e.n);
    }),
  );
  const sizes = (req.sizes || []).map(([dtype, n]) => C.payloadSize(dtype, n));
  process.stdout.write(JSON.stringify({ cases, feedback, deltas, errors, sizes }));
})();
