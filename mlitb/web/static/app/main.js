// The dashboard: a hash router over the views.
import { banner, showPendingBanner } from "./api.js";
import { projectsView } from "./projects_view.js";
import { newProjectView } from "./new_project_view.js";
import { projectView } from "./project_view.js";
import { zooView } from "./zoo_view.js";
import { zooEntryView } from "./zoo_entry_view.js";
import { signinCode, signinLink, signinView } from "./signin_view.js";

let cleanup = null;
let current = 0; // the newest route; an older one still loading is superseded

// A hash change can arrive while the previous view is still loading (a slow first fetch):
// each route renders into its own box, and a superseded view is cleaned up the moment it
// resolves, or its timers (the projects list refreshes every 2 s and clears the banner)
// would run on under the next view forever.
async function route() {
  const mine = ++current;
  if (cleanup) { cleanup(); cleanup = null; }
  banner("");
  document.getElementById("conn").textContent = ""; // the project view's stream state
  const app = document.createElement("div");
  document.getElementById("app").replaceChildren(app);
  const hash = location.hash || "#/";
  const [path, query] = hash.split("?"); // `#/p/NAME?key=K`: the key is the view's business
  const params = new URLSearchParams(query || "");
  let done;
  try {
    if (path.startsWith("#/p/")) done = await projectView(app, decodeURIComponent(path.slice(4)));
    else if (path.startsWith("#/signin-code/")) done = await signinCode(app, decodeURIComponent(path.slice(14)));
    else if (path.startsWith("#/signin/")) {
      const [project, token] = path.slice(9).split("/").map(decodeURIComponent);
      done = await signinLink(app, project, token || "", params.get("data") || "");
    } else if (path === "#/signin") done = await signinView(app, params.get("project") || "");
    else if (hash === "#/new") done = await newProjectView(app);
    else if (hash === "#/zoo") done = await zooView(app);
    else if (hash.startsWith("#/zoo/")) done = await zooEntryView(app, decodeURIComponent(hash.slice(6)));
    else done = await projectsView(app);
  } catch (e) {
    if (mine === current) banner(e.message);
    return;
  }
  if (mine !== current) { if (done) done(); return; } // superseded while loading
  cleanup = done || null;
  showPendingBanner();
}

addEventListener("hashchange", route);
route();
