// Walle console: reads the control-plane API with the operator token and renders tables.
"use strict";

const tokenInput = document.getElementById("token");
const statusLine = document.getElementById("status");
// A token in the URL fragment (#token=...) is never sent to the server; take it and drop it.
const fragmentToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (fragmentToken) {
  sessionStorage.setItem("walle-token", fragmentToken);
  history.replaceState(null, "", location.pathname);
}
tokenInput.value = sessionStorage.getItem("walle-token") || "";

async function api(path) {
  const response = await fetch("/v1" + path, {
    headers: { Authorization: "Bearer " + tokenInput.value },
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// Installed share of targeted devices over time, as a small SVG line.
function sparkline(samples) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "24");
  if (samples.length > 0) {
    const t0 = samples[0].at_ms;
    const span = Math.max(1, samples[samples.length - 1].at_ms - t0);
    const points = samples.map((s) => {
      const share = s.targeted > 0 ? s.installed / s.targeted : 0;
      return `${(118 * (s.at_ms - t0)) / span + 1},${22 - 20 * share + 1}`;
    });
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2b7de9");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
  }
  return svg;
}

async function act(id, action) {
  const response = await fetch(`/v1/releases/${id}/${action}`, {
    method: "POST",
    headers: { Authorization: "Bearer " + tokenInput.value },
  });
  const body = await response.json();
  statusLine.textContent = response.ok ? `${action}: ${id} is now ${body.state}` : "Error: " + body.error;
  refresh();
}

// The operator actions a release in this state allows, as buttons.
function actionButtons(release) {
  const lastStage = release.stage >= release.policy.stages.length - 1;
  const allowed = {
    active: lastStage ? ["pause", "rollback"] : ["pause", "advance", "rollback"],
    paused: ["resume", "rollback"],
  }[release.state] || [];
  const cell = document.createElement("span");
  for (const action of allowed) {
    const button = document.createElement("button");
    button.textContent = action;
    button.addEventListener("click", () => act(release.id, action));
    cell.appendChild(button);
  }
  return cell;
}

function render(tableId, columns, rows) {
  const table = document.getElementById(tableId);
  table.replaceChildren();
  const head = table.insertRow();
  for (const [title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const [, cell] of columns) {
      const value = cell(row);
      const td = tr.insertCell();
      if (value instanceof Node) td.appendChild(value);
      else td.textContent = value;
    }
  }
}

const time = (ms) => new Date(ms).toLocaleString();

// Each stage's cohort: installed of targeted, failed devices, runs ok/failed.
function stageLines(stats) {
  const list = document.createElement("span");
  for (const s of stats.stages) {
    const line = document.createElement("div");
    line.textContent = `${s.percent}%: ${s.installed}/${s.targeted} installed, ` +
      `${s.failed_devices} failed, runs ${s.runs_ok}/${s.runs_failed}`;
    list.appendChild(line);
  }
  return list;
}

const percent = (share) => `${Math.round(share * 1000) / 10}%`;

// The policy's gate and abort rule, a line each, so thresholds sit beside the figures they judge.
function policyLines(policy) {
  const gate = policy.gate;
  const conditions = gate.auto_advance
    ? [`auto at ≥ ${percent(gate.min_success_rate)} ok of ≥ ${gate.min_devices} devices`]
    : ["manual"];
  if (gate.min_soak_secs) conditions.push(`soak ${gate.min_soak_secs} s`);
  if (gate.max_run_p99_ms != null) conditions.push(`run p99 ≤ ${gate.max_run_p99_ms} ms`);
  const lines = [`gate: ${conditions.join(", ")}`];
  const abort = policy.abort;
  if (abort) {
    const rules = [];
    if (abort.max_failed_devices != null) rules.push(`≥ ${abort.max_failed_devices} failed devices`);
    if (abort.max_failure_rate != null) {
      rules.push(`≥ ${percent(abort.max_failure_rate)} failed of ≥ ${abort.min_executed} devices`);
    }
    if (abort.max_run_p99_ms != null) {
      rules.push(`run p99 > ${abort.max_run_p99_ms} ms over ≥ ${abort.min_runs} runs`);
    }
    lines.push(`abort: ${rules.join(" or ")}`);
  }
  const list = document.createElement("span");
  for (const text of lines) {
    const line = document.createElement("div");
    line.textContent = text;
    list.appendChild(line);
  }
  return list;
}

async function refresh() {
  try {
    const [releases, tasks, groups, devices, records] = await Promise.all([
      api("/releases"), api("/tasks"), api("/groups"), api("/devices"), api("/records?limit=20"),
    ]);
    const stats = await Promise.all(releases.map(async (r) => {
      const [status, coverage] = await Promise.all([
        api("/releases/" + r.id), api(`/releases/${r.id}/coverage`),
      ]);
      return { ...status, coverage };
    }));
    render("releases", [
      ["id", (r) => r.id], ["task", (r) => r.task], ["version", (r) => r.version],
      ["state", (r) => r.state + (r.state_reason ? ` (${r.state_reason})` : "")],
      ["stage", (r) => `${r.stage + 1}/${r.policy.stages.length}: ${r.policy.stages[r.stage]}%`],
      ["gate / abort", (r) => policyLines(r.policy)],
      ["installed", (r) => `${r.stats.installed}/${r.stats.targeted}`],
      ["coverage over time", (r) => sparkline(r.coverage)],
      ["notified / synced", (r) => `${r.stats.notified} / ${r.stats.synced}`],
      ["install failed", (r) => r.stats.install_failed],
      ["runs ok / failed", (r) => `${r.stats.runs_ok} / ${r.stats.runs_failed}`],
      ["rolled back", (r) => r.stats.rolled_back],
      ["run p50 / p99 ms", (r) => `${r.stats.runs.duration_p50_ms ?? "–"} / ${r.stats.runs.duration_p99_ms ?? "–"}`],
      ["waited p99 ms", (r) => r.stats.runs.queued_p99_ms ?? "–"],
      ["runs dropped", (r) => r.stats.runs.dropped],
      ["failures by kind", (r) => Object.entries(r.stats.runs.failures_by_kind).map(([k, n]) => `${k} ${n}`).join(", ") || "–"],
      ["per stage", (r) => stageLines(r.stats)],
      ["created", (r) => time(r.created_at_ms)],
      ["actions", (r) => actionButtons(r)],
    ], stats);
    render("tasks", [["name", (t) => t.name], ["description", (t) => t.description],
      ["created", (t) => time(t.created_at_ms)]], tasks);
    render("groups", [["name", (g) => g.name], ["description", (g) => g.description],
      ["members", (g) => g.members]], groups);
    render("devices", [
      ["id", (d) => d.id], ["app", (d) => `${d.profile.app_id} ${d.profile.app_version}`],
      ["tasks", (d) => d.tasks.map((t) => `${t.task}@${t.version} (${t.state})`).join(", ")],
      ["last seen", (d) => time(d.last_seen_ms)],
    ], devices);
    render("records", [["device", (r) => r.device_id], ["task", (r) => `${r.task}@${r.version}`],
      ["payload", (r) => JSON.stringify(r.payload)], ["received", (r) => time(r.received_at_ms)]], records);
    statusLine.textContent = "Updated " + new Date().toLocaleTimeString();
  } catch (e) {
    statusLine.textContent = "Error: " + e.message;
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("walle-token", tokenInput.value);
  refresh();
});
if (tokenInput.value) refresh();
setInterval(() => tokenInput.value && refresh(), 5000);
