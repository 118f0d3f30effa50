// REST calls to the master, owner tokens kept in this browser for the projects it created.
const KEY = "mlitb.tokens";

export const tokens = {
  all: () => JSON.parse(localStorage.getItem(KEY) || "{}"),
  get: (project) => tokens.all()[project],
  set(project, token) { const t = tokens.all(); t[project] = token; localStorage.setItem(KEY, JSON.stringify(t)); },
  drop(project) { const t = tokens.all(); delete t[project]; localStorage.setItem(KEY, JSON.stringify(t)); },
};

// The data server's write token (printed by `mlitb serve`, kept in its data directory as
// data-token): uploads need it, reads do not. The owner link printed by `mlitb serve` (and
// by the CLI where it runs next to the server) hands it to the owner's browser with the
// owner token (signin_view.js); else it is pasted once into a "data write token" field.
// Either way it is kept in this browser.
const DATA_KEY = "mlitb.dataToken";
export const dataToken = {
  get: () => localStorage.getItem(DATA_KEY) || "",
  set(token) { if (token) localStorage.setItem(DATA_KEY, token); else localStorage.removeItem(DATA_KEY); },
};

// A field for the data write token, prefilled from this browser and saved as it is typed.
export function dataTokenField(id = "data-token") {
  return el("label", { class: "data-token", title: "the owner link printed by `mlitb serve` fills it in; " +
      "also printed next to the data server URL and kept in the server's data directory, file data-token" },
    dataToken.get() ? "data write token (kept in this browser) " : "data write token ",
    el("input", { id, type: "password", autocomplete: "off", size: 24, value: dataToken.get(),
      placeholder: "needed to upload", oninput: (e) => dataToken.set(e.target.value.trim()) }));
}

// Join keys of private projects, kept in this browser: a page opened with ?key=K (the
// volunteer link of a project with a join key) remembers K for that project; reads of a
// private project send it (header X-Join-Key), as workers in this page do when they join.
const JOIN_KEYS = "mlitb.joinKeys";
export const joinKeys = {
  all: () => JSON.parse(localStorage.getItem(JOIN_KEYS) || "{}"),
  get: (project) => joinKeys.all()[project] || "",
  set(project, key) { const k = joinKeys.all(); if (key) k[project] = key; else delete k[project]; localStorage.setItem(JOIN_KEYS, JSON.stringify(k)); },
  /** ?key=... in the page's address (search or hash): remember it for `project`. */
  fromAddress(project) {
    const q = new URLSearchParams(location.search);
    const h = new URLSearchParams((location.hash.split("?")[1] || ""));
    const key = q.get("key") || h.get("key");
    if (key) joinKeys.set(project, key);
    return joinKeys.get(project);
  },
  /** The stream socket's first message: credentials go there, never in its URL (servers
   * and proxies log URLs; docs/security.md). */
  authMessage(project) {
    const key = joinKeys.get(project), token = tokens.get(project);
    return JSON.stringify({ type: "auth", ...(key ? { key } : {}), ...(token ? { token } : {}) });
  },
};

/** Headers that let this browser read `project`: its owner token and join key, if kept. */
export function authHeaders(project) {
  const headers = {};
  if (tokens.get(project)) headers.Authorization = `Bearer ${tokens.get(project)}`;
  if (joinKeys.get(project)) headers["X-Join-Key"] = joinKeys.get(project);
  return headers;
}

/** A download link for a file of `project`. An open project's is a plain link; a private
 * one's is fetched with the credentials in headers and saved from a blob, so no key or
 * token is ever in a URL (the browser's download list, the server's access log). */
export function downloadLink(attrs, path, project, isPrivate, label) {
  const a = el("a", { ...attrs, href: path, download: "" }, label);
  if (!isPrivate) return a;
  a.addEventListener("click", async (e) => {
    e.preventDefault();
    try {
      const resp = await fetch(path, { headers: authHeaders(project) });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        throw new Error(body.detail || `the master answered ${resp.status}`);
      }
      const name = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
      const url = URL.createObjectURL(await resp.blob());
      const save = el("a", { href: url, download: name ? name[1] : "" });
      document.body.append(save); save.click(); save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) { banner(`download failed: ${err.message}`); }
  });
  return a;
}

export class ApiError extends Error {
  constructor(status, detail, code = "") { super(detail); this.status = status; this.code = code; }
}

export async function api(method, path, body, owner) {
  const headers = owner ? authHeaders(owner) : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return send(method, path, headers, body === undefined ? undefined : JSON.stringify(body));
}

// A raw body (a File, Blob or ArrayBuffer, e.g. a closure zip) with its content type;
// answers and errors are read as api() reads them.
export function apiBytes(method, path, data, contentType) {
  return send(method, path, { "Content-Type": contentType }, data);
}

async function send(method, path, headers, body) {
  let resp;
  try {
    resp = await fetch(path, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, `the master is unreachable (${e.message}); retrying automatically`);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!resp.ok) {
    let detail = data && data.detail !== undefined ? data.detail : resp.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new ApiError(resp.status, detail, (data && data.error) || "");
  }
  return data;
}

// Upload a zip (or an image) to the data server with upload progress (fetch has none),
// with the data write token kept in this browser.
export function upload(url, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Content-Type", contentType);
    if (dataToken.get()) xhr.setRequestHeader("Authorization", `Bearer ${dataToken.get()}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { detail: xhr.responseText }; }
      let detail = data.detail || xhr.statusText;
      if (xhr.status === 401) detail = `upload refused: the data server needs its write token; open the owner link that mlitb serve printed, or paste the token into 'data write token' (${detail})`;
      else if (xhr.status === 403) detail = `upload refused: the data write token is wrong; paste the one \`mlitb serve\` printed (${detail})`;
      else if (xhr.status === 503) detail = `the data server is busy: ${detail}`;
      if (xhr.status >= 400) reject(new ApiError(xhr.status, detail, data.error || ""));
      else resolve(data);
    };
    xhr.onerror = () => reject(new ApiError(0, "upload failed: the data server is unreachable"));
    xhr.send(file);
  });
}

export const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

export function banner(text, kind = "error") {
  const b = document.getElementById("banner");
  b.replaceChildren(text ? el("div", { class: `banner ${kind}`, role: "alert" }, text) : "");
}

// A banner for the next view (shown by the router once that view is built, so the
// route change that follows does not wipe it).
let pending = null;
export function bannerAfterRoute(text, kind = "ok") { pending = text ? [text, kind] : null; }
export function showPendingBanner() { if (pending) { banner(...pending); pending = null; } }

export const fmt = (v, digits = 4) => (v === null || v === undefined ? "-" :
  typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString() : v.toPrecision(digits)) : String(v));
