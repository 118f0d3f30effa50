// New project: a layer editor (add, remove, reorder; every field with its default) with
// live shapes and parameter counts from the master's own rules (POST /api/spec/check),
// or a model file (ConvNetJS JSON, MLitB JSON, mlitb format) with "drop last layer",
// or a research closure (.mlitb) resumed as a new project (closure_import.js). Data: pick
// datasets on the master's data server or upload training and test zips right here (with
// progress); the labels come from the training set. Errors show next to what caused them.
import { api, banner, bannerAfterRoute, dataTokenField, el, fmt, tokens, upload } from "./api.js";
import { closureForm, isClosureFile } from "./closure_import.js";

const ACTIVATIONS = ["", "relu", "gelu", "sigmoid", "tanh", "maxout"];
export const LAYER_FIELDS = {
  input: { out_sx: 28, out_sy: 28, out_depth: 1 },
  conv: { sx: 5, filters: 8, stride: 1, pad: 2, activation: "relu" },
  pool: { sx: 2, stride: 2, pad: 0 },
  fc: { num_neurons: 10, activation: "", drop_prob: "" },
  relu: {}, sigmoid: {}, tanh: {},
  maxout: { group_size: 2 },
  dropout: { drop_prob: 0.5 },
  lrn: { k: 1, n: 5, alpha: 0.0001, beta: 0.75 },
  softmax: { num_classes: 10 },
  svm: { num_classes: 10 },
  regression: { num_neurons: 1 },
  // the layers of today's models (docs/model.md); a residual block's f as JSON definitions
  gelu: {}, globalavgpool: {},
  batchnorm: { eps: "", momentum: "" },
  layernorm: { eps: "" },
  residual: { layers: '[{"type": "conv", "sx": 3, "pad": 1, "filters": 8}, {"type": "batchnorm", "activation": "relu"}]' },
  embedding: { vocab: 65, dim: 64 },
  posembedding: {},
  attention: { heads: 4, causal: true },
  transformer: { heads: 4, causal: true, mlp: 4 },
  seqsoftmax: { num_classes: 65 },
};
const PAPER_NET = [
  { type: "input", out_sx: 28, out_sy: 28, out_depth: 1 },
  { type: "conv", sx: 5, filters: 8, stride: 1, pad: 2, activation: "relu" },
  { type: "pool", sx: 2, stride: 2, pad: 0 },
  { type: "conv", sx: 5, filters: 16, stride: 1, pad: 2, activation: "relu" },
  { type: "pool", sx: 3, stride: 3, pad: 0 },
  { type: "softmax", num_classes: 10 },
];

// a field's value as the spec language takes it: text for an activation, a boolean for
// `causal`, JSON definitions for a block's `layers` (kept as typed when it does not parse:
// the master's check then names it), a number otherwise
function fieldValue(k, v) {
  if (k === "activation") return v;
  if (k === "causal") return v === true || v === "true";
  if (k === "layers") {
    if (typeof v !== "string") return v;
    try { return JSON.parse(v); } catch (e) { return v; }
  }
  return Number(v);
}

function cleanDefs(layers) {
  return layers.map((l) => {
    const out = { type: l.type };
    for (const [k, v] of Object.entries(l)) {
      if (k === "type" || v === "" || v === null || v === undefined) continue;
      out[k] = fieldValue(k, v);
    }
    return out;
  });
}

// an example's definitions as the editor holds them (a block's layers as JSON text)
const editable = (defs) => defs.map((d) => (d.layers ? { ...d, layers: JSON.stringify(d.layers) } : { ...d }));

export async function newProjectView(root) {
  let layers = PAPER_NET.map((l) => ({ ...l }));
  let modelFile = null;
  const list = el("div", { id: "layers" });
  const expanded = el("div", { id: "expanded" });
  const status = el("p", { id: "spec-status" });
  const addType = el("select", { id: "add-type" }, Object.keys(LAYER_FIELDS).map((t) => el("option", { value: t }, t)));
  const fileInput = el("input", { type: "file", id: "model-file", accept: ".json,application/json,.mlitb,application/zip" });
  const dropLast = el("input", { type: "checkbox", id: "drop-last" });
  const name = el("input", { id: "name", value: "mnist", required: true });
  const labels = el("input", { id: "labels", placeholder: "from the training set", size: 40 });
  // the values until the master's defaults arrive (GET /api, below): the project defaults
  // T empty: the master picks it from the model's size (local_sgd: 4-30 s; the placeholder
  // shows this model's, from /api/spec/check); a typed value is sent as it is
  const T = el("input", { id: "iteration-time", type: "number", value: "", min: 1, max: 300, step: 0.5,
    placeholder: "from the model's size" });
  let roundTimes = {}; // algorithm -> T for the model in the editor (/api/spec/check)
  let modelDefaults = {}; // batch_size, inner_learning_rate for that model (/api/spec/check)
  const showAutoT = () => {
    const t = roundTimes[algorithm.value];
    T.placeholder = t === undefined ? "from the model's size" : `auto: ${t} s for this model`;
  };
  // local_sgd (inner Adam steps on each client, their ends averaged on the master) learns
  // fastest (benchmarks/learning_bench.py); sync_sgd is the paper's loop.
  const algorithm = el("select", { id: "algorithm" }, [["local_sgd", "local_sgd (local steps)"],
    ["sync_sgd", "sync_sgd (the paper's loop)"]].map(([v, t]) => el("option", { value: v }, t)));
  const optimizer = el("select", { id: "optimizer" }, ["", "adagrad", "adam", "sgd", "nesterov", "adadelta", "windowgrad"]
    .map((o) => el("option", { value: o }, o || "the algorithm's default")));
  const lr = el("input", { id: "learning-rate", type: "number", placeholder: "default", step: "any" });
  const innerLr = el("input", { id: "inner-learning-rate", type: "number", value: 0.002, step: "any" });
  const compression = el("select", { id: "compression" }, ["none", "float16", "int8"].map((o) => el("option", { value: o }, o)));
  // the TF.js backend volunteers' tabs compute with: each device's fastest correct one, or a pin
  const browserBackend = el("select", { id: "browser-backend", title: "auto: each device's fastest correct backend, measured when a tab joins" },
    ["auto", "wasm", "webgpu", "webgl", "cpu"].map((o) => el("option", { value: o }, o)));
  const l2 = el("input", { id: "l2-decay", type: "number", value: 0, step: "any" });
  const capacity = el("input", { id: "capacity", type: "number", placeholder: "what memory holds", min: 1 });
  // where the training data is, and client-level differential privacy (docs/security.md,
  // "Device data and differential privacy"): a device project has no training set here
  const dataSource = el("select", { id: "data-source" }, [["server", "uploaded to the data server"],
    ["device", "stays on each volunteer's device"]].map(([v, t]) => el("option", { value: v }, t)));
  const dp = el("select", { id: "dp" }, [["off", "off"], ["central", "central (DP-FedAvg, budgeted)"]]
    .map(([v, t]) => el("option", { value: v }, t)));
  const dpEpsilon = el("input", { id: "dp-epsilon", type: "number", value: 4, min: 0.01, step: "any" });
  const dpRounds = el("input", { id: "dp-rounds", type: "number", value: 200, min: 1, step: 1 });
  const dpRate = el("input", { id: "dp-sample-rate", type: "number", value: 0.05, min: 0.001, max: 1, step: "any" });
  const dpFields = el("div", { class: "toolbar", id: "dp-fields", hidden: true },
    el("label", {}, "privacy budget epsilon ", dpEpsilon), el("label", {}, "over rounds ", dpRounds),
    el("label", {}, "share of devices per round ", dpRate),
    el("span", { class: "small muted" }, "delta 1e-5; the master calibrates the noise and stops the project ",
      "when the budget is spent (plain SGD steps on each device, server momentum: the defaults of a private project)"));
  const dataNote = el("span", { id: "data-source-note", class: "small muted" });
  const showData = () => {
    const device = dataSource.value === "device";
    train.disabled = device;
    dataNote.textContent = device ? "no training set: each volunteer picks their own data on the join page; type the labels" : "";
    dpFields.hidden = dp.value === "off";
    if (dp.value !== "off") algorithm.value = "local_sgd"; // dp clips and noises parameter changes
  };
  const edited = new Set(); // fields the owner typed in: a default does not overwrite them
  dataSource.addEventListener("change", showData);
  dp.addEventListener("change", showData);
  const train = el("select", { id: "train-dataset" });
  const test = el("select", { id: "test-dataset" });
  const create = el("button", { class: "primary", id: "create" }, "Create project");
  const createMsg = el("span", { id: "create-message", class: "error" }); // next to the button
  const dataMsg = el("p", { id: "data-message", class: "muted" });
  let datasets = [];

  // zips uploaded here become datasets and are picked at once
  function zipUpload(kind, select) {
    const input = el("input", { type: "file", id: `${kind}-zip`, accept: ".zip,application/zip" });
    const bar = el("progress", { id: `${kind}-progress`, max: 1, value: 0, hidden: true });
    const msg = el("span", { id: `${kind}-upload-message`, class: "small" });
    input.addEventListener("change", async () => {
      const f = input.files[0];
      if (!f) return;
      const shape = (lastCheck && lastCheck.input_shape) ? lastCheck.input_shape.join("x") : "28x28x1";
      bar.hidden = false; bar.value = 0; msg.className = "small muted"; msg.textContent = `uploading ${f.name}...`;
      try {
        const r = await upload(`/data/datasets?shape=${shape}&name=${encodeURIComponent(f.name)}&kind=${kind}`,
          f, "application/zip", (x) => { bar.value = x; });
        // an ImageFolder zip (train/ and test/ folders) made both sets: pick both
        const parts = r.datasets || [r];
        for (const d of parts) {
          datasets.push({ dataset: d.dataset, name: d.name, kind: d.kind, items: d.items, shape_text: shape,
            label_names: Object.keys(d.labels) });
        }
        fillDatasets();
        for (const d of parts) (d.kind === "test" ? test : d.kind === "train" ? train : select).value = String(d.dataset);
        showLabels();
        msg.className = "small ok";
        msg.textContent = parts.map((d) => `${d.kind} set ${d.dataset}: ${fmt(d.items)} items`).join("; ")
          + (r.skipped_count ? `, ${r.skipped_count} files skipped` : "");
      } catch (e) { msg.className = "small error"; msg.textContent = e.message; }
      finally { bar.hidden = true; }
    });
    return el("span", { class: "upload" }, el("label", {}, `or upload a ${kind} zip `, input), bar, msg);
  }
  // a text (.txt, or a zip of them) becomes a training and a validation set of character
  // windows, for a language model (`mlitb data upload FILE --text`); the context is the
  // model's input length
  function textUpload() {
    const input = el("input", { type: "file", id: "text-file", accept: ".txt,text/plain,.zip,application/zip" });
    const msg = el("span", { id: "text-upload-message", class: "small" });
    input.addEventListener("change", async () => {
      const f = input.files[0];
      if (!f) return;
      const context = lastCheck && lastCheck.loss === "seqsoftmax" ? lastCheck.input_shape[1] : 64;
      msg.className = "small muted"; msg.textContent = `uploading ${f.name}...`;
      try {
        const zip = f.name.toLowerCase().endsWith(".zip");
        const r = await upload(`/data/datasets/text?context=${context}&name=${encodeURIComponent(f.name.replace(/\.[^.]*$/, ""))}`,
          f, zip ? "application/zip" : "text/plain", () => {});
        for (const d of r.datasets) {
          datasets.push({ dataset: d.dataset, name: d.name, kind: d.kind, items: d.items, shape_text: d.shape_text,
            label_names: d.vocab });
        }
        fillDatasets();
        train.value = String(r.split.train); test.value = String(r.split.test);
        showLabels();
        msg.className = "small ok";
        msg.textContent = `${fmt(r.characters)} characters, a vocabulary of ${r.vocab.length}: training set ${r.split.train} `
          + `(${fmt(r.datasets[0].items)} windows of ${context + 1}), validation set ${r.split.test} (${fmt(r.datasets[1].items)})`;
      } catch (e) { msg.className = "small error"; msg.textContent = e.message; }
    });
    return el("span", { class: "upload" }, el("label", {}, "or upload a text (a language model's) ", input), msg);
  }
  function fillDatasets() {
    const keep = [train.value, test.value];
    train.replaceChildren(el("option", { value: "" }, "none (add data later)"),
      ...datasets.filter((d) => d.kind === "train").map((d) => el("option", { value: d.dataset }, `${d.dataset}: ${d.name} (${d.items}, ${d.shape_text})`)));
    test.replaceChildren(el("option", { value: "" }, "none"),
      ...datasets.filter((d) => d.kind === "test").map((d) => el("option", { value: d.dataset }, `${d.dataset}: ${d.name} (${d.items})`)));
    [train.value, test.value] = keep;
  }
  function showLabels() { // the project's labels are the training set's, unless typed
    const d = datasets.find((x) => String(x.dataset) === train.value);
    labels.placeholder = d ? (d.label_names || []).join(", ") : "from the training set";
    dataMsg.textContent = d ? `labels from dataset ${d.dataset}: ${(d.label_names || []).join(", ")}` : "";
    // the classifier's outputs follow the labels (unless labels are typed or a model file is used)
    const last = layers[layers.length - 1];
    const n = d ? (d.label_names || []).length : 0;
    if (n >= 2 && !labels.value.trim() && !modelFile && last && "num_classes" in last && Number(last.num_classes) !== n) {
      last.num_classes = n;
      render(); changed();
      dataMsg.textContent += ` (the last layer now has ${n} outputs)`;
    }
  }
  train.addEventListener("change", showLabels);

  let timer = null, checks = 0, lastCheck = null;
  const spec = () => (modelFile ? modelFile : { layer_defs: cleanDefs(layers) });
  async function check() {
    const mine = ++checks; // answers can come back out of order: only the newest edit's counts
    try {
      const out = await fetch("/api/spec/check", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ spec: spec() }) }).then((r) => r.json());
      if (mine !== checks) return;
      lastCheck = out.ok ? out : null;
      if (!out.ok) {
        status.className = "error";
        status.textContent = out.detail;
        expanded.replaceChildren();
        return;
      }
      status.className = "ok";
      roundTimes = out.round_time || {};
      showAutoT();
      // this model's own inner lr (a language model's differs: config.model_defaults), unless typed
      modelDefaults = out.hyper_defaults || {};
      if (modelDefaults.inner_learning_rate !== undefined && !edited.has(innerLr)) {
        innerLr.value = modelDefaults.inner_learning_rate;
      }
      status.textContent = `${fmt(out.num_params)} parameters, input ${out.input_shape.join("x")}, ` +
        `${out.num_outputs} outputs (${out.loss})` + (out.browser_problems.length ? ` - ${out.browser_problems.join("; ")}` : "");
      expanded.replaceChildren(el("table", { class: "expanded" },
        el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "layer"), el("th", {}, "output (h x w x d)"), el("th", {}, "parameters"))),
        el("tbody", {}, out.layers.map((l) => el("tr", {}, el("td", {}, l.index), el("td", {}, l.type),
          el("td", {}, l.out_shape.join(" x ")), el("td", {}, fmt(l.params)))))));
    } catch (e) { status.textContent = e.message; }
  }
  const changed = () => { clearTimeout(timer); timer = setTimeout(check, 200); };

  function render() {
    list.replaceChildren(...layers.map((layer, i) => {
      const fields = Object.keys(LAYER_FIELDS[layer.type]).map((k) => {
        const input = k === "activation"
          ? el("select", { "data-field": k }, ACTIVATIONS.map((a) => el("option", { value: a, selected: (layer[k] || "") === a }, a || "none")))
          : k === "causal"
            ? el("select", { "data-field": k }, ["true", "false"].map((a) => el("option", { value: a, selected: String(layer[k]) === a }, a)))
            : el("input", { "data-field": k, value: layer[k] ?? "", size: k === "layers" ? 60 : 6, placeholder: "default" });
        input.addEventListener("change", () => { layer[k] = input.value; changed(); });
        return el("label", {}, `${k} `, input);
      });
      const move = (d) => () => { const j = i + d; if (j < 0 || j >= layers.length) return; [layers[i], layers[j]] = [layers[j], layers[i]]; render(); changed(); };
      return el("div", { class: "layer", "data-index": i },
        el("strong", {}, `${i}. ${layer.type}`), ...fields,
        el("button", { onclick: move(-1), title: "up" }, "↑"), el("button", { onclick: move(1), title: "down" }, "↓"),
        el("button", { onclick: () => { layers.splice(i, 1); render(); changed(); }, title: "remove", class: "remove" }, "✕"));
    }));
  }

  // A closure replaces the whole form with its own compact one (closure_import.js).
  const closureSlot = el("div", { id: "closure-slot" });
  const fields = el("div", { class: "toolbar", id: "project-fields" }, el("label", {}, "name ", name), el("label", {}, "labels ", labels));
  const dropLastLabel = el("label", {}, dropLast, " drop last layer (transfer learning)");
  const editor = el("div", { id: "editor" });
  const showEditor = (on) => { for (const n of [fields, dropLastLabel, editor]) n.hidden = !on; };

  fileInput.addEventListener("change", async () => {
    const f = fileInput.files[0];
    closureSlot.replaceChildren();
    showEditor(true);
    if (!f) { modelFile = null; changed(); return; }
    if (await isClosureFile(f)) {
      if (modelFile) { modelFile = null; render(); }
      showEditor(false);
      closureSlot.replaceChildren(closureForm(f));
      return;
    }
    try { modelFile = JSON.parse(await f.text()); list.replaceChildren(el("p", {}, `model file ${f.name}`)); changed(); }
    catch (e) { banner(`${f.name} is not JSON: ${e.message}`); }
  });

  create.addEventListener("click", async () => {
    const device = dataSource.value === "device", priv = dp.value !== "off";
    const body = {
      name: name.value.trim(), spec: spec(), start: true, drop_last_layer: Boolean(modelFile && dropLast.checked),
      hyper: { algorithm: algorithm.value, l2_decay: Number(l2.value),
        ...(T.value !== "" ? { iteration_time: Number(T.value) } : {}),
        compression: compression.value,
        ...(browserBackend.value !== "auto" ? { browser_backend: browserBackend.value } : {}),
        // a private project keeps its own inner defaults unless the owner typed one
        ...(algorithm.value === "local_sgd" && (!priv || edited.has(innerLr)) ? { inner_learning_rate: Number(innerLr.value) } : {}),
        ...(device ? { data_source: "device" } : {}),
        ...(priv ? { dp: dp.value, dp_epsilon: Number(dpEpsilon.value), dp_rounds: Number(dpRounds.value),
          dp_sample_rate: Number(dpRate.value) } : {}),
        ...(optimizer.value ? { optimizer: optimizer.value } : {}),
        ...(lr.value ? { learning_rate: Number(lr.value) } : {}),
        ...(capacity.value ? { capacity: Number(capacity.value) } : {}) },
      train: train.value && !device ? [Number(train.value)] : [], test: test.value ? [Number(test.value)] : [],
    };
    if (labels.value.trim()) body.labels = labels.value.split(",").map((s) => s.trim()).filter(Boolean);
    createMsg.textContent = "";
    if (!body.train.length && !body.labels && !(device && body.test.length)) {
      createMsg.textContent = "without a training set, type the labels (comma-separated), or pick or upload a training set";
      labels.focus();
      return;
    }
    try {
      const out = await api("POST", "/api/projects", body);
      tokens.set(out.project.name, out.owner_token);
      if (out.warnings.length) bannerAfterRoute(out.warnings.join("; "), "ok");
      location.hash = `#/p/${encodeURIComponent(out.project.name)}`;
    } catch (e) { createMsg.textContent = e.message; }
  });

  datasets = await api("GET", "/data/datasets").catch(() => []);
  fillDatasets();

  // start from a built-in example (GET /api/examples: mnist, fashion, charlm)
  const examples = await api("GET", "/api/examples").catch(() => []);
  const exampleSelect = el("select", { id: "example" }, el("option", { value: "" }, "the paper's MNIST net"),
    ...examples.map((x) => el("option", { value: x.name, title: x.description }, x.name)));
  exampleSelect.style.maxWidth = "100%";
  exampleSelect.addEventListener("change", () => {
    const x = examples.find((e) => e.name === exampleSelect.value);
    layers = editable(x ? x.layer_defs : PAPER_NET);
    if (x && name.value === "mnist") name.value = x.name;
    render(); changed();
  });
  editor.append(
    el("div", { class: "toolbar" }, el("label", {}, "start from ", exampleSelect)),
    list,
    el("div", { class: "toolbar" }, addType, el("button", { id: "add-layer", onclick: () => {
      const t = addType.value; const L = { type: t, ...LAYER_FIELDS[t] };
      layers.splice(Math.max(layers.length - 1, 1), 0, L); render(); changed();
    } }, "Add layer")),
    status, expanded,
    el("h2", {}, "Data and hyperparameters"),
    el("div", { class: "toolbar" }, el("label", {}, "training data ", dataSource), dataNote),
    el("div", { class: "toolbar" }, el("label", {}, "training set ", train), zipUpload("train", train)),
    el("div", { class: "toolbar" }, el("label", {}, "test set ", test), zipUpload("test", test)),
    el("div", { class: "toolbar" }, textUpload()),
    el("p", { class: "small muted" }, "Zips hold one folder per label; a zip with train/ and test/ folders of label folders fills both sets."),
    el("div", { class: "toolbar" }, dataTokenField("new-data-token")), dataMsg,
    el("div", { class: "toolbar" }, el("label", {}, "algorithm ", algorithm), el("label", {}, "iteration time T (s) ", T),
      el("label", {}, "master's optimizer ", optimizer), el("label", {}, "learning rate ", lr),
      el("label", {}, "inner learning rate ", innerLr), el("label", {}, "compression ", compression),
      el("label", {}, "browser backend ", browserBackend),
      el("label", {}, "l2 decay ", l2), el("label", {}, "capacity per client ", capacity)),
    el("div", { class: "toolbar" }, el("label", {}, "differential privacy ", dp)), dpFields,
    el("div", { class: "toolbar" }, create, createMsg),
  );
  root.append(
    el("h1", {}, "New project"),
    fields,
    el("h2", {}, "Model"),
    el("p", {}, el("label", {}, "load a model file or a research closure (.mlitb) ", fileInput), " ", dropLastLabel),
    closureSlot,
    editor,
  );
  render();
  // the master's defaults, so the page and `mlitb project create` start from the same ones
  const info = await api("GET", "/api").catch(() => ({}));
  const defaults = info.hyper_defaults || {};
  const filled = [[innerLr, "inner_learning_rate"], [l2, "l2_decay"], [dpRate, "dp_sample_rate"]];
  for (const [input, key] of filled) {
    if (defaults[key] !== undefined) input.value = defaults[key];
  }
  if (defaults.algorithm) algorithm.value = defaults.algorithm;
  if (defaults.compression) compression.value = defaults.compression;
  // a change of algorithm brings its own defaults into the fields the owner has not edited
  // (T stays empty: each algorithm's own for this model, shown as the placeholder)
  for (const [input] of [...filled, [T]]) input.addEventListener("input", () => edited.add(input));
  algorithm.addEventListener("change", () => {
    showAutoT();
    const own = { ...((info.hyper_by_algorithm || {})[algorithm.value] || {}), ...modelDefaults };
    for (const [input, key] of filled) if (!edited.has(input) && own[key] !== undefined) input.value = own[key];
  });
  create.dataset.defaults = "loaded"; // tests wait for this before reading the fields
  await check();
  return () => clearTimeout(timer);
}
