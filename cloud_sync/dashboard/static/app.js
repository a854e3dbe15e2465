// edgeloop fleet dashboard: vanilla JS over the cloud API, Chart.js (vendored) for charts, server-sent events for live updates.
"use strict";

const state = { token: localStorage.getItem("edgeloop.token") || "", authRequired: false, group: "",
                period: localStorage.getItem("edgeloop.period") || "15m", devicePeriod: "1h", alertState: "firing",
                source: null, timer: null, updates: 0, lastRows: {}, drafts: {}, focusedDraft: null };
const view = document.getElementById("view");
const banner = document.getElementById("banner");
const live = document.getElementById("live");

// -- helpers ------------------------------------------------------------------------------------------
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");
const ms = (v) => (v === null || v === undefined ? "–" : (1000 * v).toFixed(v < 0.01 ? 1 : 0) + " ms");
const num = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  return (seconds / 3600).toFixed(1) + " h ago";
}
// End-to-end acknowledgement: messages the device held that the cloud had not acknowledged (its latest window).
function unacked(d) {
  if (d.unacknowledged === null || d.unacknowledged === undefined) return "–";
  if (!d.unacknowledged) return "0";
  const age = d.unacknowledged_oldest_s;
  const oldest = age === null || age === undefined ? "" : ` <span class="muted">oldest ${Math.round(age)} s</span>`;
  return `${d.unacknowledged}${oldest}`;
}
// The device's clock offset measured by the cloud (its window times are stored corrected); the clock-skew alert
// in the Alerts column says when it is beyond the limit.
function clockOffset(d) {
  const s = d.clock_offset_s;
  if (s === null || s === undefined) return "–";
  if (Math.abs(s) < 1) return "ok";
  const a = Math.abs(s);
  const span = a >= 86400 ? (a / 86400).toFixed(1) + " d" : a >= 3600 ? (a / 3600).toFixed(1) + " h" :
    a >= 60 ? Math.round(a / 60) + " min" : Math.round(a) + " s";
  return `${span} ${s > 0 ? "slow" : "fast"}`;
}
// Device labels (agent setting `labels`) as key=value chips, keys sorted; rollouts select on them.
function labelChips(d) {
  const keys = Object.keys(d.labels || {}).sort();
  return keys.map((k) => `<span class="label">${esc(k + "=" + d.labels[k])}</span>`).join(" ") || "–";
}
const badge = (text, cls) => `<span class="badge ${esc(cls)}">${esc(text)}</span>`;
function showBanner(text, error) {
  banner.hidden = !text;
  banner.textContent = text || "";
  banner.className = error ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", headers,
                                       body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const detail = (data && data.detail) || response.statusText;
    const error = new Error(`HTTP ${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function failed(error) {
  const hint = error.status === 401 || error.status === 403 ? " (enter a token with the right role above)" : "";
  showBanner(error.message + hint, true);
}

// -- charts (Chart.js, vendored in static/: see static/VENDORED.md) ---------------------------------------
// One Chart per element id: a live update replaces the data of the chart in place; a chart whose canvas left
// the page (a re-rendered view) is destroyed so it does not leak.
const charts = new Map();
// Series colours; none is a band colour (#d98a00 moderate, #d23c3c significant) or the reference grey.
const PALETTE = ["#3a6fd8", "#e6862a", "#2a9d5c", "#8a4fd0", "#1f9bb0", "#b05a8a", "#7a8a2a", "#5f6b7a", "#c0487a"];
const percent = (digits) => (value) => (100 * value).toFixed(digits) + " %";
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// Horizontal reference lines (PSI 0.1 and 0.25): options.plugins.thresholds = { lines: [{ y, color }] }.
const thresholdLines = {
  id: "thresholds",
  afterDatasetsDraw(chartInstance, _args, options) {
    const { ctx, chartArea, scales } = chartInstance;
    (options.lines || []).forEach((line) => {
      const y = Math.round(scales.y.getPixelForValue(line.y)) + 0.5;  // a crisp 1 px line
      if (y < chartArea.top || y > chartArea.bottom) return;
      ctx.save();
      ctx.strokeStyle = line.color;
      ctx.lineWidth = 1;
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.moveTo(chartArea.left, y);
      ctx.lineTo(chartArea.right, y);
      ctx.stroke();
      ctx.restore();
    });
  },
};

function draw(id, config) {
  charts.forEach((instance, key) => { if (!instance.canvas.isConnected) { instance.destroy(); charts.delete(key); } });
  const element = document.getElementById(id);
  if (!element || typeof Chart === "undefined") return;
  const existing = charts.get(id);
  if (existing && element.contains(existing.canvas)) {
    existing.data = config.data;
    existing.options = config.options;
    existing.update("none");
    return;
  }
  if (existing) existing.destroy();
  element.innerHTML = "<canvas></canvas>";
  config.plugins = [thresholdLines];
  charts.set(id, new Chart(element.firstChild, config));
}

function chartOptions(title, y) {
  return { responsive: true, maintainAspectRatio: false, animation: false, normalized: true,
           plugins: { title: { display: true, text: title }, legend: { position: "bottom", labels: { boxWidth: 12 } } },
           scales: { y: Object.assign({ beginAtZero: true }, y || {}) } };
}

// A time series: t = ISO times, series = [{ name, values (null = no data) }], range = [start, end] ISO.
function lineChart(id, title, t, series, range, opts = {}) {
  const x = t.map((value) => Date.parse(value));
  const options = chartOptions(title, opts.y);
  const [start, end] = range.map((value) => Date.parse(value));
  const pad = (end - start) / 50;  // the newest bucket ends at "now": keep its point inside the frame
  options.scales.x = { type: "linear", min: start - pad, max: end + pad, ticks: { callback: clock, maxTicksLimit: 6 } };
  options.plugins.thresholds = { lines: opts.thresholds || [] };
  options.plugins.tooltip = { callbacks: { title: (items) => (items.length ? clock(items[0].parsed.x) : "") } };
  draw(id, { type: "line", options, data: { datasets: series.map((s, i) => ({
    label: s.name, data: s.values.map((y, k) => ({ x: x[k], y })), spanGaps: Boolean(opts.spanGaps),
    borderColor: PALETTE[i % PALETTE.length], backgroundColor: PALETTE[i % PALETTE.length], pointRadius: 2,
    borderWidth: 1.5 })) } });
}

// Grouped bars: labels on x, series = [{ name, values, color }].
function barChart(id, title, labels, series, y) {
  draw(id, { type: "bar", options: chartOptions(title, y), data: { labels, datasets: series.map((s) => ({
    label: s.name, data: s.values, backgroundColor: s.color })) } });
}

// -- live updates -------------------------------------------------------------------------------------
function connect() {
  if (state.source) state.source.close();
  if (state.authRequired && !state.token) return;
  const url = "/v1/events/stream" + (state.token ? "?token=" + encodeURIComponent(state.token) : "");
  const source = new EventSource(url);
  state.source = source;
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  source.addEventListener("change", (event) => {
    const message = JSON.parse(event.data);
    if (relevant(message)) schedule();
  });
}

function relevant(message) {
  const route = currentRoute();
  if (route.name === "fleet") return ["windows", "devices", "alerts"].includes(message.type);
  if (route.name === "device") {
    return message.type === "alerts" || message.devices.includes(route.arg);
  }
  if (route.name === "models") return ["windows", "devices", "rollouts"].includes(message.type);
  if (route.name === "rollouts") return ["rollouts", "devices", "events"].includes(message.type);
  if (route.name === "alerts") return message.type === "alerts";
  return false;
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    state.updates += 1;
    document.body.dataset.updates = String(state.updates);
    render(true);
  }, 250);
}

// -- routing ------------------------------------------------------------------------------------------
function currentRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const name = parts[0] || "fleet";
  return { name, arg: parts[1] ? decodeURIComponent(parts[1]) : null };
}

async function render(liveUpdate = false) {
  const route = currentRoute();
  document.querySelectorAll("nav a").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (route.name === "device" ? "fleet" : route.name));
  });
  if (state.authRequired && !state.token) {
    view.innerHTML = '<h1>Token needed</h1><p class="muted">This cloud has API tokens. Enter a viewer token to look, ' +
      "or an operator token to promote, roll back and acknowledge, in the field above.</p>";
    return;
  }
  try {
    if (route.name === "device" && route.arg) await renderDevice(route.arg, liveUpdate);
    else if (route.name === "models") await renderModels();
    else if (route.name === "rollouts") await renderRollouts();
    else if (route.name === "alerts") await renderAlerts();
    else await renderFleet(liveUpdate);
    if (!banner.classList.contains("keep")) showBanner("");
  } catch (error) {
    failed(error);
  }
}

// -- fleet --------------------------------------------------------------------------------------------
function periodSelect(id, value, options) {
  return `<select id="${id}">` + options.map((o) => `<option ${o === value ? "selected" : ""}>${o}</option>`).join("") +
    "</select>";
}

// Drift is decided on effect and evidence (docs/loop.md): the PSI badge, then the adjusted p-value and records.
function driftEvidence(w) {
  if (w.p_value === null || w.p_value === undefined) return ` <span class="muted">too few records to test</span>`;
  const p = w.p_value < 1e-4 ? "<1e-4" : Number(w.p_value).toPrecision(2);
  const verdict = w.drifted ? badge("drifted", "drifted") : `<span class="muted">not drifted</span>`;
  const against = w.reference === "baseline" ? ` <span class="muted reference">vs its baseline</span>` : "";
  return ` <span class="muted" title="chi-square p-value, adjusted across features">p ${p}, n ${w.count}</span> ${verdict}${against}`;
}

async function renderFleet(liveUpdate) {
  const query = new URLSearchParams({ since: state.period });
  if (state.group) query.set("group", state.group);
  const data = await api("/v1/dashboard/overview?" + query);
  const rows = data.devices;
  const online = rows.filter((d) => d.online).length;
  const drifting = rows.filter((d) => d.worst_drift && d.worst_drift.drifted).length;
  const firing = rows.reduce((n, d) => n + d.alerts.length, 0);
  const groups = ['<option value="">all groups</option>'].concat(data.groups.map(
    (g) => `<option ${g === state.group ? "selected" : ""} value="${esc(g)}">${esc(g)}</option>`));
  const body = rows.map((d) => {
    const drift = d.worst_drift
      ? `${esc(d.worst_drift.feature)} ${badge(num(d.worst_drift.psi, 3), "band-" + d.worst_drift.band)}${driftEvidence(d.worst_drift)}`
      : "–";
    const alerts = d.alerts.map((a) => badge(a.rule, "sev-" + a.severity)).join(" ") || "–";
    const previous = state.lastRows[d.device_id];
    const changed = liveUpdate && previous !== undefined && previous !== d.windows + ":" + d.last_seen;
    state.lastRows[d.device_id] = d.windows + ":" + d.last_seen;
    return `<tr data-device="${esc(d.device_id)}" data-requests="${d.requests}" data-windows="${d.windows}"
      class="${d.alert_severity ? "alert-" + esc(d.alert_severity) : ""} ${changed ? "flash" : ""}">
      <td><a href="#/device/${encodeURIComponent(d.device_id)}">${esc(d.device_id)}</a></td>
      <td>${esc(d.group)}</td>
      <td class="labels">${labelChips(d)}</td>
      <td><span class="dot ${d.online ? "on" : "off"}"></span>${d.online ? "online" : "offline"}</td>
      <td>${d.model_name ? esc(d.model_name + " v" + d.model_version) : "–"} <span class="muted">${esc(d.state || "")}</span></td>
      <td>${ago(d.last_seen_s_ago)}</td>
      <td class="num unacked" title="held, not yet acknowledged by the cloud">${unacked(d)}</td>
      <td class="num clock" title="the cloud's clock minus the device's">${clockOffset(d)}</td>
      <td class="num">${num(d.request_rate_per_s)}</td>
      <td class="num">${pct(d.error_rate)}</td>
      <td class="num">${ms(d.latency_p99_s)}</td>
      <td class="drift">${drift}</td>
      <td class="num">${pct(d.accuracy)}</td>
      <td>${alerts}</td></tr>`;
  }).join("");
  view.innerHTML = `<h1>Fleet</h1>
    <div class="controls"><label>Group <select id="group">${groups.join("")}</select></label>
      <label>Period ${periodSelect("period", state.period, ["5m", "15m", "1h", "6h", "24h"])}</label>
      <span class="muted">updated ${esc(data.generated_at)}</span></div>
    <div class="cards">
      <div class="card"><b id="count-devices">${rows.length}</b>devices</div>
      <div class="card"><b>${online}</b>online</div>
      <div class="card"><b>${drifting}</b>drifting (PSI &gt; 0.25)</div>
      <div class="card"><b>${firing}</b>firing alerts</div></div>
    <table id="fleet"><thead><tr><th>Device</th><th>Group</th><th>Labels</th><th>State</th><th>Model</th><th>Last seen</th>
      <th>Unacked</th><th>Clock</th><th>Req/s</th><th>Errors</th><th>p99</th><th>Worst drift (PSI)</th><th>Accuracy</th><th>Alerts</th></tr></thead>
      <tbody>${body || '<tr><td colspan="14" class="muted">No device has reported yet.</td></tr>'}</tbody></table>`;
  document.getElementById("group").onchange = (e) => { state.group = e.target.value; render(); };
  document.getElementById("period").onchange = (e) => {
    state.period = e.target.value; localStorage.setItem("edgeloop.period", state.period); render();
  };
}

// -- device -------------------------------------------------------------------------------------------
async function renderDevice(device, liveUpdate) {
  const since = state.devicePeriod;
  const enc = encodeURIComponent(device);
  const [overview, series, hist, events] = await Promise.all([
    api("/v1/dashboard/overview?since=" + since),
    api(`/v1/dashboard/devices/${enc}/series?since=${since}`),
    api(`/v1/dashboard/devices/${enc}/histograms?since=${since}`),
    api(`/v1/dashboard/devices/${enc}/events?limit=30`),
  ]);
  const d = overview.devices.find((row) => row.device_id === device);
  if (!liveUpdate || !document.getElementById("device-head")) {
    view.innerHTML = `<h1>Device ${esc(device)}</h1><div id="device-head"></div>
      <div class="controls"><label>Period ${periodSelect("device-period", since, ["15m", "1h", "6h", "24h", "7d"])}</label></div>
      <div class="grid"><div id="c-requests" class="chart"></div><div id="c-latency" class="chart"></div>
        <div id="c-errors" class="chart"></div><div id="c-accuracy" class="chart"></div>
        <div id="c-psi" class="chart"></div></div>
      <h2>Feature distributions: reference (training), the device's baseline (after an accepted drift) and current</h2>
      <p id="hist-note" class="muted"></p><p id="baseline-note"></p>
      <div id="hists" class="grid"></div>
      <h2>Recent events</h2><div id="events"></div>`;
    document.getElementById("device-period").onchange = (e) => { state.devicePeriod = e.target.value; render(); };
  }
  document.getElementById("device-head").innerHTML = d ? `<div class="cards">
      <div class="card"><b><span class="dot ${d.online ? "on" : "off"}"></span>${d.online ? "online" : "offline"}</b>${ago(d.last_seen_s_ago)}</div>
      <div class="card"><b>${esc(d.model_name ? d.model_name + " v" + d.model_version : "–")}</b>${esc(d.group)} · ${esc(d.state || "")}</div>
      <div class="card"><b id="device-requests">${d.requests}</b>requests in ${esc(since)}</div>
      <div class="card"><b>${ms(d.latency_p99_s)}</b>p99 latency</div>
      <div class="card"><b>${pct(d.accuracy)}</b>accuracy (${d.feedback} labels)</div>
      <div class="card"><b>${d.worst_drift ? badge(num(d.worst_drift.psi, 3), "band-" + d.worst_drift.band) : "–"}</b>
        worst drift ${esc(d.worst_drift ? d.worst_drift.feature : "")}</div></div>` : '<p class="muted">Unknown device.</p>';
  const s = series.series;
  const range = [series.start, series.end];
  const toMs = (values) => values.map((v) => (v === null ? null : v * 1000));
  lineChart("c-requests", "Requests per second", s.t, [{ name: "req/s", values: s.requests_per_s }], range);
  lineChart("c-latency", "Latency (ms, bucket upper bound)", s.t,
            [{ name: "p50", values: toMs(s.latency_p50_s) }, { name: "p99", values: toMs(s.latency_p99_s) }], range);
  lineChart("c-errors", "Error rate", s.t, [{ name: "error rate", values: s.error_rate }], range,
            { y: { ticks: { callback: percent(1) } } });
  lineChart("c-accuracy", "Accuracy (feedback)", s.t, [{ name: "accuracy", values: s.accuracy }], range,
            { spanGaps: true, y: { min: 0, max: 1, ticks: { callback: percent(0) } } });
  lineChart("c-psi", "PSI per feature", s.t, Object.entries(s.psi).map(([name, values]) => ({ name, values })), range,
            { thresholds: [{ y: 0.1, color: "#d98a00" }, { y: 0.25, color: "#d23c3c" }] });
  document.getElementById("hist-note").textContent = hist.model
    ? `${hist.model}: ${hist.records || 0} records in the period, sorted by PSI.` : "No telemetry in this period.";
  const b = hist.baseline;
  document.getElementById("baseline-note").innerHTML = b
    ? `<span class="baseline-state">Baseline ${esc(b.state)}</span> for ${esc(b.model)}: ${esc(b.reason)} (accepted
       ${esc(b.accepted_at)}${b.state === "ready" ? `; ${b.records} records until ${esc(b.ready_at)}` : ", forming from its next windows"}).
       Drift is judged against <b id="judged-against">${hist.judged_against === "baseline" ? "the baseline" : "the training reference"}</b>.`
    : `Drift is judged against <b id="judged-against">the training reference</b>.`;
  const hists = document.getElementById("hists");
  hists.innerHTML = hist.features.map((f, i) => `<div id="h-${i}" class="chart hist" data-feature="${esc(f.feature)}"></div>`).join("");
  hist.features.forEach((f, i) => {
    // Beside the training reference, a device whose drift was accepted shows its own baseline (docs/loop.md).
    const psi = f.drift ? ` — PSI ${num(f.drift.psi, 3)} (${f.drift.band})` : "";
    const vsBaseline = f.drift_baseline ? `; vs baseline ${num(f.drift_baseline.psi, 3)} (${f.drift_baseline.band})` : "";
    const judged = f.baseline ? f.drift_baseline : f.drift;
    const current = judged && judged.band === "significant" ? "#d23c3c"
      : judged && judged.band === "moderate" ? "#d98a00" : "#3a6fd8";
    const bars = [{ name: "reference", values: f.reference, color: "#9aa5b8" }];
    if (f.baseline) bars.push({ name: "baseline", values: f.baseline, color: "#6bb38a" });
    bars.push({ name: "current", values: f.current, color: current });
    barChart(`h-${i}`, f.feature + psi + vsBaseline, f.labels, bars, { ticks: { callback: percent(0) } });
  });
  document.getElementById("events").innerHTML = events.length ? `<table><thead><tr><th>At</th><th>Kind</th><th>Model</th>
    <th>Reason</th></tr></thead><tbody>${events.map((e) => `<tr><td>${esc(e.at)}</td><td>${esc(e.kind)}</td>
    <td>${esc(e.model || "–")}</td><td>${esc(e.reason || "")}</td></tr>`).join("")}</tbody></table>`
    : '<p class="muted">No events yet.</p>';
}

// -- models -------------------------------------------------------------------------------------------
async function renderModels() {
  const models = await api("/v1/dashboard/models?since=24h");
  const metricNames = (versions) => [...new Set(versions.flatMap((v) => Object.keys(v.metrics)))].sort();
  view.innerHTML = "<h1>Models</h1>" + (models.length ? "" : '<p class="muted">No bundle on the server yet.</p>') +
    models.map((m, i) => {
      const names = metricNames(m.versions);
      const rows = m.versions.map((v) => `<tr data-version="${v.version}"><td>v${v.version}</td><td>${esc(v.estimator)}</td>
        ${names.map((n) => `<td class="num">${num(v.metrics[n], 3)}</td>`).join("")}
        <td><code title="${esc(v.lineage.run_id)}">${esc(v.lineage.run_id.slice(0, 10))}</code></td>
        <td><code title="${esc(v.lineage.data_hash)}">${esc(v.lineage.data_hash.slice(0, 10))}</code> ${v.lineage.data_rows} rows</td>
        <td><code>${esc(v.lineage.code_version.slice(0, 12))}</code></td>
        <td>${v.devices.map(esc).join(", ") || "–"}</td>
        <td class="num">${pct(v.live.accuracy)} <span class="muted">(${v.live.feedback})</span></td>
        <td class="num">${v.live.requests}</td>
        <td>${v.live.worst_psi === null ? "–" : badge(num(v.live.worst_psi, 3), "band-" + v.live.worst_band)}</td></tr>`).join("");
      const cards = m.versions.map((v) => `<details><summary>Model card v${v.version} (${esc(v.created_at)})</summary>
        <p>${esc(v.card.intended_use)}</p>
        <p><b>Estimator</b> ${esc(v.card.estimator)} · <b>data</b> ${esc(v.card.data.source)} (${v.card.data.rows} rows,
          sha256 <code>${esc(v.card.data.sha256.slice(0, 16))}</code>) · <b>ONNX</b> opset ${v.card.onnx.opset},
          ${v.card.onnx.size} bytes · parity ${v.card.parity.label_mismatches} label mismatches on ${v.card.parity.rows} rows,
          max |dp| ${Number(v.card.parity.max_abs_diff).toExponential(1)} · ${v.card.golden_samples} golden samples</p>
        <p><b>Inputs</b> ${v.card.inputs.map((f) => `${esc(f.name)} <span class="muted">(${esc(f.kind)})</span>`).join(", ")}</p>
        <ul>${v.card.limitations.map((l) => `<li>${esc(l)}</li>`).join("")}</ul></details>`).join("");
      return `<h2>${esc(m.name)}</h2><table class="versions"><thead><tr><th>Version</th><th>Estimator</th>
        ${names.map((n) => `<th>${esc(n)} (held-out)</th>`).join("")}<th>Run</th><th>Data</th><th>Code</th>
        <th>Runs on</th><th>Live accuracy</th><th>Requests 24h</th><th>Worst PSI</th></tr></thead><tbody>${rows}</tbody></table>
        <div id="impact-${i}" class="chart"></div><div id="value-${i}"></div>
        <h3>What drives each version, and per-prediction explanations</h3>
        <div id="explain-${i}" class="explain-grid">${m.versions.map(explanationPanel).join("")}</div>${cards}`;
    }).join("");
  const valued = await api("/v1/impact/models").catch(() => []);
  models.forEach((m, i) => { if (valued.includes(m.name)) renderValue(m.name, i); });
  models.forEach((m, i) => {
    const versions = [...m.versions].reverse();
    const x = versions.map((v) => "v" + v.version);
    barChart(`impact-${i}`, "Impact of each version: held-out vs live accuracy", x, [
      { name: "held-out accuracy", values: versions.map((v) => v.metrics.accuracy ?? null), color: "#9aa5b8" },
      { name: "live accuracy (feedback, 24h)", values: versions.map((v) => v.live.accuracy), color: "#3a6fd8" },
    ], { min: 0, max: 1, ticks: { callback: percent(0) } });
  });
}

// Governance (GET /v1/bundles/{name}/{version}/explanations, the same dict as `explanations` here): the signed
// manifest's permutation importance (mean drop +- std of the held-out metric per input feature, a bar scaled
// to the largest |mean|) and whether devices explain single predictions (linear explainer block) or why not.
function explanationPanel(v) {
  const e = v.explanations;
  const p = e.per_prediction;
  const line = `<p class="explain-line" data-available="${p.available}"><b>Per-prediction explanations:</b>
    ${badge(p.available ? "available" : "not available", p.available ? "yes" : "no")} ${esc(p.note)}</p>`;
  const imp = e.importance;
  if (!imp) {
    return `<div class="explanations" data-version="${v.version}"><h4>v${v.version} <span class="muted">${esc(e.estimator)}</span></h4>
      <p class="muted no-importance">No permutation importance in this bundle (converted before the trainer computed it).</p>${line}</div>`;
  }
  const top = Math.max(0, ...imp.features.map((f) => Math.abs(f.mean))) || 1;
  const rows = imp.features.map((f, rank) => `<tr data-feature="${esc(f.feature)}" data-mean="${f.mean}" data-std="${f.std}">
      <td class="num">${rank + 1}</td><td>${esc(f.feature)}</td>
      <td class="num">${f.mean.toFixed(4)} ± ${f.std.toFixed(4)}</td>
      <td class="bar-cell"><span class="bar${f.mean < 0 ? " neg" : ""}" style="width: ${(100 * Math.abs(f.mean) / top).toFixed(1)}%"></span></td></tr>`).join("");
  return `<div class="explanations" data-version="${v.version}" data-metric="${esc(imp.metric)}">
    <h4>v${v.version} <span class="muted">${esc(e.estimator)}</span></h4>
    <p class="muted importance-note">Permutation importance: drop of held-out <b>${esc(imp.metric)}</b> (baseline
      ${imp.baseline.toFixed(4)}) when one input feature's values are shuffled, mean ± std over ${imp.n_repeats} repeats
      on ${imp.rows} rows (random_state ${imp.random_state}).</p>
    <table class="importance"><thead><tr><th>#</th><th>Feature</th><th>Drop of ${esc(imp.metric)} (mean ± std)</th>
      <th></th></tr></thead><tbody>${rows}</tbody></table>${line}</div>`;
}

// Business impact (GET /v1/impact): value per version from the feedback confusion counts and the model's
// cost/benefit matrix, and the change each rollout made. Models without a matrix show nothing.
async function renderValue(name, i) {
  let impact;
  try {
    impact = await api(`/v1/impact?model=${encodeURIComponent(name)}&since=7d&period=1d`);
  } catch (_) {
    return;
  }
  const target = document.getElementById(`value-${i}`);
  if (!target) return;
  const unit = esc(impact.unit);
  const versions = impact.versions.map((v) => `<tr><td>v${v.version ?? "–"}</td><td class="num">${v.labels}</td>
    <td class="num">${num(v.value, 0)} ${unit}</td><td class="num">${num(v.value_per_label, 2)} ${unit}</td>
    <td class="num">${num(v.estimated_value_all_records, 0)} ${unit}</td></tr>`).join("");
  const deployments = impact.deployments.map((d) => `<tr><td>${esc(d.rollout_id)}</td><td>v${d.previous_version ?? "–"} → v${d.version}</td>
    <td>${esc(d.group)}</td><td>${esc(d.state)}</td><td class="num">${num(d.change_per_1000_predictions, 0)} ${unit}</td></tr>`).join("");
  target.innerHTML = `<h3>Business value, 7 days</h3><table class="value"><thead><tr><th>Version</th><th>Labelled</th>
    <th>Value (labelled)</th><th>Per label</th><th>Estimated, all records</th></tr></thead><tbody>${versions ||
    '<tr><td colspan="5" class="muted">No feedback yet.</td></tr>'}</tbody></table>` + (deployments ? `<h3>Impact of deployments</h3>
    <table class="value"><thead><tr><th>Rollout</th><th>Versions</th><th>Group</th><th>State</th>
    <th>Change per 1000 predictions</th></tr></thead><tbody>${deployments}</tbody></table>` : "");
}

// -- rollouts and alerts ------------------------------------------------------------------------------
// A live update re-renders the table: what an operator is typing in a reason field is kept per row (and the
// field keeps the focus), so a refresh never wipes a reason or sends an action without it.
function draftKey(input) {
  const row = input.closest("tr");
  return row.dataset.rollout ? "rollout:" + row.dataset.rollout : "alert:" + row.dataset.alert;
}

function keepDrafts() {
  view.querySelectorAll("tr input.reason").forEach((input) => {
    const key = draftKey(input);
    if (state.drafts[key]) input.value = state.drafts[key];
    input.oninput = () => { state.drafts[key] = input.value; };
    input.onfocus = () => { state.focusedDraft = key; };
    input.onblur = () => { if (input.isConnected) state.focusedDraft = null; };
    if (state.focusedDraft === key) {
      input.focus();
      input.setSelectionRange(input.value.length, input.value.length);
    }
  });
}

async function act(path, reasonInput) {
  const reason = reasonInput && reasonInput.value ? reasonInput.value : null;
  try {
    await api(path, { method: "POST", body: { reason } });
    if (reasonInput) delete state.drafts[draftKey(reasonInput)];
    showBanner("");
    render();
  } catch (error) {
    failed(error);
  }
}

// An A/B rollout's arms and the sequential test's verdict (docs/loop.md "A/B decision").
const VERDICT_CLASS = { better: "yes", worse: "state-rolled_back", "not yet known": "no" };
function abProgress(ab) {
  if (!ab) return "";
  const arm = (name) => {
    const a = ab[name];
    return `${name} v${a.model_version ?? "–"}: ${a.labels} labels, accuracy ${a.accuracy == null ? "–" : a.accuracy.toFixed(3)}`;
  };
  const d = ab.decision;
  const verdict = d ? `<div class="ab-decision" data-verdict="${esc(d.verdict)}">A/B: ${badge(d.verdict === "not yet known" ? d.verdict : "challenger " + d.verdict, VERDICT_CLASS[d.verdict])}
    confidence ${d.confidence > 0.999 ? "&gt; 99.9 %" : pct(Math.floor(d.confidence * 1000) / 1000)}${d.auto_decide ? " (acted on automatically)" : ""}</div>` : "";
  return `${verdict}<span class="muted">${esc(arm("champion"))}; ${esc(arm("challenger"))}</span>`;
}

async function renderRollouts() {
  const rollouts = await api("/v1/rollouts");
  const active = rollouts.filter((r) => ["canary", "soaking"].includes(r.state));
  const details = await Promise.all(active.map((r) => api("/v1/rollouts/" + encodeURIComponent(r.id))));
  const progress = Object.fromEntries(details.map((r) => [r.id, r]));
  view.innerHTML = `<h1>Rollouts</h1>` + (rollouts.length ? `<table id="rollouts"><thead><tr><th>Rollout</th><th>Group</th>
    <th>Model</th><th>Previous</th><th>Canary</th><th>State</th><th>Progress</th><th>Reason</th><th>By</th><th>Started</th>
    <th>Action</th></tr></thead><tbody>${rollouts.map((r) => {
      const p = progress[r.id];
      const devices = p ? p.devices.map((d) => `${esc(d.device_id)}${d.canary ? "*" : ""}: v${d.model_version ?? "–"}`).join(", ") : "";
      const canAct = ["canary", "soaking", "promoted"].includes(r.state);
      const st = p && p.stage;  // a staged rollout: its stage, its devices, its checks
      const stage = st ? `<div class="stage">stage ${st.stage}/${st.of} (${st.percent}%): +${st.devices.length} devices
        (${esc(st.devices.slice(0, 5).join(", "))}${st.devices.length > 5 ? " …" : ""}), ${st.switched}/${st.planned} switched,
        checks: ${esc(st.checks || "–")}</div>` : r.stages ? `<div class="stage muted">stages ${r.stages.join("%, ")}%</div>` : "";
      return `<tr data-rollout="${esc(r.id)}" data-state="${esc(r.state)}"><td><code>${esc(r.id)}</code></td><td>${esc(r.group)}</td>
        <td>${esc(r.model)}</td><td>${r.previous_version ?? "–"}</td><td>${esc(r.canary.join(", ") || "none")}</td>
        <td>${badge(r.state, "state-" + r.state)}</td>
        <td>${stage}${p ? `${p.on_target}/${p.devices.length} on target<br><span class="muted">${devices}</span>${abProgress(p.ab)}` : ""}</td>
        <td>${esc(r.reason || "")}</td><td>${esc(r.actor)}</td><td>${esc(r.created_at)}</td>
        <td>${canAct ? `<div class="actions"><input placeholder="reason" class="reason">
          ${r.state !== "promoted" ? '<button class="primary promote">Promote</button>' : ""}
          <button class="danger rollback">Roll back</button></div>` : ""}</td></tr>`;
    }).join("")}</tbody></table>` : '<p class="muted">No rollout yet. Start one with <code>edgeloop deploy</code>.</p>');
  view.querySelectorAll("tr[data-rollout]").forEach((row) => {
    const id = encodeURIComponent(row.dataset.rollout);
    const reason = row.querySelector(".reason");
    const promote = row.querySelector(".promote");
    const rollback = row.querySelector(".rollback");
    if (promote) promote.onclick = () => { promote.disabled = true; act(`/v1/rollouts/${id}/promote`, reason); };
    if (rollback) rollback.onclick = () => { rollback.disabled = true; act(`/v1/rollouts/${id}/rollback`, reason); };
  });
  keepDrafts();
}

async function renderAlerts() {
  const alerts = await api("/v1/alerts" + (state.alertState ? "?state=" + state.alertState : ""));
  view.innerHTML = `<h1>Alerts</h1><div class="controls"><label>Show <select id="alert-state">
      ${[["firing", "firing"], ["resolved", "resolved"], ["", "all"]].map(([v, t]) =>
        `<option value="${v}" ${v === state.alertState ? "selected" : ""}>${t}</option>`).join("")}</select></label></div>` +
    (alerts.length ? `<table id="alerts"><thead><tr><th>Severity</th><th>Rule</th><th>Subject</th><th>State</th><th>Value</th>
      <th>Message</th><th>Fired</th><th>Acknowledged</th><th>Action</th></tr></thead><tbody>${alerts.map((a) => `
      <tr data-alert="${a.id}" class="${a.state === "firing" ? "alert-" + esc(a.severity) : ""}">
        <td>${badge(a.severity, "sev-" + a.severity)}</td><td>${esc(a.rule)}</td><td>${esc(a.subject)}</td>
        <td>${badge(a.state, "state-" + a.state)}</td><td class="num">${num(a.value, 3)}</td><td>${esc(a.message)}${a.resolution
          ? `<div class="resolution">resolved: ${esc(a.resolution)}</div>` : ""}</td>
        <td>${esc(a.fired_at)}</td><td class="acked">${a.acknowledged_by ? esc(a.acknowledged_by + " at " + a.acknowledged_at) : "–"}</td>
        <td>${a.acknowledged_by ? "" : '<div class="actions"><input placeholder="note" class="reason"><button class="primary ack">Acknowledge</button></div>'}</td>
      </tr>`).join("")}</tbody></table>` : '<p class="muted">No alert in this state.</p>');
  document.getElementById("alert-state").onchange = (e) => { state.alertState = e.target.value; render(); };
  view.querySelectorAll("tr[data-alert]").forEach((row) => {
    const button = row.querySelector(".ack");
    if (button) button.onclick = () => { button.disabled = true; act(`/v1/alerts/${row.dataset.alert}/acknowledge`, row.querySelector(".reason")); };
  });
  keepDrafts();
}

// -- start --------------------------------------------------------------------------------------------
document.getElementById("token").value = state.token;
document.getElementById("token-form").onsubmit = (event) => {
  event.preventDefault();
  state.token = document.getElementById("token").value.trim();
  if (state.token) localStorage.setItem("edgeloop.token", state.token);
  else localStorage.removeItem("edgeloop.token");
  connect();
  render();
};
window.addEventListener("hashchange", () => render());

(async function start() {
  try {
    const config = await api("/v1/dashboard/config");
    state.authRequired = config.auth_required;
  } catch (error) {
    failed(error);
  }
  connect();
  render();
})();
