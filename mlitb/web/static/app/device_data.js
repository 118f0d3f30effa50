// A volunteer's own training data for a project whose data stays on the devices
// (data_source=device; docs/security.md "Device data"): a folder (one sub-folder per
// label), a zip of one, or photos from the camera, read with the data server's upload
// rules as far as a browser can: hidden and system files ignored, a file outside a label
// folder, a label the project lacks or anything that is not an image skipped with the
// reason; images decoded here, cropped to the model's aspect ratio at the centre, resized
// to its input, alpha over black, grey as Pillow's "L" (299/587/114). Nothing is uploaded:
// the items go to this page's Web Worker and to this browser's IndexedDB (for the next
// visit, until "Forget my data").

const SYSTEM = new Set(["__MACOSX", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "System Volume Information"]);
const MAX_ITEMS = 200000;
const MAX_IMAGE_PIXELS = 40000000; // the data server's limit (mlitb.data.limits)
const MAX_LISTED = 200; // skipped files named one by one (all are counted)

/** The label of a file at `path` ("a/b/label/file.png" -> "label"), or why it has none. */
export function labelOf(path) {
  const parts = path.split("/").filter(Boolean);
  for (const p of parts) {
    if (SYSTEM.has(p)) return { ignore: `system file (${p})` };
    if (p.startsWith(".")) return { ignore: `hidden ('${p}' starts with '.')` };
  }
  if (parts.length < 2) return { skip: "not inside a label folder" };
  return { label: parts[parts.length - 2] };
}

/** Pixels (h*w*c uint8) of one image (a Blob or an ImageBitmap), as the data server would make them. */
export async function decode(blob, [h, w, c]) {
  const bmp = blob instanceof ImageBitmap ? blob : await createImageBitmap(blob);
  try {
    if (bmp.width * bmp.height > MAX_IMAGE_PIXELS) {
      throw new Error(`image too large: ${bmp.width}x${bmp.height}, the limit is ${MAX_IMAGE_PIXELS} pixels`);
    }
    // the largest box of the target's aspect ratio, centred (mlitb.data.images._centre_box)
    let bw = bmp.width, bh = bmp.height;
    if (bmp.width * h > bmp.height * w) bw = (bmp.height * w) / h; else bh = (bmp.width * h) / w;
    const canvas = new OffscreenCanvas(w, h);
    const g = canvas.getContext("2d", { willReadFrequently: true });
    g.fillStyle = "#000"; g.fillRect(0, 0, w, h); // alpha over black, as the server premultiplies
    g.imageSmoothingEnabled = true; g.imageSmoothingQuality = "medium";
    g.drawImage(bmp, (bmp.width - bw) / 2, (bmp.height - bh) / 2, bw, bh, 0, 0, w, h);
    const rgba = g.getImageData(0, 0, w, h).data;
    const out = new Uint8Array(h * w * c);
    for (let i = 0, n = h * w; i < n; i++) {
      const r = rgba[4 * i], gr = rgba[4 * i + 1], b = rgba[4 * i + 2];
      if (c === 1) out[i] = (r * 19595 + gr * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's "L"
      else { out[3 * i] = r; out[3 * i + 1] = gr; out[3 * i + 2] = b; }
    }
    return out;
  } finally {
    bmp.close();
  }
}

/** The members of a zip file: [{path, blob}] (stored or deflated; read from the central directory). */
export async function zipMembers(file) {
  const buf = new Uint8Array(await file.arrayBuffer());
  const dv = new DataView(buf.buffer);
  let end = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i--) {
    if (dv.getUint32(i, true) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw new Error("not a zip archive (no end of central directory): expected a .zip with one folder per label");
  const count = dv.getUint16(end + 10, true);
  let at = dv.getUint32(end + 16, true);
  const out = [];
  const utf8 = new TextDecoder();
  for (let k = 0; k < count; k++) {
    if (dv.getUint32(at, true) !== 0x02014b50) throw new Error("damaged zip: a central directory entry is wrong");
    const method = dv.getUint16(at + 10, true);
    const size = dv.getUint32(at + 20, true);
    const nameLen = dv.getUint16(at + 28, true), extraLen = dv.getUint16(at + 30, true), commentLen = dv.getUint16(at + 32, true);
    const local = dv.getUint32(at + 42, true);
    const path = utf8.decode(buf.subarray(at + 46, at + 46 + nameLen));
    at += 46 + nameLen + extraLen + commentLen;
    if (path.endsWith("/")) continue; // a folder entry
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    const raw = buf.subarray(start, start + size);
    if (method === 0) out.push({ path, blob: new Blob([raw]) });
    else if (method === 8) {
      out.push({ path, blob: async () => new Response(new Blob([raw]).stream().pipeThrough(new DecompressionStream("deflate-raw"))).blob() });
    } else out.push({ path, skip: `compression method ${method} is not supported (stored or deflate)` });
  }
  return out;
}

/**
 * Items from files (a folder's File list, with webkitRelativePath) or zip members, for a
 * project of `labels` and model input `shape` [h, w, c]. -> {pixels, labels (indices),
 * perLabel, skipped: [[file, why]], skippedCount, unknown: {label: n}, ignored}.
 */
export async function readItems(entries, labels, shape, onProgress = () => {}) {
  const index = new Map(labels.map((l, i) => [l, i]));
  const item = shape[0] * shape[1] * shape[2];
  const chunks = [], idx = [], perLabel = {}, unknown = {}, skipped = [];
  let skippedCount = 0, ignored = 0;
  const skip = (path, why) => { skippedCount++; if (skipped.length < MAX_LISTED) skipped.push([path, why]); };
  let done = 0;
  for (const e of entries) {
    onProgress(++done, entries.length);
    const path = e.path || e.webkitRelativePath || e.name;
    const where = labelOf(path);
    if (where.ignore) { ignored++; continue; }
    if (where.skip) { skip(path, where.skip); continue; }
    if (e.skip) { skip(path, e.skip); continue; }
    if (!index.has(where.label)) { unknown[where.label] = (unknown[where.label] || 0) + 1; continue; }
    if (idx.length >= MAX_ITEMS) { skip(path, `more than ${MAX_ITEMS} items: the rest are left out`); continue; }
    try {
      const blob = typeof e.blob === "function" ? await e.blob() : (e.blob || e);
      chunks.push(await decode(blob, shape));
      idx.push(index.get(where.label));
      perLabel[where.label] = (perLabel[where.label] || 0) + 1;
    } catch (err) {
      skip(path, /too large/.test(String(err.message)) ? err.message : `not an image, or a damaged one (${err.name || "error"})`);
    }
  }
  const pixels = new Uint8Array(idx.length * item);
  chunks.forEach((px, i) => pixels.set(px, i * item));
  const ordered = {};
  for (const l of labels) if (perLabel[l]) ordered[l] = perLabel[l];
  return { pixels, labels: Int32Array.from(idx), perLabel: ordered, skipped, skippedCount, unknown, ignored, shape };
}

// ---------------------------------------------------------------- kept for the next visit
const DB = "mlitb-device-data", STORE = "sets";

function open() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction(STORE, mode);
      const req = fn(t.objectStore(STORE));
      t.oncomplete = () => resolve(req && req.result);
      t.onerror = () => reject(t.error);
    });
  } finally { db.close(); }
}

export const keep = (project, data) => tx("readwrite", (s) => s.put({ ...data, savedAt: Date.now() }, project));
export const recall = (project) => tx("readonly", (s) => s.get(project)).catch(() => undefined);
export const forget = (project) => tx("readwrite", (s) => s.delete(project));
