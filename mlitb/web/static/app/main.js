// The dashboard: a hash router over three views.
import { banner } from "./api.js";
import { projectsView } from "./projects_view.js";
import { newProjectView } from "./new_project_view.js";
import { projectView } from "./project_view.js";

let cleanup = null;

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  banner("");
  const app = document.getElementById("app");
  app.replaceChildren();
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/p/")) cleanup = await projectView(app, decodeURIComponent(hash.slice(4)));
    else if (hash === "#/new") cleanup = await newProjectView(app);
    else cleanup = await projectsView(app);
  } catch (e) {
    banner(e.message);
  }
}

addEventListener("hashchange", route);
route();
