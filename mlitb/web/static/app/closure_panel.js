// The project page's closure controls: "Export closure" (anyone: a download of the
// project's closure with its test sets embedded) and "Publish to zoo" (owner: the master
// exports, verifies and stores it; the entry's verification status is shown here).
import { api, banner, downloadLink, el } from "./api.js";
import { verificationBadge } from "./zoo_badge.js";

export function closurePanel(name, owner, log, isPrivate = false) {
  const path = `/api/projects/${encodeURIComponent(name)}`;
  const result = el("span", { id: "publish-result" });
  const publish = el("button", { id: "btn-publish", disabled: !owner,
    title: owner ? "export, verify and add to the model zoo" : "publishing needs the owner's browser",
    onclick: async () => {
      publish.disabled = true;
      result.replaceChildren(el("span", { class: "muted" }, "publishing (export and verification)..."));
      try {
        const out = await api("POST", `${path}/publish`, {}, name);
        const e = out.entry;
        result.replaceChildren(out.created ? "published: " : "already in the zoo: ", verificationBadge(e),
          e.verification_detail ? el("span", { class: "small muted" }, ` ${e.verification_detail} `) : " ",
          el("a", { href: `#/zoo/${e.id}`, id: "publish-entry" }, `entry ${e.id}`), " · ",
          el("a", { href: "#/zoo", id: "publish-zoo" }, "model zoo"));
        log(`zoo entry ${e.id} (${e.verification}): ${e.verification_detail}`);
      } catch (e) {
        result.replaceChildren(el("span", { class: "error" }, e.message));
        banner(e.message);
        log(e.message, "error");
      } finally { publish.disabled = false; }
    } }, "Publish to zoo");
  const node = el("div", { class: "toolbar", id: "closure-panel" },
    downloadLink({ id: "export-closure", class: "button",
      title: "the model, its optimizer state, the metrics and the test sets, as one verifiable file" },
    `${path}/closure?embed_test=1`, name, isPrivate, "Export closure"),
    publish, result);
  return { node };
}
