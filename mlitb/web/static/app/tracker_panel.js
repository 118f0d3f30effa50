// The tracker's execution mode: classify a photo from a file or the camera, show the
// top labels; clicking one adds the photo to the project's data with that label, and a
// new label grows the model's output layer (owner). A language model's tracker writes on
// from a prompt instead.
import { api, banner, el, upload } from "./api.js";

// The data server's policy (mlitb/data/images.py): centre crop to the target aspect,
// then resize; grey = luma. The canvas' bilinear filter is close, not bit-identical.
function toPixels(source, [h, w, c]) {
  const sw = source.videoWidth || source.naturalWidth || source.width;
  const sh = source.videoHeight || source.naturalHeight || source.height;
  let bw = sw, bh = sh;
  if (sw * h > sh * w) bw = sh * w / h; else bh = sw * h / w;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(source, (sw - bw) / 2, (sh - bh) / 2, bw, bh, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(h * w * c);
  for (let i = 0; i < h * w; i++) {
    const a = rgba[4 * i + 3] / 255; // premultiplied: transparent is black
    const r = rgba[4 * i] * a, g = rgba[4 * i + 1] * a, b = rgba[4 * i + 2] * a;
    if (c === 1) out[i] = Math.round(0.299 * r + 0.587 * g + 0.114 * b);
    else { out[3 * i] = Math.round(r); out[3 * i + 1] = Math.round(g); out[3 * i + 2] = Math.round(b); }
  }
  return { pixels: out, canvas };
}

/** A language model's tracker: it writes on from a prompt the viewer types. */
function textPanel(getTracker) {
  const prompt = el("textarea", { id: "prompt", rows: 2, cols: 40, placeholder: "a prompt, e.g. ROMEO:" });
  const length = el("input", { id: "generate-length", type: "number", value: 200, min: 1, max: 2000, size: 5 });
  const temperature = el("input", { id: "temperature", type: "number", value: 0.8, min: 0, max: 2, step: 0.1, size: 4 });
  const out = el("pre", { id: "generated", class: "generated" });
  const go = el("button", { id: "btn-generate", onclick: async () => {
    const tracker = getTracker();
    if (!tracker) { banner("add a tracker first (Add tracker)"); return; }
    go.disabled = true;
    try {
      const r = await tracker.generate(prompt.value, Number(length.value), Number(temperature.value));
      if (r.error) { banner(r.error); return; }
      out.replaceChildren(el("strong", {}, prompt.value), r.text);
      if (r.unknown && r.unknown.length) banner(`left out of the prompt (not in the vocabulary): ${r.unknown.join(" ")}`, "ok");
    } finally { go.disabled = false; }
  } }, "Write on");
  return { node: el("div", { id: "tracker-panel" },
    el("div", { class: "toolbar" }, el("label", {}, "prompt ", prompt), el("label", {}, "characters ", length),
      el("label", {}, "temperature ", temperature), go), out), refresh() {} };
}

export function trackerPanel(name, getTracker, getProject, log, owner) {
  const spec = (getProject() || {}).spec || [];
  if (spec.length && spec[spec.length - 1].layer_type === "seqsoftmax") return textPanel(getTracker);
  const file = el("input", { type: "file", id: "classify-file", accept: "image/*" });
  const video = el("video", { id: "camera", autoplay: true, playsinline: true, width: 160, hidden: true });
  const preview = el("div", { id: "preview" });
  const results = el("ol", { class: "predictions", id: "predictions" });
  const newLabel = el("input", { id: "new-label", placeholder: "a new label", disabled: !owner });
  let last = null; // {blob, pixels}

  async function classify(source, blob) {
    const tracker = getTracker();
    if (!tracker) { banner("add a tracker first (Add tracker)"); return; }
    const p = getProject();
    const { pixels, canvas } = toPixels(source, p.input_shape);
    preview.replaceChildren(canvas);
    const out = await tracker.classify(pixels, p.input_shape);
    if (out.error) { banner(out.error); return; }
    last = { blob, pixels };
    const ranked = out.probs.map((v, i) => [v, out.labels[i]]).sort((a, b) => b[0] - a[0]).slice(0, 5);
    results.replaceChildren(...ranked.map(([v, label]) => el("li", { "data-label": label, title: "add this photo with this label",
      onclick: () => addPhoto(label) }, el("span", { class: "bar", style: `width:${Math.round(v * 200)}px` }), `${label} ${(100 * v).toFixed(1)}%`)));
  }

  async function addPhoto(label) {
    if (!last) return;
    const p = getProject();
    const train = (p.datasets || []).find((d) => d.role === "train");
    if (!train) { banner("the project has no training set to add the photo to"); return; }
    try {
      const r = await upload(`/data/datasets/${train.dataset}/items?label=${encodeURIComponent(label)}`, last.blob, last.blob.type || "image/png");
      log(`photo added to dataset ${train.dataset} with label ${label} (item ${r.first_id})`);
      banner(`photo added as '${label}'`, "ok");
    } catch (e) { banner(e.message); }
  }

  file.addEventListener("change", async () => {
    const f = file.files[0];
    if (!f) return;
    const img = new Image();
    img.onload = () => classify(img, f);
    img.onerror = () => banner(`${f.name} is not an image the browser can read`);
    img.src = URL.createObjectURL(f);
  });

  const cameraBtn = el("button", { id: "btn-camera", onclick: async () => {
    // navigator.mediaDevices exists only in a secure context: https, or http on localhost. A
    // phone on http://192.168.x.y would otherwise read "cannot read properties of undefined".
    if (!window.isSecureContext) {
      banner("the camera needs https: browsers allow it only over https or on localhost; start the master with --tls (mlitb serve --tls) and open its https address");
      return;
    }
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
      video.hidden = false;
    } catch (e) { banner(`camera unavailable: ${e.message}`); }
  } }, "Camera");
  const snapBtn = el("button", { id: "btn-snap", onclick: async () => {
    if (!video.srcObject) { banner("start the camera first"); return; }
    const c = document.createElement("canvas");
    c.width = video.videoWidth; c.height = video.videoHeight;
    c.getContext("2d").drawImage(video, 0, 0);
    c.toBlob((blob) => classify(video, blob), "image/png");
  } }, "Take picture");
  const addLabelBtn = el("button", { id: "btn-add-label", disabled: !owner, onclick: async () => {
    const label = newLabel.value.trim();
    if (!label) return;
    try {
      const out = await api("POST", `/api/projects/${encodeURIComponent(name)}/labels`, { label }, name);
      log(`label '${label}' added: ${out.num_outputs} outputs, ${out.num_params} parameters`);
      newLabel.value = "";
      await addPhoto(label);
    } catch (e) { banner(e.message); }
  } }, "Add label");

  // the tracker's last test score as a confusion table: rows the true label, columns the
  // predicted one, the diagonal what it got right (a share of the row, shaded)
  const confusion = el("div", { id: "confusion" });
  function showConfusion(m) {
    if (!m || !m.confusion) return;
    const labels = m.labels || [], K = labels.length;
    if (K * K !== m.confusion.length) return;
    const row = (t) => m.confusion.slice(t * K, (t + 1) * K);
    confusion.replaceChildren(el("p", { class: "small muted" }, `confusion of labels at iteration ${m.iteration} (rows: true, columns: predicted)`),
      el("div", { class: "table-scroll" }, el("table", { class: "confusion" },
        el("thead", {}, el("tr", {}, el("th", {}, ""), ...labels.map((l) => el("th", {}, l)))),
        el("tbody", {}, ...labels.map((l, t) => {
          const counts = row(t), n = counts.reduce((a, b) => a + b, 0) || 1;
          return el("tr", {}, el("th", {}, l), ...counts.map((c, k) => el("td", {
            class: k === t ? "hit" : c ? "miss" : "", style: c ? `opacity:${0.35 + 0.65 * c / n}` : "" }, c ? String(c) : "")));
        })))));
  }
  const node = el("div", { id: "tracker-panel" },
    el("div", { class: "toolbar" }, el("label", {}, "classify an image ", file), cameraBtn, snapBtn),
    video, preview, results,
    el("div", { class: "toolbar" }, newLabel, addLabelBtn), confusion);
  return { node, refresh: showConfusion };
}
