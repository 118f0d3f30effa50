// A research closure (.mlitb) loaded in the New project view. Nothing inside the zip is
// read here (the master checks it: checksums, format, optimizer state); a compact form
// resumes it as a new project: POST /api/closures?name=&train=&test=&start= with the
// file's bytes as the body. The owner token is kept as the new-project view keeps it.
import { ApiError, apiBytes, banner, bannerAfterRoute, el, tokens } from "./api.js";
import { datasetIds } from "./zoo_start_form.js";

export const CLOSURE_TEXT = "research closure: it resumes training where it stopped, " +
  "with its optimizer state and datasets found by content hash";

// A closure is a zip: its first two bytes are "PK". The extension alone is enough too.
export async function isClosureFile(file) {
  if (/\.mlitb$/i.test(file.name)) return true;
  const head = new Uint8Array(await file.slice(0, 2).arrayBuffer());
  return head.length === 2 && head[0] === 0x50 && head[1] === 0x4b;
}

export function closureQuery({ name, train, test, start }) {
  const q = new URLSearchParams();
  if (name.trim()) q.set("name", name.trim());
  const tr = datasetIds(train, "training set ids"), te = datasetIds(test, "test set ids");
  if (tr !== undefined) q.set("train", tr.join(","));
  if (te !== undefined) q.set("test", te.join(","));
  if (start) q.set("start", "1");
  return q.toString();
}

const stem = (filename) => filename.replace(/\.[^.]*$/, "") || filename;
const size = (n) => (n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);

function readable(err, file) {
  if (err.status === 0) return `uploading ${file.name} failed: the master is unreachable`;
  if (err.code === "bad_closure") return `${file.name} cannot be resumed: ${err.message}`;
  return err.message;
}

export function closureForm(file) {
  const name = el("input", { id: "ci-name", value: stem(file.name), size: 24,
    placeholder: "default: the name in the closure" });
  const train = el("input", { id: "ci-train", size: 10, placeholder: "e.g. 1, 2" });
  const test = el("input", { id: "ci-test", size: 10, placeholder: "e.g. 3" });
  const start = el("input", { type: "checkbox", id: "ci-start", checked: true });
  const status = el("p", { id: "ci-status", class: "muted" },
    "Dataset ids left empty: the datasets it was trained and tested on, found on this data server by content hash.");
  const submit = el("button", { class: "primary", id: "ci-submit", type: "submit" }, "Resume as a new project");

  async function onsubmit(ev) {
    ev.preventDefault();
    banner("");
    let query;
    try {
      query = closureQuery({ name: name.value, train: train.value, test: test.value, start: start.checked });
    } catch (e) { status.className = "error"; status.textContent = e.message; return; }
    submit.disabled = true;
    status.className = "muted";
    status.textContent = `uploading ${file.name} and resuming...`;
    try {
      const out = await apiBytes("POST", `/api/closures?${query}`, file, "application/zip");
      tokens.set(out.project.name, out.owner_token);
      if (out.warnings && out.warnings.length) bannerAfterRoute(out.warnings.join("; "), "ok");
      location.hash = `#/p/${encodeURIComponent(out.project.name)}`;
    } catch (e) {
      const text = e instanceof ApiError ? readable(e, file) : e.message;
      status.className = "error";
      status.textContent = text;
      banner(text);
    } finally { submit.disabled = false; }
  }

  return el("form", { id: "closure-import", class: "panel", onsubmit },
    el("h3", {}, `Resume ${file.name}`),
    el("p", { id: "ci-what" }, CLOSURE_TEXT, el("span", { class: "muted" }, ` (${size(file.size)})`)),
    el("div", { class: "toolbar" }, el("label", {}, "project name ", name)),
    el("div", { class: "toolbar" }, el("label", {}, "training set ids ", train), el("label", {}, "test set ids ", test),
      el("label", {}, start, " start now")),
    status,
    el("div", { class: "toolbar" }, submit));
}
