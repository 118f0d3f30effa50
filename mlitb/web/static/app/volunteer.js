// This browser as a volunteer: a secret key made once and kept in localStorage (the
// master counts this browser's credit under a hash of it: mlitb.master.project.credit),
// and an optional display name. The key never leaves this browser except in the join
// message and the X-Volunteer-Key header of "your contribution" (same origin).
const KEY = "mlitb.volunteer.key";
const NAME = "mlitb.volunteer.name";
export const NAME_CHARS = 40; // the master cuts a name to this too

function base64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The key (32 url-safe characters), made on first use; "" where storage is refused. */
export function volunteerKey() {
  try {
    let key = localStorage.getItem(KEY) || "";
    if (!/^[A-Za-z0-9_-]{16,100}$/.test(key)) {
      key = base64url(crypto.getRandomValues(new Uint8Array(24)));
      localStorage.setItem(KEY, key);
    }
    return key;
  } catch (e) {
    return ""; // private mode without storage: a volunteer of this page only
  }
}

export function displayName() {
  try { return (localStorage.getItem(NAME) || "").slice(0, NAME_CHARS); } catch (e) { return ""; }
}

export function setDisplayName(name) {
  const clean = String(name || "").replace(/\s+/g, " ").trim().slice(0, NAME_CHARS);
  try { if (clean) localStorage.setItem(NAME, clean); else localStorage.removeItem(NAME); } catch (e) { /* not kept */ }
  return clean;
}

/** This volunteer's row in `project` (the master's /credit `you`), or null. */
export async function myCredit(project, joinKey = "") {
  const key = volunteerKey();
  const headers = { ...(key ? { "X-Volunteer-Key": key } : {}), ...(joinKey ? { "X-Join-Key": joinKey } : {}) };
  const resp = await fetch(`/api/projects/${encodeURIComponent(project)}/credit`, { headers });
  if (!resp.ok) return null;
  return resp.json();
}

const CORES = "mlitb.volunteer.cores";

/** The cores this device has (what the browser says; 2 when it does not). */
export function coresHere() {
  return Math.max(1, Math.floor(Number(navigator.hardwareConcurrency) || 2));
}

/** The most threads a volunteer can give: every logical core (the worker lifts TF.js
 * wasm's own cap of half of them: worker/worker.js). */
export function coresUsable() {
  return coresHere();
}

/** The cores the volunteer gives to training: its choice (kept), else half of them. */
export function coresOffered() {
  let n = 0;
  try { n = Math.floor(Number(localStorage.getItem(CORES)) || 0); } catch (e) { /* not kept */ }
  return Math.min(coresUsable(), n > 0 ? n : Math.max(1, Math.floor(coresHere() / 2)));
}

export function setCoresOffered(n) {
  const clean = Math.min(coresUsable(), Math.max(1, Math.floor(Number(n) || 1)));
  try { localStorage.setItem(CORES, String(clean)); } catch (e) { /* not kept */ }
  return clean;
}

const BACKENDS = "mlitb.device.backends"; // spec key -> {chosen, at}: this device's fastest per model
const REMEMBER_MS = 7 * 86400 * 1000; // then measured again (a new browser or driver may change it)

/** What this device measured fastest per model (for the worker's first choice). */
export function rememberedBackends() {
  try {
    const all = JSON.parse(localStorage.getItem(BACKENDS) || "{}");
    return Object.fromEntries(Object.entries(all).filter(([, v]) => v && Date.now() - v.at < REMEMBER_MS));
  } catch (e) { return {}; }
}

/** Keep a worker's backend check (status.backendCheck) for its model (status.specKey). */
export function rememberBackend(status) {
  const c = status && status.backendCheck;
  if (!c || !status.specKey || !c.chosen || c.why === "the check failed") return;
  try {
    const all = rememberedBackends();
    if (all[status.specKey] && all[status.specKey].chosen === c.chosen) return;
    all[status.specKey] = { chosen: c.chosen, at: Date.now() };
    const newest = Object.entries(all).sort((a, b) => b[1].at - a[1].at).slice(0, 20);
    localStorage.setItem(BACKENDS, JSON.stringify(Object.fromEntries(newest)));
  } catch (e) { /* not kept */ }
}
