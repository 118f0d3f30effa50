// Signing a browser in as a project's owner. The owner token is printed once, when the
// project is created (`mlitb serve --demo`, `mlitb project create`, `mlitb zoo start`),
// together with an owner link `#/signin/PROJECT/TOKEN`: opening it once keeps the token in
// this browser (localStorage, like the page's own projects) and takes it out of the
// address bar and the history. `#/signin` is the same by hand: pick a project, paste the
// token. The master checks the token before it is kept (GET /api/projects/NAME/owner).
// A link printed where the data server's write token is known (`mlitb serve`'s demo, the
// CLI next to the server) ends in `?data=WRITE_TOKEN`: checked at /data/auth and kept
// too, so the owner uploads data from the dashboard without pasting a second token.
import { api, banner, bannerAfterRoute, dataToken, el, tokens } from "./api.js";
import { projectView } from "./project_view.js";

async function check(project, token) {
  const resp = await fetch(`/api/projects/${encodeURIComponent(project)}/owner`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  if (resp.ok) return null;
  const body = await resp.json().catch(() => ({}));
  return body.detail || `the master answered ${resp.status}`;
}

async function checkData(token) {
  const resp = await fetch("/data/auth", { headers: { Authorization: `Bearer ${token}` } }).catch(() => null);
  if (resp && resp.ok) return null;
  const body = resp ? await resp.json().catch(() => ({})) : {};
  return body.detail || (resp ? `the data server answered ${resp.status}` : "the data server is unreachable");
}

/** `#/signin/PROJECT/TOKEN[?data=WRITE_TOKEN]`: keep the tokens that are right, then show the project. */
export async function signinLink(root, project, token, data = "") {
  history.replaceState(null, "", "#/signin"); // the tokens leave the address bar and the history
  const problem = await check(project, token);
  if (problem) {
    banner(`owner link for ${project} refused: ${problem}`);
    return signinView(root, project);
  }
  tokens.set(project, token);
  const dataProblem = data ? await checkData(data) : null;
  if (data && !dataProblem) dataToken.set(data);
  if (dataProblem) bannerAfterRoute(`signed in as the owner of ${project}, but the link's data write token was refused (${dataProblem}): uploads need the token pasted`, "error");
  else bannerAfterRoute(`signed in as the owner of ${project} in this browser${data ? ", uploads allowed" : ""}`, "ok");
  history.replaceState(null, "", `#/p/${encodeURIComponent(project)}`); // no hashchange: shown here
  return projectView(root, project);
}

/** `#/signin`: paste an owner token. */
export async function signinView(root, preset = "") {
  const projects = await api("GET", "/api/projects").catch(() => []);
  const select = el("select", { id: "signin-project" },
    ...projects.map((p) => el("option", { value: p.name, selected: p.name === preset }, p.name)));
  const field = el("input", { id: "signin-token", type: "password", autocomplete: "off", size: 40,
    placeholder: "owner token (printed when the project was made)" });
  const msg = el("p", { id: "signin-message", class: "muted" });
  const go = el("button", { id: "signin-go", class: "primary", onclick: async () => {
    const project = select.value, token = field.value.trim();
    if (!project || !token) { msg.className = "error"; msg.textContent = "choose a project and paste its owner token"; return; }
    const problem = await check(project, token);
    if (problem) { msg.className = "error"; msg.textContent = problem; return; }
    tokens.set(project, token);
    location.hash = `#/p/${encodeURIComponent(project)}`;
  } }, "Sign in");
  root.append(
    el("h1", {}, "Sign in as a project's owner"),
    el("p", {}, "The owner token was printed once, when the project was created, with an owner link that does this in one click. ",
      "It stays in this browser until you sign out on the project's page."),
    projects.length ? el("div", { class: "toolbar" }, el("label", {}, "project ", select), field, go)
      : el("p", { class: "muted" }, "no projects on this master yet"),
    msg,
  );
  return null;
}

/** The project page's line: who this browser is for this project, with sign in / out. */
export function whoAmI(project, onChange) {
  const owner = Boolean(tokens.get(project));
  return el("p", { id: "who", class: owner ? "who owner" : "who" },
    owner ? el("span", { class: "badge verified" }, "owner") : el("span", { class: "badge unverified" }, "volunteer view"),
    " ",
    owner
      ? el("a", { href: "#", id: "signout", onclick: (e) => { e.preventDefault(); tokens.drop(project); onChange(); } },
        "sign out in this browser")
      : el("a", { href: `#/signin?project=${encodeURIComponent(project)}`, id: "signin-link" },
        "sign in as the owner to control it"));
}
