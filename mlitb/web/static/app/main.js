// The dashboard: a hash router over the views.
import { banner, showPendingBanner } from "./api.js";
import { projectsView } from "./projects_view.js";
import { newProjectView } from "./new_project_view.js";
import { projectView } from "./project_view.js";
import { zooView } from "./zoo_view.js";
import { zooEntryView } from "./zoo_entry_view.js";
import { signinLink, signinView } from "./signin_view.js";

let cleanup = null;

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  banner("");
  document.getElementById("conn").textContent = ""; // the project view's stream state
  const app = document.getElementById("app");
  app.replaceChildren();
  const hash = location.hash || "#/";
  const [path, query] = hash.split("?"); // `#/p/NAME?key=K`: the key is the view's business
  const params = new URLSearchParams(query || "");
  try {
    if (path.startsWith("#/p/")) cleanup = await projectView(app, decodeURIComponent(path.slice(4)));
    else if (path.startsWith("#/signin/")) {
      const [project, token] = path.slice(9).split("/").map(decodeURIComponent);
      cleanup = await signinLink(app, project, token || "");
    } else if (path === "#/signin") cleanup = await signinView(app, params.get("project") || "");
    else if (hash === "#/new") cleanup = await newProjectView(app);
    else if (hash === "#/zoo") cleanup = await zooView(app);
    else if (hash.startsWith("#/zoo/")) cleanup = await zooEntryView(app, decodeURIComponent(hash.slice(6)));
    else cleanup = await projectsView(app);
    showPendingBanner();
  } catch (e) {
    banner(e.message);
  }
}

addEventListener("hashchange", route);
route();
