// The volunteer page (URL/join/PROJECT): starts a trainer at once, shows what it does,
// and leaves cleanly when the tab closes.
import { startWorker } from "./workers.js";

const project = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const $ = (id) => document.getElementById(id);
$("project-name").textContent = project;
document.title = `mlitb: training ${project}`;

const params = new URLSearchParams(location.search);
const handle = startWorker({
  project,
  role: "trainer",
  backend: params.get("backend") || "auto",
  joinKey: params.get("key") || "",
  name: "volunteer",
  onStatus: (s) => {
    $("state").textContent = s.state;
    $("backend").textContent = s.backend || "-";
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
$("stop").onclick = () => { handle.stop(); $("state").textContent = "stopped"; $("stop").disabled = true; };
addEventListener("pagehide", () => handle.stop());
window.mlitbWorker = handle; // for tests and the curious
