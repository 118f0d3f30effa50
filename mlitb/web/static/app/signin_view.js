// Signing a browser in as a project's owner. The owner token is printed once, when the
// project is created (`mlitb serve --demo`, `mlitb project create`, `mlitb zoo start`),
// together with an owner link `#/signin-code/CODE`: a one-time code, never a token, since
// a browser keeps every address it opened in its history (Chromium: even one the page
// rewrote at once). The page sends the code in a POST body (/api/signin) and gets the
// owner token, plus the data server's write token where the CLI handed it over; both are
// kept in this browser (localStorage, like the page's own projects) and the code is used
// up. `mlitb project link NAME` prints a fresh link. `#/signin` is the same by hand: pick
// a project, paste the token. The master checks a token before it is kept (GET
// /api/projects/NAME/owner), and the data token is checked at /data/auth.
// An old link `#/signin/PROJECT/TOKEN[?data=WRITE_TOKEN]` is still accepted (the CLI
// prints none any more).
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

/** `#/signin-code/CODE`: exchange the one-time code for the tokens, then as signinLink. */
export async function signinCode(root, code) {
  history.replaceState(null, "", "#/signin"); // a used code is no use in the address bar
  let resp = null, body = {};
  try {
    resp = await fetch("/api/signin", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code }) });
    body = await resp.json().catch(() => ({}));
  } catch (e) { /* named below */ }
  if (!resp || !resp.ok) {
    const why = resp ? body.detail || `the master answered ${resp.status}` : "the master is unreachable";
    banner(`owner link refused: ${why}`);
    return signinView(root, "", `this sign-in link was already used or has expired: run \`mlitb project link PROJECT\` where the project was created for a new one, or paste the owner token here`);
  }
  return signinLink(root, body.project, body.owner_token, body.data_token || "");
}

/** `#/signin/PROJECT/TOKEN[?data=WRITE_TOKEN]` (old links), or the tokens a code gave:
 * keep the tokens that are right, then show the project. */
export async function signinLink(root, project, token, data = "") {
  history.replaceState(null, "", "#/signin"); // the tokens leave the address bar
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
export async function signinView(root, preset = "", note = "") {
  // a private project is not listed for a browser without its key or token: type its name
  const projects = await api("GET", "/api/projects").catch(() => []);
  const select = el("input", { id: "signin-project", list: "signin-projects", value: preset, size: 18,
    autocomplete: "off", placeholder: "project name" });
  const names = el("datalist", { id: "signin-projects" }, ...projects.map((p) => el("option", { value: p.name })));
  const field = el("input", { id: "signin-token", type: "password", autocomplete: "off", size: 40,
    placeholder: "owner token (printed when the project was made)" });
  const msg = el("p", { id: "signin-message", class: note ? "error" : "muted" }, note);
  const go = el("button", { id: "signin-go", class: "primary", onclick: async () => {
    const project = select.value.trim(), token = field.value.trim();
    if (!project || !token) { msg.className = "error"; msg.textContent = "choose a project and paste its owner token"; return; }
    const problem = await check(project, token);
    if (problem) { msg.className = "error"; msg.textContent = problem; return; }
    tokens.set(project, token);
    location.hash = `#/p/${encodeURIComponent(project)}`;
  } }, "Sign in");
  root.append(
    el("h1", {}, "Sign in as a project's owner"),
    el("p", {}, "The owner token was printed once, when the project was created, with an owner link that does this in one click ",
      "(once: `mlitb project link NAME` prints a new link). ",
      "It stays in this browser until you sign out on the project's page."),
    el("div", { class: "toolbar" }, el("label", {}, "project ", select, names), field, go),
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
