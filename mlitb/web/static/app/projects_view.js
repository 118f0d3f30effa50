// Projects list with the paper's columns, refreshed every 2 s.
import { api, banner, el, fmt, tokens } from "./api.js";

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
  async function refresh() {
    try {
      const rows = await api("GET", "/api/projects");
      body.replaceChildren(...(rows.length ? rows.map((p) => el("tr", { "data-project": p.name },
        COLUMNS.map(([k]) => el("td", {}, k === "name"
          ? el("a", { href: `#/p/${encodeURIComponent(p.name)}` }, p.name, tokens.get(p.name) ? " (yours)" : "",
            p.private ? " (private: join key)" : "")
          : k === "state" ? el("span", { class: `state-${p.state}` }, p.state) : fmt(p[k])))))
        : [el("tr", {}, el("td", { colspan: COLUMNS.length }, "no projects yet"))]));
      banner("");
    } catch (e) { banner(e.message); }
  }
  await refresh();
  const timer = setInterval(refresh, 2000);
  return () => clearInterval(timer);
}
