// "Start project" from a zoo entry: continue training exactly where it stopped, a new
// project from its weights, or transfer learning (last layer dropped, new labels).
// POST /api/zoo/{id}/start; the new project's owner token is kept like the new-project
// view keeps it, then the page goes to the new project.
import { api, banner, bannerAfterRoute, el, tokens } from "./api.js";

const MODES = [
  ["weights", "new project from its weights"],
  ["continue", "continue training exactly where it stopped"],
  ["transfer", "transfer learning (drop the last layer, new labels)"],
];

const splitList = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export function datasetIds(text, what) {
  const parts = splitList(text);
  if (!parts.length) return undefined; // omitted: found on the data server by content hash
  const ids = parts.map(Number);
  if (!ids.every(Number.isInteger)) throw new Error(`${what}: expected comma-separated dataset ids, got "${text}"`);
  return ids;
}

export function requestBody({ name, mode, labels, train, test, start }) {
  const body = { start: Boolean(start) };
  if (name.trim()) body.name = name.trim();
  if (mode === "continue") body.continue = true;
  if (mode === "transfer") {
    const list = splitList(labels);
    if (!list.length) throw new Error("transfer learning needs the new labels (comma-separated)");
    body.drop_last_layer = true;
    body.labels = list;
  }
  const tr = datasetIds(train, "training sets"), te = datasetIds(test, "test sets");
  if (tr !== undefined) body.train = tr;
  if (te !== undefined) body.test = te;
  return body;
}

export function startForm(entry, onCancel) {
  const name = el("input", { id: "zs-name", value: `${entry.name}-${entry.id}`, size: 24,
    placeholder: "default: a fresh name" });
  const modes = MODES.map(([value, text]) => el("label", { class: "mode" },
    el("input", { type: "radio", name: "zs-mode", value, checked: value === "weights", id: `zs-mode-${value}` }), ` ${text}`));
  const labels = el("input", { id: "zs-labels", size: 36, placeholder: "new labels, comma-separated", disabled: true });
  const train = el("input", { id: "zs-train", size: 10, placeholder: "e.g. 1, 2" });
  const test = el("input", { id: "zs-test", size: 10, placeholder: "e.g. 3" });
  const start = el("input", { type: "checkbox", id: "zs-start", checked: true });
  const status = el("p", { id: "zs-status", class: "muted" },
    "Dataset ids left empty: the datasets it was trained and tested on, found on this data server by content hash",
    " (none for transfer learning).");
  const mode = () => modes.map((m) => m.querySelector("input")).find((i) => i.checked).value;
  for (const m of modes) m.querySelector("input").addEventListener("change", () => { labels.disabled = mode() !== "transfer"; });
  const submit = el("button", { class: "primary", id: "zs-submit", type: "submit" }, "Start project");

  const form = el("form", { id: "zoo-start", class: "panel", "data-entry": entry.id, onsubmit: async (ev) => {
    ev.preventDefault();
    let body;
    try {
      body = requestBody({ name: name.value, mode: mode(), labels: labels.value, train: train.value, test: test.value,
        start: start.checked });
    } catch (e) { status.className = "error"; status.textContent = e.message; return; }
    submit.disabled = true;
    status.className = "muted";
    status.textContent = "starting...";
    try {
      const out = await api("POST", `/api/zoo/${entry.id}/start`, body);
      tokens.set(out.project.name, out.owner_token);
      if (out.warnings && out.warnings.length) bannerAfterRoute(out.warnings.join("; "), "ok");
      location.hash = `#/p/${encodeURIComponent(out.project.name)}`;
    } catch (e) {
      status.className = "error";
      status.textContent = e.message;
      banner(e.message);
    } finally { submit.disabled = false; }
  } },
  el("h3", {}, `Start a project from ${entry.name}`),
  el("div", { class: "toolbar" }, el("label", {}, "project name ", name)),
  el("div", { class: "modes" }, modes),
  el("div", { class: "toolbar" }, el("label", {}, "new labels ", labels)),
  el("div", { class: "toolbar" }, el("label", {}, "training set ids ", train), el("label", {}, "test set ids ", test),
    el("label", {}, start, " start now")),
  status,
  el("div", { class: "toolbar" }, submit, onCancel ? el("button", { type: "button", id: "zs-cancel", onclick: onCancel }, "Cancel") : ""));
  return form;
}
