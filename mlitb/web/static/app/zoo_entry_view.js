// One zoo entry (#/zoo/ID): the claim and how it was checked, the data it was trained
// and tested on, its contributors, the test error over iterations, and "Start project".
import { api, el, fmt } from "./api.js";
import { chart } from "./charts.js";
import { labelsText, percent, shortHash, verificationBadge, when } from "./zoo_badge.js";
import { startForm } from "./zoo_start_form.js";

const facts = (pairs) => el("dl", { class: "facts" },
  pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k.replace(/ /g, "-") }, v)]));

function dataTable(role, sets) {
  if (!sets.length) return el("p", { class: "muted" }, `no ${role} set`);
  return el("table", { class: "data", "data-role": role },
    el("thead", {}, el("tr", {}, ["name", "items", "content hash", "labels"].map((t) => el("th", {}, t)))),
    el("tbody", {}, sets.map((d) => el("tr", {}, el("td", {}, d.name || "-"), el("td", {}, fmt(d.items)),
      el("td", { class: "hash", title: d.content_hash || "" }, shortHash(d.content_hash)),
      el("td", { class: "wrap" }, Object.entries(d.label_counts || {}).map(([l, n]) => `${l}: ${n}`).join(", "))))));
}

export async function zooEntryView(root, id) {
  const e = await api("GET", `/api/zoo/${encodeURIComponent(id)}`);
  const claim = e.claim;
  const errors = chart("test error", "error");
  const formBox = el("div", { id: "zoo-start-box" });
  root.append(
    el("p", {}, el("a", { href: "#/zoo" }, "← Model zoo")),
    el("h1", {}, `${e.name} `, verificationBadge(e)),
    e.description ? el("p", {}, e.description) : "",
    facts([
      ["task", e.task], ["labels", labelsText(e.labels, 20)], ["parameters", fmt(e.num_params)],
      ["iteration", fmt(e.iteration)], ["vectors processed", fmt(e.vectors_processed)],
      ["claimed test error", claim ? `${percent(claim.value)} (${claim.errors}/${claim.count} on ${e.claim_test_set})` : "no claim (no test set)"],
      ["verification", e.verification_detail || e.verification],
      ["closure id", el("code", {}, e.closure_id)], ["file sha256", el("code", {}, e.sha256)],
      ["size", `${fmt(e.size)} bytes`], ["published", when(e.published)], ["from project", e.project],
      ["optimizer", `${e.hyper.optimizer}, learning rate ${fmt(e.hyper.learning_rate)}`],
    ]),
    el("div", { class: "toolbar" },
      el("a", { href: e.file, download: "", class: "button", id: "entry-download" }, "Download closure"),
      el("button", { class: "primary", id: "entry-start",
        onclick: () => formBox.replaceChildren(startForm(e, () => formBox.replaceChildren())) }, "Start project")),
    formBox,
    claim ? el("div", {}, el("h2", {}, "Claim"),
      el("table", { id: "claim" }, el("thead", {}, el("tr", {}, ["test set", "errors", "items", "error"].map((t) => el("th", {}, t)))),
        el("tbody", {}, (claim.test_sets || []).map((t) => el("tr", {}, el("td", {}, t.name), el("td", {}, fmt(t.errors)),
          el("td", {}, fmt(t.count)), el("td", {}, percent(t.test_error)))))),
      el("p", { class: "muted small" }, `measured at iteration ${claim.iteration} with the ${claim.executor} executor; `,
        claim.tolerance_rule || "")) : "",
    el("h2", {}, "Data used"),
    el("h3", {}, "Training"), dataTable("train", e.data.train),
    el("h3", {}, "Test"), dataTable("test", e.data.test),
    el("h2", {}, "Contributors"),
    Object.keys(e.contributors || {}).length
      ? facts(Object.entries(e.contributors).map(([kind, n]) => [`${kind} clients`, fmt(n)]))
      : el("p", { class: "muted" }, "no workers contributed (untrained)"),
    el("h2", {}, "Test error over iterations"),
    el("div", { class: "charts" }, errors.node),
  );
  for (const r of e.metrics || []) if (r.test_error !== null && r.test_error !== undefined) errors.push(r.iteration, r.test_error);
  if (!errors.points()) errors.node.append(el("p", { class: "muted" }, "no test errors recorded"));
  return () => {};
}
