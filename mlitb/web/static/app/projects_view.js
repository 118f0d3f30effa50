// Projects list with the paper's columns, refreshed every 2 s.
import { api, banner, el, fmt, joinKeys, tokens } from "./api.js";

// The master lists open projects only (a private project's name is not told to anyone who
// asks); the private projects this browser holds a key or owner token for are added here.
async function knownPrivate(listed) {
  const names = new Set([...Object.keys(tokens.all()), ...Object.keys(joinKeys.all())]);
  const mine = [...names].filter((n) => !listed.has(n));
  const rows = await Promise.all(mine.map((n) =>
    api("GET", `/api/projects/${encodeURIComponent(n)}`, undefined, n).then((p) => ({ ...p, private: true })).catch(() => null)));
  return rows.filter((p) => p && p.join_key);
}

const COLUMNS = [
  ["name", "project"], ["state", "state"], ["workers", "workers attached"], ["workers_assigned", "workers assigned"],
  ["test_error", "error"], ["data_size", "data size"], ["vectors_processed", "data processed"],
  ["iteration_seconds", "iteration time (s)"], ["power", "power (vectors/s)"], ["iteration", "iteration"],
];

export async function projectsView(root) {
  const body = el("tbody");
  root.append(
    el("h1", {}, "Projects"),
    el("table", { id: "projects" }, el("thead", {}, el("tr", {}, COLUMNS.map(([, t]) => el("th", {}, t)))), body),
    el("p", {}, el("a", { href: "#/new" }, "New project")),
  );
  // Only a banner this view put up is its to clear, and only while the view is shown: a
  // refresh still in flight when the route changed must not wipe the next view's banner.
  let failed = false;
  async function refresh() {
    try {
      const open = await api("GET", "/api/projects");
      if (!root.isConnected) return;
      const rows = [...open, ...(await knownPrivate(new Set(open.map((p) => p.name))))];
      body.replaceChildren(...(rows.length ? rows.map((p) => el("tr", { "data-project": p.name },
        COLUMNS.map(([k]) => el("td", {}, k === "name"
          ? el("a", { href: `#/p/${encodeURIComponent(p.name)}` }, p.name, tokens.get(p.name) ? " (yours)" : "",
            p.private ? " (private: join key)" : "")
          : k === "state" ? el("span", { class: `state-${p.state}` }, p.state) : fmt(p[k])))))
        : [el("tr", {}, el("td", { colspan: COLUMNS.length }, "no projects yet"))]));
      if (failed) banner("");
      failed = false;
    } catch (e) { if (root.isConnected) { banner(e.message); failed = true; } }
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
