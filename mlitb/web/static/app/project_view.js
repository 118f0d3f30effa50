// A project: controls (owner), data upload, workers in this page (trainer / tracker),
// live charts, the volunteer link with a QR code, and the tracker's classify panel.
import { api, banner, dataTokenField, downloadLink, el, fmt, joinKeys, tokens, upload } from "./api.js";
import { startWorker, wsUrl } from "./workers.js";
import { chart } from "./charts.js";
import { trackerPanel } from "./tracker_panel.js";
import { closurePanel } from "./closure_panel.js";
import { whoAmI } from "./signin_view.js";

export async function projectView(root, name) {
  joinKeys.fromAddress(name); // a private project's key from the link, kept for later visits
  let p = await api("GET", `/api/projects/${encodeURIComponent(name)}`, undefined, name);
  const owner = Boolean(tokens.get(name));
  const handles = [];
  const logBox = el("pre", { class: "log", id: "log" });
  const log = (text, level = "info") => {
    logBox.textContent = (`${new Date().toLocaleTimeString()} ${level}: ${text}\n` + logBox.textContent).slice(0, 30000);
  };
  const summary = el("dl", { class: "facts", id: "summary" });
  const workersBody = el("tbody", { id: "your-workers" });
  const clientsBody = el("tbody", { id: "clients" });
  const contributorsBody = el("tbody", {});
  const expanded = new Set(); // relays whose clients are shown
  const bannedBody = el("tbody", { id: "banned-clients" });

  const control = (action, label, confirmText) => el("button", { id: `btn-${action}`, disabled: !owner, onclick: async () => {
    if (confirmText && !confirm(confirmText)) return;
    try {
      const out = await api(action === "delete" ? "DELETE" : "POST",
        `/api/projects/${encodeURIComponent(name)}${action === "delete" ? "" : "/" + action}`, action === "delete" ? undefined : {}, name);
      log(`${action} done`);
      if (action === "delete") { tokens.drop(name); location.hash = "#/"; }
      return out;
    } catch (e) { banner(e.message); log(e.message, "error"); }
  } }, label);

  // ---- add data: zip upload with a progress bar, then attach to this project
  const zipInput = el("input", { type: "file", id: "zip-input", accept: ".zip,application/zip" });
  const kind = el("select", { id: "zip-kind" }, el("option", { value: "train" }, "training set"), el("option", { value: "test" }, "test set"));
  const progress = el("progress", { id: "upload-progress", max: 1, value: 0 });
  const uploadBtn = el("button", { id: "btn-upload", disabled: !owner, onclick: async () => {
    const f = zipInput.files[0];
    if (!f) { banner("choose a zip file first (one folder per label)"); return; }
    const shape = p.input_shape.join("x");
    try {
      const r = await upload(`/data/datasets?shape=${shape}&name=${encodeURIComponent(f.name)}&kind=${kind.value}`,
        f, "application/zip", (x) => { progress.value = x; });
      log(`uploaded ${f.name}: dataset ${r.dataset}, ${r.items} items, labels ${Object.keys(r.labels).join(", ")}` +
        (r.skipped_count ? `, ${r.skipped_count} files skipped` : ""));
      for (const w of r.warnings) log(w, "warn");
      const att = await api("POST", `/api/projects/${encodeURIComponent(name)}/datasets`,
        kind.value === "train" ? { train: [r.dataset] } : { test: [r.dataset] }, name);
      for (const w of att.warnings) log(w, "warn");
      banner(`dataset ${r.dataset} added (${r.items} items)`, "ok");
    } catch (e) { banner(e.message); log(e.message, "error"); }
  } }, "Add data");

  // ---- hyperparameters (live)
  const hyperForm = el("div", { class: "toolbar", id: "hyper" });
  function renderHyper() {
    const keys = ["algorithm", "optimizer", "learning_rate", "inner_optimizer", "inner_learning_rate", "compression",
      "max_staleness", "l1_decay", "l2_decay", "iteration_time", "capacity", "batch_size", "browser_backend"];
    const words = new Set(["algorithm", "optimizer", "inner_optimizer", "compression", "browser_backend"]); // the rest are numbers
    hyperForm.replaceChildren(...keys.map((k) => el("label", {}, `${k} `, el("input", { "data-key": k, value: p.hyper[k], size: 8, disabled: !owner }))),
      el("button", { id: "btn-hyper", disabled: !owner, onclick: async () => {
        const changes = {};
        for (const input of hyperForm.querySelectorAll("input")) {
          const v = input.value.trim(), k = input.dataset.key;
          if (String(p.hyper[k]) !== v) changes[k] = words.has(k) ? v : Number(v);
        }
        try { const out = await api("PATCH", `/api/projects/${encodeURIComponent(name)}/hyper`, changes, name); p.hyper = out.hyper; log(`hyperparameters: ${JSON.stringify(changes)}`); }
        catch (e) { banner(e.message); }
      } }, "Apply"));
  }

  // ---- workers in this page
  const backend = el("select", { id: "worker-backend" }, ["auto", "webgpu", "webgl", "wasm", "cpu"].map((b) => el("option", { value: b }, b)));
  const charts = {
    error: chart("test error", "error", { log: true }), loss: chart("train loss", "loss", { log: true }),
    power: chart("power", "vectors/s"), lag: chart("latency", "ms"),
  };
  // a dp project: the privacy budget spent, beside the error (the summary says what is left)
  const privacy = chart(`privacy: epsilon spent${p.dp_epsilon != null ? ` (budget ${p.dp_epsilon})` : ""}`, "epsilon");
  privacy.node.id = "privacy-chart";
  if (!p.dp || p.dp === "off") privacy.node.hidden = true;
  // a device project without a test set has no test error: say why where it would be
  const noTest = p.data_source === "device" && !(p.datasets || []).some((d) => d.role === "test");
  const noTestNote = noTest ? el("p", { class: "muted", id: "no-test-error" }, "No test error: this project's data stays on "
    + "its volunteers' devices and it has no test set on the data server (attach one to see a test error); "
    + (p.dp && p.dp !== "off" ? "the train loss is not shown either: under dp it would say, unnoised, how the round's devices did."
      : "the train loss is the clients' own, aggregated.")) : "";
  const trackerPoints = chart("this page's tracker: test error", "error");
  let tracker = null;
  const panel = trackerPanel(name, () => tracker, () => p, log, owner);
  function addWorker(role) {
    const h = startWorker({ project: name, role, backend: backend.value, name: `page-${role}`,
      onLog: (m) => log(`${role} ${h.id}: ${m.text}`, m.level),
      onTest: (m) => { trackerPoints.push(m.iteration, m.error); panel.refresh(m); } });
    handles.push(h);
    if (role === "tracker") tracker = h;
    log(`${role} ${h.id} started`);
  }

  const qr = el("div", { id: "qr" });
  const key = joinKeys.get(name); // a private project's volunteers need its key: it goes in the link
  // the address volunteers use (`mlitb serve --public-url`, or the LAN address with --host
  // 0.0.0.0): a phone that scans the QR code cannot reach 127.0.0.1
  const info = await api("GET", "/api").catch(() => ({}));
  const base = (info.public_url || location.origin).replace(/\/$/, "");
  // the key in the fragment: browsers never send it, so no server or proxy logs it
  const joinUrl = `${base}/join/${encodeURIComponent(name)}${key ? `#key=${encodeURIComponent(key)}` : ""}`;
  const local = /^https?:\/\/(127\.|localhost|\[::1\])/.test(joinUrl);
  try {
    const q = qrcode(0, "M"); q.addData(joinUrl); q.make();
    qr.innerHTML = q.createSvgTag({ cellSize: 3, margin: 2 });
  } catch (e) { qr.textContent = ""; }

  const downloads = el("span", {},
    downloadLink({ id: "download-convnetjs" }, `/api/projects/${encodeURIComponent(name)}/model?format=convnetjs`, name, p.join_key, "ConvNetJS JSON"), " · ",
    downloadLink({ id: "download-mlitb" }, `/api/projects/${encodeURIComponent(name)}/model?format=mlitb`, name, p.join_key, "mlitb JSON"));

  root.append(
    el("h1", {}, `Project ${name}`),
    whoAmI(name, () => { location.reload(); }),
    el("div", { class: "toolbar" },
      control("start", "(Re)start"), control("pause", "Pause"), control("restart", "Restart", "Re-initialise all parameters?"),
      control("reboot", "Reboot", "Drop all clients (they rejoin)?"), control("delete", "Delete", `Delete project ${name}?`)),
    summary,
    el("h2", {}, "Add worker"),
    el("div", { class: "toolbar" }, el("button", { id: "btn-add-trainer", onclick: () => addWorker("trainer") }, "Add trainer"),
      el("button", { id: "btn-add-tracker", onclick: () => addWorker("tracker") }, "Add tracker"), el("label", {}, "backend ", backend),
      el("button", { id: "btn-leave", onclick: () => { handles.forEach((h) => h.stop()); handles.length = 0; tracker = null; log("left"); } }, "Leave")),
    el("h2", {}, "Your workers"),
    el("table", {}, el("thead", {}, el("tr", {}, ["worker", "task", "status", "backend", "data allocated", "cached", "vectors/s", "vectors", "iteration"].map((t) => el("th", {}, t)))), workersBody),
    el("h2", {}, "Charts"),
    noTestNote,
    el("div", { class: "charts" }, charts.error.node, privacy.node, charts.loss.node, charts.power.node, charts.lag.node, trackerPoints.node),
    el("h2", {}, "Tracker"), panel.node,
    el("h2", {}, "Add data"),
    el("div", { class: "toolbar" }, zipInput, kind, dataTokenField(), uploadBtn, progress),
    el("h2", {}, "Hyperparameters"), hyperForm,
    el("h2", {}, "Volunteers"),
    el("p", {}, "Anyone who opens this link trains at once: ", el("a", { href: joinUrl, id: "join-link" }, joinUrl)), qr,
    local ? el("p", { class: "muted", id: "lan-hint" }, "This link only works on this machine. For phones on the same network, "
      + "start the server with `make run HOST=0.0.0.0` (or `mlitb serve --host 0.0.0.0`, `--public-url URL`); "
      + "the camera needs https: add `--tls`.") : "",
    el("h3", {}, "Contributors"),
    el("p", { class: "hint", id: "contributors-note" }, "Credit: the applied work of each volunteer in billions of "
      + "multiply-adds (GMAC), from the master's own counts; a ban forfeits it."),
    el("table", { id: "contributors" }, el("thead", {}, el("tr", {}, ["rank", "name", "volunteer", "credit (GMAC)", "share",
      "vectors", "backend", "first seen", "last seen"].map((t) => el("th", {}, t)))), contributorsBody),
    el("h2", {}, "All clients"),
    el("table", {}, el("thead", {}, el("tr", {}, ["id", "name", "kind", "role", "backend (threads)", "vectors/s", "vectors", "allocated", "cached", "lag ms", "in", "out", "computing", "refused / clipped / verified", "test error (its own)"].map((t) => el("th", {}, t)))), clientsBody),
    el("h3", {}, "Banned"), el("p", { class: "hint" }, "Clients whose results failed verification by recomputation (docs/security.md)."),
    el("table", { id: "banned" }, el("thead", {}, el("tr", {}, ["id", "name", "kind", "address", "iteration", "reason"].map((t) => el("th", {}, t)))), bannedBody),
    el("h2", {}, "Model"), el("p", {}, "Download: ", downloads), closurePanel(name, owner, log, p.join_key).node,
    el("h2", {}, "Log"), logBox,
  );
  renderHyper();

  function bytes(n) {
    if (n == null) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  function renderSummary() {
    const facts = [["state", p.state], ["iteration", p.iteration], ["workers", `${p.workers} (${fmt(p.workers_assigned)} assigned)`],
      ["trackers", p.trackers],
      // a language model: its validation loss per character, and the share of next characters missed
      ...(p.spec && p.spec[p.spec.length - 1].layer_type === "seqsoftmax"
        ? [["validation loss", p.test_loss == null ? "-" : `${fmt(p.test_loss)} nats per token`], ["next-token error", fmt(p.test_error)],
          ["vocabulary", (p.labels || []).join("").replace(/\n/g, "\u21b5")]]
        : [["test error", fmt(p.test_error)]]),
      ["train loss", fmt(p.train_loss)],
      ["data", p.data_source === "device"
        ? `on the devices: ${fmt(p.clients.filter((c) => c.role === "trainer").reduce((n, c) => n + (c.data_cached || 0), 0))} items reported, none on the data server`
        : `${fmt(p.data_size)} (${fmt(p.data_unallocated)} unallocated)`], ["power", `${fmt(p.power)} vectors/s`],
      ["vectors processed", fmt(p.vectors_processed)],
      ...(p.spec && p.spec[p.spec.length - 1].layer_type === "seqsoftmax" ? [] : [["labels", (p.labels || []).join(", ")]]),
      ["parameters", fmt(p.num_params)],
      ["algorithm", `${p.algorithm}, compression ${p.compression}`], ["traffic", `${bytes(p.bytes_in)} in, ${bytes(p.bytes_out)} out`],
      ["late results", `${fmt(p.stale)} applied, ${fmt(p.late)} discarded`],
      ["aggregation", p.aggregation || "-"],
      ["screened results", `${fmt(p.rejected)} refused, ${fmt(p.clipped || 0)} clipped, ${fmt(p.refused_steps || 0)} steps refused`],
      ["verification", p.verify === false ? "off" : `${fmt(p.audits_passed || 0)} audits passed, ${fmt(p.audits_failed || 0)} failed, ${fmt((p.banned || []).length)} banned`]];
    if (p.dp && p.dp !== "off") {
      const left = p.dp_epsilon == null ? "no budget set" : `${fmt(Math.max(0, p.dp_epsilon - p.epsilon))} left of ${fmt(p.dp_epsilon)}`;
      facts.push(["privacy", `epsilon ${fmt(p.epsilon)} spent, ${left} (delta ${p.dp_delta}), ${fmt(p.rounds)} rounds; `
        + `noise z ${fmt(p.dp_noise)}, clip ${fmt(p.dp_clip)}, sample rate ${p.dp_sample_rate}; ${p.accountant}`]);
    }
    summary.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k),
      el("dd", { "data-key": k.replace(/ /g, "-"), class: k === "state" ? `state-${v}` : "" }, String(v))]));
    // a relay's row opens to the clients under it (as the relay reports them)
    const relayName = (c) => el("span", {}, el("button", { class: "expand", "data-relay": c.id, title: "the clients under this relay",
      onclick: () => { expanded.has(c.id) ? expanded.delete(c.id) : expanded.add(c.id); renderSummary(); } },
      `${expanded.has(c.id) ? "▾" : "▸"} ${fmt(c.relay_clients || 0)}`), " ", c.name,
      ...(c.relay_url ? [" ", el("a", { href: `${c.relay_url}/join/${encodeURIComponent(name)}`, class: "relay-link",
        title: "the volunteer page at this relay", rel: "noopener" }, "volunteer link")] : []));
    clientsBody.replaceChildren(...p.clients.flatMap((c) => [el("tr", { "data-kind": c.kind, "data-role": c.role },
      [c.id, c.kind === "relay" ? relayName(c) : c.name, c.kind, c.role, c.threads ? `${c.backend} (${c.threads})` : c.backend, fmt(c.vectors_per_s), fmt(c.vectors_processed), fmt(c.data_allocated), fmt(c.data_cached), fmt(c.lag_ms),
        bytes(c.bytes_in), bytes(c.bytes_out), c.computing == null ? "-" : `${Math.round(100 * c.computing)} %`,
        `${fmt(c.rejected || 0)} / ${fmt(c.clipped || 0)} / ${fmt(c.verified || 0)}${c.probation ? " (probation)" : ""}${c.suspect ? " (suspect)" : ""}`,
        c.test_error == null ? "-" : fmt(c.test_error)]
        .map((v) => el("td", {}, v))),
      ...(c.kind === "relay" && expanded.has(c.id) ? (c.children || []).map((k) => el("tr", { class: "child-row", "data-parent": c.id },
        ["", `└ ${k.name}`, k.kind, "trainer", k.backend, fmt(k.vectors_per_s), "-", "-", fmt(k.cached), "-", "-", "-", "-", "-",
          k.clients ? `${fmt(k.clients)} clients under it` : "-"].map((v) => el("td", {}, v)))) : [])]));
    bannedBody.replaceChildren(...(p.banned || []).slice().reverse().map((b) => el("tr", { class: "banned" },
      [b.id, b.name || "-", b.kind || "-", b.address || "-", fmt(b.iteration), b.reason].map((v) => el("td", {}, v)))));
    workersBody.replaceChildren(...handles.map((h) => {
      const s = h.status;
      return el("tr", { "data-role": h.role }, [h.id, h.role, s.state, s.backend || "-", fmt(s.allocated), fmt(s.cached), fmt(s.vectorsPerS), fmt(s.vectorsProcessed), fmt(s.iteration)].map((v) => el("td", {}, v)));
    }));
  }
  function addRow(r) {
    if (!r) return;
    charts.loss.push(r.iteration, r.train_loss); charts.power.push(r.iteration, r.power);
    charts.lag.push(r.iteration, r.lag_ms_mean);
    if (r.test_error !== null && r.test_error !== undefined) charts.error.push(r.iteration, r.test_error);
    if (r.epsilon !== undefined) privacy.push(r.iteration, r.epsilon);
  }
  const history = await api("GET", `/api/projects/${encodeURIComponent(name)}/metrics`, undefined, name);
  history.rows.forEach(addRow);
  renderSummary();

  // live updates: the dashboard stream (one update per iteration), with reconnect
  let stream = null, closed = false, retry = 1000, lost = false;
  function openStream() {
    // no key or token in the socket's URL: they go in its first message (docs/protocol.md)
    stream = new WebSocket(wsUrl(`/api/projects/${encodeURIComponent(name)}/stream`));
    stream.onmessage = (e) => {
      const m = JSON.parse(e.data);
      Object.assign(p, m.summary);
      addRow(m.row);
      document.getElementById("conn").textContent = "live";
      retry = 1000;
    };
    stream.onclose = (e) => {
      if (closed) return;
      if (e.code === 4410 || e.code === 4404) { banner(`project ${name} is gone (${e.reason})`); return; }
      if (e.code === 4401 || e.code === 4403) { banner(`the master refused this page's live updates: ${e.reason}`); return; }
      document.getElementById("conn").textContent = "reconnecting...";
      banner("lost the connection to the master; reconnecting automatically");
      lost = true;
      setTimeout(() => { if (!closed) { openStream(); } }, retry);
      retry = Math.min(retry * 2, 15000);
    };
    stream.onopen = () => {
      stream.send(joinKeys.authMessage(name));
      if (lost) banner(""); lost = false; // keeps other messages (warnings)
    };
  }
  openStream();
  const timer = setInterval(async () => {
    try { p = { ...p, ...(await api("GET", `/api/projects/${encodeURIComponent(name)}`, undefined, name)) }; } catch (e) { /* the stream reports */ }
    renderSummary();
    panel.refresh();
  }, 1000);
  // contributors: the project's credit table (names are text, never markup: el() sets textContent)
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
  async function renderCredit() {
    try {
      const c = await api("GET", `/api/projects/${encodeURIComponent(name)}/credit`, undefined, name);
      if (!c.shown) { document.getElementById("contributors-note").textContent = `${fmt(c.volunteers)} volunteers: a dp project's contributors are for its owner to see.`; }
      contributorsBody.replaceChildren(...c.rows.slice(0, 200).map((r) => el("tr", { class: r.forfeited ? "banned" : "" },
        [r.rank, r.name || "-", r.volunteer, r.forfeited ? `forfeited (${r.forfeited})` : r.credit.toFixed(3), `${(100 * r.share).toFixed(1)} %`,
          fmt(r.vectors), r.threads ? `${r.backend || "-"} (${r.threads})` : (r.backend || "-"), when(r.first_seen), when(r.last_seen)]
          .map((v) => el("td", {}, String(v))))));
    } catch (e) { /* the stream reports a lost master */ }
  }
  renderCredit();
  const creditTimer = setInterval(renderCredit, 5000);
  const leave = () => handles.forEach((h) => h.stop());
  addEventListener("pagehide", leave);
  window.mlitbPage = { handles, charts, privacy, trackerPoints, project: () => p };
  return () => { closed = true; clearInterval(timer); clearInterval(creditTimer); if (stream) stream.close(); leave(); removeEventListener("pagehide", leave); };
}
