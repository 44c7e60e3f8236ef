// The jobs UI's behaviour: plain JavaScript, no build step. Every value from the server is put on the
// page as text (textContent), never as HTML; every write sends the page's CSRF token.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": CSRF } };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(url, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: await response.text().catch(() => "") }; }
  return { ok: response.ok, status: response.status, data };
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

const fmt = (v, digits = 4) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));
const duration = (s) => (s === null || s === undefined ? "" : s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);
const progress = (r) => (r.step === null && r.total === null ? "" : `${r.step ?? 0} / ${r.total ?? "?"}`);

// --- charts: polylines in an SVG, five ticks on each axis, every point titled (the browser shows it on hover) ---
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];
const tick = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.001 && v !== 0) ? Number(v).toExponential(1) : fmt(v, 3));

function drawChart(svg, lines) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const ns = "http://www.w3.org/2000/svg";
  const points = lines.flatMap((l) => l.points);
  const add = (tag, attrs, text, parent) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    (parent || svg).appendChild(n);
    return n;
  };
  if (!points.length) { add("text", { x: 140, y: 110, fill: "#888" }, "no data yet"); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x1 === x0) { x0 -= 1; x1 += 1; }  // one step: the point sits in the middle, not on the axis
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-12) { const pad = Math.abs(y0) * 0.1 || 0.5; y0 -= pad; y1 += pad; }
  const X = (x) => 58 + ((x - x0) / (x1 - x0)) * 347, Y = (y) => 195 - ((y - y0) / (y1 - y0)) * 180;
  add("line", { x1: 58, y1: 195, x2: 405, y2: 195, stroke: "#999" });
  add("line", { x1: 58, y1: 15, x2: 58, y2: 195, stroke: "#999" });
  const steps = new Set();  // steps are whole numbers: a narrow range gets fewer ticks, never one twice
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4, xv = Math.round(x0 + ((x1 - x0) * i) / 4);
    add("line", { x1: 58, y1: Y(yv), x2: 405, y2: Y(yv), stroke: "#eee" });
    add("text", { x: 54, y: Y(yv) + 4, "font-size": 10, "text-anchor": "end", class: "y-tick" }, tick(yv));
    if (!steps.has(xv)) add("text", { x: X(xv), y: 210, "font-size": 10, "text-anchor": "middle", class: "x-tick" }, String(xv));
    steps.add(xv);
  }
  add("text", { x: 405, y: 220, "font-size": 10, "text-anchor": "end", fill: "#666" }, "step");
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = line.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.6, "data-series": line.name, "data-count": line.points.length });
    const dots = line.points.length < 40;
    line.points.forEach((p) => {
      const dot = add("circle", { cx: X(p[0]), cy: Y(p[1]), r: dots ? 2.4 : 3, fill: dots ? color : "transparent", class: "point" });
      add("title", {}, `${lines.length > 1 ? line.name + " · " : ""}step ${p[0]}: ${tick(p[1])}`, dot);
    });
    if (lines.length > 1) add("text", { x: 68, y: 28 + 13 * i, "font-size": 11, fill: color }, line.name);
  });
}

function drawSeries(byRun) {
  const names = Object.keys(byRun);
  drawChart(document.getElementById("loss-chart"), names.map((n) => ({ name: n, points: byRun[n].loss })));
  drawChart(document.getElementById("cer-chart"), names.map((n) => ({ name: n, points: byRun[n].cer.map((p) => [p[0], p[1]]) })));
  for (const [id, key] of [["lr-chart", "lr"], ["grad-norm-chart", "grad_norm"]]) {
    const svg = document.getElementById(id);
    if (svg) drawChart(svg, names.map((n) => ({ name: n, points: byRun[n][key] || [] })));
  }
}

// --- the runs list ------------------------------------------------------------------------------------------
function runsPage() {
  const body = document.querySelector("#runs tbody");
  const status = document.getElementById("filter-status"), name = document.getElementById("filter-name");
  const compare = document.getElementById("compare-selected");
  const chosen = new Set();
  compare.onclick = () => { location.href = "/compare?" + [...chosen].map((c) => "run=" + encodeURIComponent(c)).join("&"); };
  async function refresh() {
    const q = new URLSearchParams({ status: status.value, name: name.value });
    const { ok, data } = await api("GET", "/api/runs?" + q);
    if (!ok) return;
    body.replaceChildren(...data.map((r) => {
      const tr = el("tr", undefined, { "data-run": r.dir_name });
      const box = el("input", undefined, { type: "checkbox" });
      box.checked = chosen.has(r.dir_name);
      box.onchange = () => { box.checked ? chosen.add(r.dir_name) : chosen.delete(r.dir_name); compare.disabled = chosen.size < 2 || chosen.size > 4; };
      const link = el("a", r.dir_name, { href: "/runs/" + encodeURIComponent(r.dir_name) });
      const cells = [box, link, r.kind, el("span", r.status, { class: "status " + r.status }), progress(r), duration(r.eta_s),
        r.cer_before === null && r.cer_after === null ? "" : `${fmt(r.cer_before)} → ${fmt(r.cer_after)}`,
        (r.created_at || "").replace("T", " "), r.device || ""];
      for (const c of cells) { const td = el("td"); if (c instanceof Node) td.appendChild(c); else td.textContent = c; tr.appendChild(td); }
      return tr;
    }));
    document.getElementById("empty").hidden = data.length > 0;
    refreshQueue();
    refreshGpus();
  }
  async function refreshQueue() {  // the queue in start order, each job movable; Stop on its run page cancels it
    const { ok, data } = await api("GET", "/api/queue");
    const table = document.getElementById("queue");
    if (!ok || !table) return;
    table.hidden = data.length === 0;
    table.querySelector("tbody").replaceChildren(...data.map((q, i) => {
      const tr = el("tr", undefined, { "data-queued": q.run });
      tr.append(el("td", String(i + 1)), el("td"), el("td", q.kind), el("td", q.gpu === null ? "any" : `GPU ${q.gpu}`), el("td"));
      tr.children[1].appendChild(el("a", q.run, { href: "/runs/" + encodeURIComponent(q.run) }));
      for (const [to, label] of [["top", "⤒"], ["up", "↑"], ["down", "↓"]]) {
        const b = el("button", label, { "data-move": to, title: "move " + to });
        b.onclick = async () => { await api("POST", `/api/queue/${encodeURIComponent(q.run)}/move`, { to }); refreshQueue(); };
        tr.children[4].appendChild(b);
      }
      const cancel = el("button", "cancel", { "data-cancel": q.run });
      cancel.onclick = async () => { await api("POST", `/api/runs/${encodeURIComponent(q.run)}/stop`); refresh(); };
      tr.children[4].appendChild(cancel);
      return tr;
    }));
  }
  async function refreshGpus() {
    const table = document.getElementById("gpus");
    if (!table) return;
    const { ok, data } = await api("GET", "/api/gpus");
    if (!ok) return;
    table.querySelector("tbody").replaceChildren(...data.map((g) => {
      const tr = el("tr", undefined, { "data-gpu": g.index });
      for (const c of [`GPU ${g.index}`, g.name, g.utilization === null ? "-" : `${g.utilization}%`,
        `${g.memory_used_gib ?? "-"} / ${g.memory_total_gib ?? "-"} GiB`, g.job || "free"]) tr.appendChild(el("td", c));
      return tr;
    }));
  }
  status.onchange = refresh; name.oninput = refresh;
  refresh();
  setInterval(refresh, 2000);
}

// --- one run: the live log and curves over server-sent events; the buttons -----------------------------
function runPage(name) {
  const log = document.getElementById("log");
  const result = document.getElementById("action-result");
  const buttons = Object.fromEntries([...document.querySelectorAll("[data-action]")].map((b) => [b.dataset.action, b]));
  const path = "/runs/" + encodeURIComponent(name);
  let lastStatus = document.getElementById("status").textContent;
  async function refreshSections() {
    // What a finished run adds (links, samples, checkpoints, the export button), taken from the server's
    // own rendering of this page: the page itself is never reloaded.
    const html = await (await fetch(path)).text();
    const fresh = new DOMParser().parseFromString(html, "text/html");
    for (const id of ["links", "scores-section", "samples-section", "checkpoints-section"]) {
      const node = fresh.getElementById(id);
      if (node) document.getElementById(id).replaceWith(document.adoptNode(node));
    }
    buttons.export.disabled = fresh.querySelector('[data-action="export"]').disabled;
  }
  function show(r) {
    const badge = document.getElementById("status");
    badge.textContent = r.status; badge.className = "status " + r.status;
    document.getElementById("progress").textContent = progress(r) ? "step " + progress(r) : "";
    document.getElementById("eta").textContent = r.eta_s ? "ETA " + duration(r.eta_s) : "";
    document.getElementById("cer").textContent = r.cer_before === null && r.cer_after === null ? "" : `CER ${fmt(r.cer_before)} → ${fmt(r.cer_after)}`;
    const error = document.getElementById("error");
    error.textContent = r.error || ""; error.hidden = !r.error;
    const live = ["running", "starting", "queued"].includes(r.status);
    buttons.stop.disabled = !live;
    buttons.resume.disabled = live || r.status === "ok" || !["train", "notebook", "sweep"].includes(r.kind);
    buttons.delete.disabled = live;
    drawSeries({ [name]: r.series });
    if (r.status !== lastStatus) {
      lastStatus = r.status;
      refreshSections();
      setTimeout(refreshSections, 3000);  // the report is written just after the status
    }
  }
  const events = new EventSource(path + "/events");
  events.addEventListener("log", (e) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(e.data + "\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  events.addEventListener("run", (e) => show(JSON.parse(e.data)));
  async function act(action) {
    if (action === "delete" && !confirm(`Delete ${name} and everything in its directory?`)) return;
    result.textContent = action + "…";
    const { ok, data } = await api("POST", `/api/runs/${encodeURIComponent(name)}/${action}`, action === "export" ? exportBody("") : undefined);
    if (!ok) { result.textContent = (data && (data.error || data.detail)) || "refused"; return; }
    if (action === "delete") { location.href = "/"; return; }
    result.textContent = action === "stop" ? "stop sent: training saves a checkpoint, then stops"
      : action === "export" ? `export ${data.state}: ${data.out}` : `${action}: ${data.state}`;
  }
  for (const [action, button] of Object.entries(buttons)) button.onclick = () => act(action);
  // Checkpoint rows are replaced when the run finishes, so their buttons are found through the document.
  function exportBody(checkpoint) { return { checkpoint, push: document.getElementById("push-repo").value.trim() }; }
  document.addEventListener("click", async (e) => {
    const exporting = e.target.closest("[data-export]");
    if (exporting) {
      result.textContent = "export " + exporting.dataset.export + "…";
      const { ok, data } = await api("POST", `/api/runs/${encodeURIComponent(name)}/export`, exportBody(exporting.dataset.export));
      result.textContent = ok ? `export ${data.state}: ${data.out}` : (data && (data.error || data.detail)) || "refused";
      return;
    }
    const button = e.target.closest("[data-evaluate]");
    if (!button) return;
    result.textContent = "evaluate " + button.dataset.evaluate + "…";
    const { ok, data } = await api("POST", `/api/runs/${encodeURIComponent(name)}/evaluate`, { checkpoint: button.dataset.evaluate });
    if (!ok) { result.textContent = (data && (data.error || data.detail || JSON.stringify(data.errors))) || "refused"; return; }
    result.replaceChildren(`evaluation ${data.state}: `, el("a", data.run, { href: "/runs/" + encodeURIComponent(data.run), id: "evaluate-result" }));
  });
}

// --- launch -----------------------------------------------------------------------------------------------
function launchPage() {
  const form = document.getElementById("launch-form"), box = document.getElementById("fields");
  const preset = document.getElementById("preset"), estimate = document.getElementById("estimate");
  const cloneOf = document.getElementById("clone-of"), clone = cloneOf ? cloneOf.dataset.clone : "";
  const kind = () => form.querySelector('input[name="kind"]:checked').value;
  function errorsShow(errors) {
    document.querySelectorAll("[data-error-for]").forEach((n) => { n.textContent = errors[n.dataset.errorFor] || ""; });
  }
  function values() {
    const out = {};
    box.querySelectorAll("[data-field]").forEach((input) => { out[input.dataset.field] = input.type === "checkbox" ? String(input.checked) : input.value; });
    return out;
  }
  async function refreshEstimate() {
    const v = values();
    const q = new URLSearchParams({ family: v["model.family"], backend: v["model.backend"], load_in_4bit: v["model.load_in_4bit"], gradient_checkpointing: v["model.gradient_checkpointing"] || "true", batch: v["train.per_device_batch_size"] || 1 });
    estimate.textContent = "memory estimate…";
    const { ok, data } = await api("GET", "/api/estimate?" + q);
    if (!ok) { estimate.textContent = ""; return; }
    estimate.className = "estimate" + (data.fits ? "" : " warn");
    estimate.textContent = (data.fits ? "Fits: " : "Will not fit: ") + data.note + (data.gpu ? ` (${data.gpu})` : "");
  }
  async function loadPreset() {
    const { ok, data } = await api("GET", clone ? `/api/runs/${encodeURIComponent(clone)}/form` : "/api/presets/" + encodeURIComponent(preset.value));
    if (!ok) { errorsShow({ form: data.error }); return; }
    box.replaceChildren(...data.fields.map((f) => {
      const row = el("div", undefined, { class: "field" });
      const id = "field-" + f.name.replace(/\./g, "-");
      row.appendChild(el("label", f.name, { for: id }));
      let input;
      if (f.choices) { input = el("select"); f.choices.forEach((c) => input.appendChild(el("option", c))); input.value = f.value; }
      else if (f.type === "bool") { input = el("input", undefined, { type: "checkbox" }); input.checked = !!f.value; }
      else { input = el("input", undefined, { size: 40 }); input.value = f.value === null ? "" : f.value; }
      input.id = id; input.dataset.field = f.name;
      input.onchange = refreshEstimate;
      row.append(input, el("span", f.help, { class: "help" }), el("div", "", { class: "field-error", "data-error-for": f.name }));
      return row;
    }));
    const trainPath = form.dataset.trainPath;  // "Fine-tune on it": the corrections dataset's version fills its field
    if (trainPath) document.getElementById("field-data-train_path").value = trainPath;
    errorsShow({});
    refreshEstimate();
  }
  form.querySelectorAll('input[name="kind"]').forEach((r) => { r.onchange = () => { form.querySelector(".sweep-only").hidden = kind() !== "sweep"; }; });
  if (preset) preset.onchange = loadPreset;
  const body = () => ({ kind: kind(), preset: preset ? preset.value : "", clone, fields: values(),
                        overrides: document.getElementById("overrides").value,
                        space: document.getElementById("space").value, trials: Number(document.getElementById("trials").value),
                        gpu: document.getElementById("gpu") ? document.getElementById("gpu").value : "" });
  document.getElementById("preview").onclick = async () => {
    const { ok, status, data } = await api("POST", "/api/launch/preview", body());
    const out = document.getElementById("command");
    if (!ok) { errorsShow(data.errors || { form: data.detail || data.error || `refused (${status})` }); out.hidden = true; return; }
    errorsShow({});
    out.textContent = data.command; out.hidden = false;
  };
  document.getElementById("save-preset").onclick = async () => {
    const { ok, status, data } = await api("POST", "/api/presets", { ...body(), name: document.getElementById("preset-name").value });
    const out = document.getElementById("preset-result");
    if (!ok) { errorsShow(data.errors || { form: data.detail || data.error || `refused (${status})` }); out.textContent = ""; return; }
    errorsShow({});
    out.textContent = `saved ${data.preset}: it is in the preset list from now on`;
  };
  form.onsubmit = async (e) => {
    e.preventDefault();
    const { ok, status, data } = await api("POST", "/api/launch", body());
    const result = document.getElementById("launch-result");
    if (!ok) { errorsShow(data.errors || { form: data.detail || data.error || `refused (${status})` }); result.textContent = ""; return; }
    errorsShow({});
    result.replaceChildren(document.createTextNode(`${data.state}: `), el("a", data.run, { href: "/runs/" + encodeURIComponent(data.run) }));
  };
  loadPreset();
}

// --- compare, data, try it -----------------------------------------------------------------------------
function comparePage() {
  const data = document.getElementById("compare-data");
  if (data) drawSeries(JSON.parse(data.textContent));
}

function dataPage() {
  const form = document.getElementById("prepare-form");
  form.onsubmit = async (e) => {
    e.preventDefault();
    const name = document.getElementById("name").value;
    const { ok, data } = await api("POST", "/api/prepare", { source: document.getElementById("source").value, name });
    document.querySelectorAll("[data-error-for]").forEach((n) => { n.textContent = (ok ? {} : data.errors || {})[n.dataset.errorFor] || ""; });
    const result = document.getElementById("prepare-result");
    if (ok) result.replaceChildren(document.createTextNode("started: "), el("a", data.name, { href: "/data/" + encodeURIComponent(data.name) }));
    else result.textContent = data.detail || "";
  };
}

function tryPage() {
  const form = document.getElementById("try-form"), out = document.getElementById("try-result");
  const status = document.getElementById("try-status"), mode = document.getElementById("mode");
  mode.onchange = () => {
    document.getElementById("prompt-label").hidden = !["question", "custom"].includes(mode.value);
    document.getElementById("prompt-what").textContent = mode.value === "question" ? "Question" : "Prompt";
  };
  function correction(page, prompt, text) {  // a reading, corrected by the person, into a corrections dataset
    const node = document.getElementById("correct-template").content.firstElementChild.cloneNode(true);
    node.querySelector(".correction").value = text;
    node.querySelector(".add-correction").onclick = async () => {
      const { ok, status: code, data } = await api("POST", "/api/try/correct", { upload: page.upload, prompt,
        text: node.querySelector(".correction").value, dataset: node.querySelector(".dataset").value });
      const result = node.querySelector(".correct-result");
      result.className = "correct-result " + (ok ? "muted" : "error");
      result.textContent = ok ? `${data.dataset}: ${data.version.split("/").pop()} with ${data.rows} rows` : data.error || data.detail || `refused (${code})`;
    };
    return node;
  }
  form.onsubmit = async (e) => {
    e.preventDefault();
    const file = document.getElementById("file").files[0];
    if (!file) { status.textContent = "choose a file"; return; }
    const body = new FormData();
    body.append("file", file); body.append("model", document.getElementById("model").value);
    body.append("mode", mode.value); body.append("prompt", document.getElementById("prompt").value);
    body.append("max_tokens", document.getElementById("max-tokens").value);
    body.append("compare", document.getElementById("compare").checked ? "1" : "0");
    status.textContent = "reading (the first request loads the model)…";
    const { ok, data } = await api("POST", "/api/try", body);
    status.textContent = ok ? `read with ${data.model}` : "";
    if (!ok) { out.replaceChildren(el("p", data.error || data.detail || "refused", { class: "error" })); return; }
    out.replaceChildren(...data.pages.map((p) => {
      const block = el("div", undefined, { class: "page" });
      block.append(el("h3", p.page === null ? "Text" : `Page ${p.page}`));
      const row = el("div", undefined, { class: "side-by-side" });
      p.readings.forEach((r, i) => {
        const col = el("div", undefined, { class: "reading", "data-column": data.columns[i] });
        col.append(el("h4", `${data.columns[i]}: ${r.model}`), el("pre", r.text, { class: "page-text" }),
          el("p", `${r.tokens} tokens${r.repetition_stopped ? " · stopped in a repetition loop" : ""}`, { class: "muted" }));
        row.appendChild(col);
      });
      block.append(row, correction(p, data.prompt, p.readings[0].text));
      return block;
    }));
  };
}

// --- error analysis: tick rows, save them as an eval slice or add their corrected text to a corrections dataset ---
function errorsPage() {
  const table = document.getElementById("error-rows");
  if (!table) return;
  const result = document.getElementById("errors-result");
  const ticked = () => [...table.querySelectorAll("tbody tr")].filter((tr) => tr.querySelector(".tick").checked);
  const buttons = [document.getElementById("save-slice"), document.getElementById("add-corrections")];
  const refresh = () => {
    const n = ticked().length;
    document.getElementById("ticked").textContent = n;
    buttons.forEach((b) => { b.disabled = n === 0; });
  };
  table.querySelectorAll(".tick").forEach((box) => { box.onchange = refresh; });
  table.querySelectorAll(".use-reference").forEach((b) => {
    b.onclick = () => { b.closest("tr").querySelector(".correction").value = b.dataset.reference; };
  });
  table.querySelectorAll(".correction").forEach((area) => {
    area.oninput = () => { const box = area.closest("tr").querySelector(".tick"); box.checked = true; refresh(); };
  });
  const run = table.dataset.run, tag = table.dataset.tag;
  const show = (ok, status, data, good) => {
    result.className = ok ? "muted" : "error";
    result.textContent = ok ? good(data) : data.error || data.detail || `refused (${status})`;
  };
  document.getElementById("save-slice").onclick = async () => {
    const rows = ticked().map((tr) => Number(tr.dataset.index));
    const { ok, status, data } = await api("POST", `/api/runs/${encodeURIComponent(run)}/slice`,
      { tag, rows, name: document.getElementById("slice-name").value });
    show(ok, status, data, (d) => `saved ${d.rows} rows as ${d.slice}`);
  };
  document.getElementById("add-corrections").onclick = async () => {
    const chosen = ticked();
    const texts = Object.fromEntries(chosen.map((tr) => [tr.dataset.index, tr.querySelector(".correction").value]));
    const { ok, status, data } = await api("POST", `/api/runs/${encodeURIComponent(run)}/corrections`,
      { tag, rows: chosen.map((tr) => Number(tr.dataset.index)), texts, dataset: document.getElementById("dataset-name").value });
    show(ok, status, data, (d) => `${d.dataset}: ${d.version.split("/").pop()} with ${d.rows} rows (${d.added.length} added` +
      (d.refused.length ? `; refused: ${d.refused.join("; ")}` : "") + ")");
    if (ok) setTimeout(() => location.reload(), 1200);  // the datasets table gains the new version and its Fine-tune link
  };
  refresh();
}

// --- evaluate: a model (base, fine-tune, checkpoint) on an eval set, with baselines, as a new evaluation run ---
function evaluatePage() {
  const form = document.getElementById("evaluate-form"), model = document.getElementById("model");
  const showPreset = () => { document.getElementById("preset-label").hidden = model.value !== "base"; };
  model.onchange = showPreset;
  showPreset();
  form.onsubmit = async (e) => {
    e.preventDefault();
    const body = { model: model.value, preset: document.getElementById("preset").value,
      eval_path: document.getElementById("eval-path").value.trim(), max_samples: document.getElementById("max-samples").value,
      baselines: [...document.querySelectorAll(".baseline:checked")].map((b) => b.value) };
    const { ok, status, data } = await api("POST", "/api/evaluate", body);
    document.querySelectorAll("[data-error-for]").forEach((n) => { n.textContent = ((data && data.errors) || {})[n.dataset.errorFor] || ""; });
    const result = document.getElementById("evaluate-result");
    if (!ok) { result.textContent = data.errors ? "" : data.detail || data.error || `refused (${status})`; return; }
    result.replaceChildren(`evaluation ${data.state}: `, el("a", data.run, { href: "/runs/" + encodeURIComponent(data.run) }));
  };
}
