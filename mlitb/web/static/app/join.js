// The volunteer page (URL/join/PROJECT): starts a trainer at once and shows what the
// project is, how it is doing (the master's test error), and what this device adds (its
// vectors, its share of the project's power). The paper's courtesy to phones: an option
// to compute only while charging (where the Battery Status API exists) and to pause
// while the tab is hidden (on by default). Pausing leaves the project (its data goes
// back to the pool at once); resuming joins again. Closing the tab leaves cleanly.
import { showNotice } from "./notices.js";
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
    name: "volunteer",
    onStatus: (s) => {
      mine = s;
      $("state").textContent = s.state;
      $("backend").textContent = s.backend || "-";
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
decide();
refresh();
setInterval(refresh, 3000);
