// The model zoo (#/zoo): published closures with their verification status, a download
// link, and "Start project" (continue, new from the weights, or transfer learning).
import { api, banner, el, fmt } from "./api.js";
import { day, labelsText, percent, shortHash, verificationBadge, when } from "./zoo_badge.js";
import { startForm } from "./zoo_start_form.js";

const HEADERS = ["name", "description", "task", "labels", "parameters", "claimed test error", "verification",
  "content hash", "published", ""];

export async function zooView(root) {
  const body = el("tbody");
  const formBox = el("div", { id: "zoo-start-box" });
  const openForm = (entry) => {
    formBox.replaceChildren(startForm(entry, () => formBox.replaceChildren()));
    formBox.scrollIntoView({ block: "nearest" });
    formBox.querySelector("#zs-name").focus();
  };
  const row = (e) => el("tr", { "data-entry": e.id },
    el("td", {}, el("a", { href: `#/zoo/${e.id}`, class: "entry-name", title: `entry ${e.id}, from project ${e.project}` }, e.name)),
    el("td", { class: "wrap" }, e.description || el("span", { class: "muted" }, "-")),
    el("td", { class: "wrap" }, e.task),
    el("td", { class: "wrap", title: (e.labels || []).join(", ") }, labelsText(e.labels)),
    el("td", {}, fmt(e.num_params)),
    el("td", { class: "claimed-error", title: e.claim_test_set ? `on ${e.claim_test_set}` : "no test set: no claim" },
      percent(e.claimed_error)),
    el("td", { class: "verification" }, verificationBadge(e), e.verification === "failed" // say why at once
      ? el("div", { class: "small error wrap" }, e.verification_detail) : ""),
    el("td", { class: "hash", title: e.closure_id }, shortHash(e.closure_id)),
    el("td", { title: when(e.published) }, day(e.published)),
    el("td", { class: "actions" }, el("a", { href: e.file, download: "", class: "download", title: `${fmt(e.size)} bytes` }, "Download"),
      " ", el("button", { class: "start", onclick: () => openForm(e) }, "Start project")));

  root.append(
    el("h1", {}, "Model zoo"),
    el("p", { class: "muted" }, "Published closures: the model, its optimizer state and the data it was trained on, ",
      "with the claimed test error recomputed when published. Publish from a project's page."),
    el("div", { class: "scroll" }, el("table", { id: "zoo" },
      el("thead", {}, el("tr", {}, HEADERS.map((t) => el("th", {}, t)))), body)),
    formBox,
  );
  async function refresh() {
    try {
      const entries = await api("GET", "/api/zoo");
      body.replaceChildren(...(entries.length ? entries.map(row)
        : [el("tr", {}, el("td", { colspan: HEADERS.length }, "nothing published yet"))]));
    } catch (e) { banner(e.message); }
  }
  await refresh();
  return () => {};
}
