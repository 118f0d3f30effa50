// The volunteer page (URL/join/PROJECT): starts a trainer at once and shows what the
// project is, how it is doing (the master's test error), and what this device adds (its
// vectors, its share of the project's power). The paper's courtesy to phones: an option
// to compute only while charging (where the Battery Status API exists) and to pause
// while the tab is hidden (on by default). Pausing leaves the project (its data goes
// back to the pool at once); resuming joins again. Closing the tab leaves cleanly.
import * as DeviceData from "./device_data.js";
import { showNotice } from "./notices.js";
import { coresHere, coresOffered, coresUsable, displayName, myCredit, setCoresOffered, setDisplayName, volunteerKey } from "./volunteer.js";
import { startWorker } from "./workers.js";

const project = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const $ = (id) => document.getElementById(id);
$("project-name").textContent = project;
document.title = `mlitb: training ${project}`;

const params = new URLSearchParams(location.search);
// a private project's key: in the fragment (`#key=K`, never sent to a server, so in no
// access log), or `?key=K` in older links (the server's log redacts it)
const key = new URLSearchParams(location.hash.slice(1)).get("key") || params.get("key") || "";
$("dashboard-link").href = `/#/p/${encodeURIComponent(project)}${key ? `?key=${encodeURIComponent(key)}` : ""}`;

let handle = null;
let stoppedByUser = false;
let own = null; // this device's items for a device project (app/device_data.js), sent to each new worker
let asked = null; // what the worker asked for: {shape, labels}
let battery = null;
let mine = { vectorsPerS: 0 };

function start() {
  if (handle) return;
  handle = startWorker({
    project,
    role: "trainer",
    backend: params.get("backend") || "auto",
    tfjsflags: params.get("tfjsflags") || "",
    joinKey: key,
    name: displayName(),
    volunteer: volunteerKey(),
    threads: coresOffered(),
    onNeedData: async (m) => {
      asked = m; showDataSection();
      if (!(await onlyTab())) return;
      if (own) handle.deviceData(own); else restore();
    },
    onStatus: (s) => {
      mine = s;
      $("state").textContent = s.state;
      $("backend").textContent = s.backend || "-";
      $("threads").textContent = s.threads ? `${s.threads} thread${s.threads > 1 ? "s" : ""}`
        : (s.backend === "wasm" || s.backend === "cpu" ? "1 thread" : "-");
      $("backend-why").textContent = s.backendCheck ? s.backendCheck.text : "";
      showNotice($("notice"), s.notice);
      const refused = Boolean(s.notice && s.notice.code !== 4429); // 4429: full, it keeps trying
      $("headline").textContent = refused ? "This device is not training" : "This device is helping to train";
      $("computing-lead").hidden = refused;
      $("iteration").textContent = s.iteration;
      $("cached").textContent = `${s.cached} of ${s.allocated}`;
      $("speed").textContent = s.vectorsPerS ? `${Math.round(s.vectorsPerS).toLocaleString()} vectors/s` : "-";
      $("processed").textContent = s.vectorsProcessed.toLocaleString();
    },
    onLog: (m) => {
      const line = `${new Date().toLocaleTimeString()} ${m.level}: ${m.text}\n`;
      $("log").textContent = (line + $("log").textContent).slice(0, 20000);
    },
  });
  window.mlitbWorker = handle; // for tests and the curious
}

// ---------------------------------------------------------------- a device project's data
// One tab per browser trains a device project on this browser's data: two would count the
// same data twice in a round (docs/security.md). The lock is held while the page lives.
let lock = null;
async function onlyTab() {
  if (lock !== null || !navigator.locks) return lock !== false;
  lock = await new Promise((resolve) => {
    navigator.locks.request(`mlitb-device-data:${project}`, { ifAvailable: true }, (held) => {
      resolve(Boolean(held));
      return held ? new Promise(() => {}) : undefined; // kept until the page goes
    });
  });
  if (!lock) {
    $("data-summary").textContent = "Another tab of this browser already trains this project on your data: "
      + "this one does not (the same data twice would count twice).";
    for (const id of ["data-folder", "data-zip", "data-camera"]) $(id).disabled = true;
  }
  return lock;
}

function showDataSection() {
  $("device-data").hidden = false;
  if ($("data-photo-label").options.length !== asked.labels.length) {
    $("data-photo-label").replaceChildren(...asked.labels.map((l) => { const o = document.createElement("option"); o.value = o.textContent = l; return o; }));
  }
  $("data-labels").textContent = `This project's labels: ${asked.labels.join(", ")}; images are resized to `
    + `${asked.shape[1]}x${asked.shape[0]} (${asked.shape[2] === 1 ? "grey" : "colour"}).`;
}

function describe(d) {
  const counts = Object.entries(d.perLabel).map(([l, n]) => `${l}: ${n}`).join(", ");
  const unknown = Object.entries(d.unknown || {});
  $("data-summary").textContent = d.labels.length
    ? `${d.labels.length} items used (${counts}). They stay on this device.`
      + (unknown.length ? ` Left out, labels this project does not have: ${unknown.map(([l, n]) => `${l} (${n})`).join(", ")}.` : "")
    : "No usable item: this device does not train. " + (unknown.length
      ? `Label folders found: ${unknown.map(([l]) => l).join(", ")}; this project's are ${asked.labels.join(", ")}.`
      : "Expected images inside one folder per label.");
  $("data-skipped-box").hidden = !d.skippedCount;
  $("data-skipped-title").textContent = `${d.skippedCount} files skipped`;
  $("data-skipped").replaceChildren(...(d.skipped || []).map(([f, why]) => {
    const li = document.createElement("li"); li.textContent = `${f}: ${why}`; return li;
  }));
  $("data-forget").disabled = false;
}

async function use(entries) {
  if (!asked) return;
  $("data-summary").textContent = "reading...";
  const d = await DeviceData.readItems(entries, asked.labels, asked.shape,
    (i, n) => { if (i % 200 === 0 || i === n) $("data-summary").textContent = `reading ${i} of ${n} files...`; });
  own = { ...d, projectLabels: asked.labels };
  describe(own);
  if (d.labels.length) await DeviceData.keep(project, own).catch(() => {}); // for the next visit
  if (handle) handle.deviceData(own);
}

async function restore() {
  const d = await DeviceData.recall(project);
  // kept for this project name with the same input and the same labels in the same order
  // (the stored label indices follow that order), else not used
  if (!d || !asked || d.shape.join("x") !== asked.shape.join("x")
    || JSON.stringify(d.projectLabels) !== JSON.stringify(asked.labels)) return;
  own = d;
  describe(d);
  $("data-summary").textContent += " (kept in this browser from an earlier visit)";
  if (handle) handle.deviceData(d);
}

$("data-folder").addEventListener("change", (e) => use(Array.from(e.target.files)));
$("data-zip").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  try { await use(await DeviceData.zipMembers(file)); }
  catch (err) { $("data-summary").textContent = `${file.name}: ${err.message}`; }
});
// photos from the camera, labelled here: added to what this device holds (and kept)
$("data-camera").onclick = async () => {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    $("data-summary").textContent = "The camera needs https (or this machine's own address): start the master with --tls.";
    return;
  }
  try {
    $("data-video").srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    for (const id of ["data-video", "data-photo-label-box", "data-snap"]) $(id).hidden = false;
  } catch (err) { $("data-summary").textContent = `camera unavailable: ${err.message}`; }
};
$("data-snap").onclick = async () => {
  const video = $("data-video");
  if (!asked || !video.videoWidth) return;
  const px = await DeviceData.decode(await createImageBitmap(video), asked.shape);
  const label = $("data-photo-label").value;
  const prev = own || { pixels: new Uint8Array(0), labels: new Int32Array(0), perLabel: {}, skipped: [], skippedCount: 0, unknown: {}, shape: asked.shape };
  const pixels = new Uint8Array(prev.pixels.length + px.length);
  pixels.set(prev.pixels); pixels.set(px, prev.pixels.length);
  const labels = Int32Array.from([...prev.labels, asked.labels.indexOf(label)]);
  const perLabel = {};
  for (const l of asked.labels) { const n = (prev.perLabel[l] || 0) + (l === label ? 1 : 0); if (n) perLabel[l] = n; }
  own = { ...prev, pixels, labels, perLabel, projectLabels: asked.labels };
  describe(own);
  await DeviceData.keep(project, own).catch(() => {});
  if (handle) handle.deviceData(own);
};
$("data-forget").onclick = async () => {
  own = null;
  await DeviceData.forget(project).catch(() => {});
  if (handle) handle.deviceData(null);
  $("data-summary").textContent = "Forgotten: this browser keeps none of your images now. This device does not train until you give it data.";
  $("data-skipped-box").hidden = true;
  $("data-forget").disabled = true;
};

function pause(why) {
  if (handle) { handle.stop(); handle = null; }
  mine = { vectorsPerS: 0 };
  $("state").textContent = why;
}

/** Compute now? Not if the user stopped, the tab is hidden (and that option is on), or
 * the device runs on battery (and that option is on). */
function decide() {
  if (stoppedByUser) return pause("stopped");
  if ($("pause-hidden").checked && document.hidden) return pause("paused: this tab is hidden");
  if ($("only-charging").checked && battery && !battery.charging) return pause("paused: waiting for a charger");
  start();
}

$("stop").onclick = () => { stoppedByUser = !stoppedByUser; $("stop").textContent = stoppedByUser ? "Resume" : "Stop"; decide(); };
$("pause-hidden").addEventListener("change", decide);
$("only-charging").addEventListener("change", decide);
document.addEventListener("visibilitychange", decide);
addEventListener("pagehide", () => { if (handle) handle.stop(); });
if (navigator.getBattery) {
  navigator.getBattery().then((b) => {
    battery = b;
    $("charging-option").hidden = false;
    b.addEventListener("chargingchange", decide);
  }).catch(() => {});
}

// the project as the master sees it (its own test error, its power), every 3 s
async function refresh() {
  try {
    const resp = await fetch(`/api/projects/${encodeURIComponent(project)}`, { headers: key ? { "X-Join-Key": key } : {} });
    if (!resp.ok) return;
    const p = await resp.json();
    $("description").textContent = p.description || "";
    $("project-state").textContent = `${p.state}, iteration ${p.iteration}, ${p.workers} trainers`;
    $("project-error").textContent = p.test_error == null ? "not measured yet" : `${(100 * p.test_error).toFixed(2)} %`;
    $("project-power").textContent = `${Math.round(p.power || 0).toLocaleString()} vectors/s`;
    const share = p.power > 0 ? Math.min(1, (mine.vectorsPerS || 0) / p.power) : 0;
    $("share").textContent = `${(100 * share).toFixed(1)} % of the project's power`;
  } catch (e) { /* the worker's own log says when the master is unreachable */ }
}
// your contribution: this browser's row of the project's credit (the master's counts)
const pct = (x) => `${(100 * x).toFixed(2)} %`;
async function refreshCredit() {
  try {
    const c = await myCredit(project, key);
    if (!c) return;
    const you = c.you;
    $("credit-volunteers").textContent = c.volunteers;
    if (!you) { $("credit").textContent = "none yet: credit counts once the project applies this browser's work"; return; }
    $("credit").textContent = you.forfeited ? `forfeited (${you.forfeited})` : `${you.credit.toFixed(3)} GMAC (${you.vectors.toLocaleString()} vectors)`;
    $("credit-share").textContent = pct(you.share);
    $("credit-rank").textContent = you.rank;
    const then = you.error_at_join, now = c.test_error;
    $("credit-effect").textContent = now == null ? "the project's test error is not measured yet"
      : `test error ${then == null ? "not yet measured" : pct(then)} when you joined, ${pct(now)} now`;
  } catch (e) { /* shown again at the next refresh */ }
}
// cores: half of this device's by default, all of them at most; a change starts a new worker (wasm's thread pool
// is fixed when its backend starts). Threads need cross-origin isolation (the master's pages are).
$("cores-here").textContent = `${coresHere()} logical cores (half by default: the rest keep the device responsive)`
  + (self.crossOriginIsolated ? "" : "; this page is not cross-origin isolated: 1 thread");
$("cores").max = coresUsable();
$("cores").value = coresOffered();
$("cores").addEventListener("change", () => {
  $("cores").value = setCoresOffered($("cores").value);
  if (handle) { handle.stop(); handle = null; decide(); }
});
$("volunteer-name").value = displayName();
$("volunteer-name").addEventListener("change", () => {
  $("volunteer-name").value = setDisplayName($("volunteer-name").value);
  if (handle) { handle.stop(); handle = null; decide(); } // joins again with the new name
});
decide();
refresh();
refreshCredit();
setInterval(refresh, 3000);
setInterval(refreshCredit, 3000);
