// Release detail: figures, per-stage table and coverage chart, kept current by the server's
// event stream (`/live`, one fetch stream, no polling); actions come from the API's `actions`.

import { api, sse } from "./api.js";
import { coverageChart } from "./chart.js";
import {
  h, badge, fmtTime, fmtNum, fmtPct, fmtMs, successRate, pageHeader, section, table,
  alertBox, showError, confirmDialog, enc,
} from "./ui.js";
import { stageText } from "./page-releases.js";

export const HELP = {
  targeted: "Registered devices this release is selected for now.",
  installed: "Targeted devices running this version (at most the targeted count).",
  coverage: "Installed ÷ targeted.",
  still_running: "Devices running this version although the release no longer targets them (e.g. after an abort, until they roll back).",
  notified: "Push notices delivered to devices.",
  synced: "Devices that pulled this release.",
  executed: "Devices that reported an install outcome.",
  failed_devices: "Devices with at least one failure of the counted kinds.",
  success_rate: "(executed − failed devices) ÷ executed.",
  run_p50: "Median duration of this release's successful runs.",
  run_p99: "99th-percentile duration of this release's successful runs.",
  queued_p99: "99th-percentile time runs waited for a VM worker before starting.",
  dropped: "Runs dropped on devices (queue full) instead of being run.",
  install_failed: "Devices whose install of this version failed.",
  runs_ok: "Runs of this version that finished without error.",
  runs_failed: "Runs of this version that failed (exception, deadline, memory…).",
  rolled_back: "Devices that rolled back from this version to the one they had.",
};

export const ACTION_LABELS = {
  advance: "Advance", pause: "Pause", resume: "Resume", abort: "Abort", rollback: "Roll back",
};

const failuresHref = (id, kind, stage) => {
  const q = new URLSearchParams();
  if (kind) q.set("kind", kind);
  if (stage != null) q.set("stage", stage);
  const qs = q.toString();
  return `#/releases/${enc(id)}/failures${qs ? `?${qs}` : ""}`;
};

export async function render({ main, params, signal, may }) {
  const id = params.id;
  const heading = pageHeader(`Release ${id}`);
  const errors = h("div");
  main.append(heading, errors);

  let first;
  try {
    first = await api(`/releases/${enc(id)}`, { signal });
  } catch (e) {
    if (e.name === "AbortError") return;
    heading.querySelector("h1").textContent = `Release ${id}`;
    errors.append(alertBox(e, "Loading the release failed"));
    return;
  }
  heading.replaceWith(pageHeader(`Release ${first.task} ${first.version}`, {
    sub: h("span", {}, h("code", {}, first.id), ` · created ${fmtTime(first.created_at_ms)} · `,
      h("a", { href: `#/tasks/${enc(first.task)}/${enc(first.version)}` }, "task version")),
  }));

  // ---- skeleton ----
  const live = h("span", { "data-test": "live", class: "live", role: "status" }, "connecting");
  const liveError = h("div");
  const stateEl = h("span", { "data-test": "state" });
  const reasonEl = h("span", { "data-test": "state-reason", class: "reason" });
  const stageEl = h("span", { title: "Current stage (1-based) of the policy's stages and its cumulative share of targeted devices." });
  const stageSince = h("span", { title: "When the current stage started." });
  // After an abort or a pause, devices keep this version until they switch back.
  const stillRunning = h("p", { class: "notice still-running", "data-test": "still-running", title: HELP.still_running, hidden: true });
  const actionsBox = h("div", { class: "action-buttons" });
  const actionError = h("div");
  const figureKeys = [
    ["targeted", "Targeted"], ["installed", "Installed"], ["coverage", "Coverage"],
    ["still_running", "Still running"], ["notified", "Notified"], ["synced", "Synced"],
    ["executed", "Executed"], ["failed_devices", "Failed devices"], ["success_rate", "Success rate"],
    ["run_p50", "Run p50"], ["run_p99", "Run p99"],
  ];
  const dds = {};
  const figs = h("dl", { class: "figures", "aria-live": "polite", "aria-label": "Release figures" },
    figureKeys.map(([key, label]) => {
      dds[key] = h("dd", { "data-figure": key, title: HELP[key] }, "–");
      return h("div", { class: "figure" },
        h("dt", { title: HELP[key] }, label, h("span", { class: "help", "aria-hidden": "true" }, "?"),
          h("span", { class: "sr-only" }, ` (${HELP[key]})`)),
        dds[key]);
    }));
  const chartBox = h("div", { class: "chart-box" });
  const stagesBox = h("div");
  const runsBox = h("div");
  const policyBox = h("div");

  main.append(
    h("section", { class: "card status-card", "aria-label": "State" },
      h("div", { class: "status-line" },
        h("span", {}, "State: ", stateEl), reasonEl,
        h("span", { class: "muted" }, "Stage ", stageEl, " ", stageSince),
        h("span", { class: "live-wrap", title: "Whether the page is receiving live updates from the server's event stream." },
          "Updates: ", live)),
      stillRunning,
      liveError,
      may("act_release") ? h("div", {}, actionsBox, actionError) : null),
    section("Figures", figs),
    section("Coverage over time", h("p", { class: "muted" }, "Installed ÷ targeted devices at each sample; dashed lines mark stage changes."), chartBox),
    section("Stages", stagesBox),
    section("Runs", runsBox),
    section("Policy", policyBox));

  // Drawn at the box's own width, so axis labels stay readable on a phone.
  const drawChart = (samples) => {
    const width = Math.min(720, Math.max(280, chartBox.clientWidth || 720));
    chartBox.replaceChildren(coverageChart(samples, { width, height: width < 500 ? 200 : 240 }));
  };
  let actionsKey = "";
  let coverage = null;
  let lastDetailKey = "";

  function setText(el, text) {
    const t = String(text);
    if (el.textContent !== t) el.textContent = t;
  }

  function update(r) {
    const st = r.stats || {};
    const runs = st.runs || {};
    stateEl.replaceChildren(badge(r.state));
    setText(reasonEl, r.state_reason || "");
    setText(stageEl, stageText(r));
    setText(stageSince, r.stage_started_at_ms ? `since ${fmtTime(r.stage_started_at_ms)}` : "");
    const switchingBack = (r.state === "aborted" || r.state === "paused") && st.still_running > 0;
    stillRunning.hidden = !switchingBack;
    setText(stillRunning, switchingBack ? `Still running this version: ${fmtNum(st.still_running)} — switching back` : "");
    const rate = successRate(st.executed, st.failed_devices);
    const values = {
      targeted: fmtNum(st.targeted), installed: fmtNum(st.installed),
      coverage: fmtPct(st.coverage),
      still_running: fmtNum(st.still_running), notified: fmtNum(st.notified), synced: fmtNum(st.synced),
      executed: fmtNum(st.executed), failed_devices: null, success_rate: fmtPct(rate),
      run_p50: fmtMs(runs.duration_p50_ms), run_p99: fmtMs(runs.duration_p99_ms),
    };
    for (const [key, v] of Object.entries(values)) if (v != null) setText(dds[key], v);
    // Failure counts link to the devices that failed.
    const failedLink = dds.failed_devices.querySelector("a");
    const failedText = fmtNum(st.failed_devices);
    if (!failedLink || failedLink.textContent !== failedText) {
      dds.failed_devices.replaceChildren(h("a", {
        href: failuresHref(r.id, null), title: "Show the failed devices and their messages",
      }, failedText));
    }

    if (r.coverage) coverage = r.coverage;
    if (coverage) drawChart(coverage);

    const detailKey = JSON.stringify([st, r.policy, r.stage]);
    if (detailKey === lastDetailKey) {
      if (may("act_release")) renderActions(r);
      return;
    }
    lastDetailKey = detailKey;
    const stages = st.stages || [];
    const count = (n, kind, stage) => (n > 0
      ? h("a", { href: failuresHref(r.id, kind, stage), title: `Show these devices and their messages` }, fmtNum(n))
      : fmtNum(n));
    stagesBox.replaceChildren(table([
      { title: "Stage", cell: (s) => h("span", {}, `${s.stage + 1}`, s.stage === r.stage ? h("span", { class: "badge badge-neutral inline" }, "current") : null) },
      { title: "Percent", num: true, help: "Cumulative share of targeted devices this stage includes.", cell: (s) => `${s.percent}%` },
      { title: "Targeted", num: true, help: "Devices this stage's cohort selects.", cell: (s) => fmtNum(s.targeted) },
      { title: "Installed", num: true, help: HELP.installed, cell: (s) => fmtNum(s.installed) },
      { title: "Install failed", num: true, help: HELP.install_failed, cell: (s) => count(s.install_failed, "install_failed", s.stage) },
      { title: "Runs ok / failed", num: true, help: `${HELP.runs_ok} / ${HELP.runs_failed}`, cell: (s) => h("span", {}, fmtNum(s.runs_ok), " / ", count(s.runs_failed, "run_failed", s.stage)) },
      { title: "Failed devices", num: true, help: HELP.failed_devices, cell: (s) => fmtNum(s.failed_devices) },
      { title: "Rolled back", num: true, help: HELP.rolled_back, cell: (s) => count(s.rolled_back, "rolled_back", s.stage) },
    ], stages, { test: "stages", caption: "Per-stage figures", empty: "No stage figures yet." }));
    // The empty-state paragraph carries the hook too, so tests find it either way.

    const byKind = Object.entries(runs.failures_by_kind || {});
    runsBox.replaceChildren(h("dl", { class: "figures compact" },
      [["Install failed", count(st.install_failed, "install_failed"), HELP.install_failed],
        ["Runs ok", fmtNum(st.runs_ok), HELP.runs_ok],
        ["Runs failed", count(st.runs_failed, "run_failed"), HELP.runs_failed],
        ["Rolled back", count(st.rolled_back, "rolled_back"), HELP.rolled_back],
        ["Waited p99", fmtMs(runs.queued_p99_ms), HELP.queued_p99],
        ["Runs dropped", fmtNum(runs.dropped), HELP.dropped]].map(([label, value, help]) =>
        h("div", { class: "figure" }, h("dt", { title: help }, label, h("span", { class: "help", "aria-hidden": "true" }, "?"),
          h("span", { class: "sr-only" }, ` (${help})`)), h("dd", { title: help }, value)))),
    h("h3", {}, "Failures by kind"),
    byKind.length
      ? h("ul", { class: "kinds" }, byKind.map(([kind, n]) => h("li", {},
        h("a", { href: failuresHref(r.id, "run_failed"), title: `Failed runs of kind ${kind}` }, `${kind}: ${fmtNum(n)}`))))
      : h("p", { class: "muted" }, "No failed runs."));

    policyBox.replaceChildren(policySummary(r.policy || {}));

    if (may("act_release")) renderActions(r);
  }

  function renderActions(r) {
    const actions = r.actions || [];
    const key = JSON.stringify(actions);
    if (key === actionsKey) return;
    actionsKey = key;
    const hadFocus = actionsBox.contains(document.activeElement) ? document.activeElement.textContent : null;
    actionsBox.replaceChildren(
      ...(actions.length ? [] : [h("p", { class: "muted" }, "No actions are possible in this state.")]),
      ...actions.map((a) => h("button", {
        type: "button",
        class: a.action === "abort" || a.action === "rollback" ? "danger" : "secondary",
        title: a.effect,
        onclick: () => act(r, a),
      }, ACTION_LABELS[a.action] || a.action)));
    if (hadFocus) {
      const again = [...actionsBox.querySelectorAll("button")].find((b) => b.textContent === hadFocus);
      if (again) again.focus();
    }
  }

  async function act(r, a) {
    const label = ACTION_LABELS[a.action] || a.action;
    const ok = await confirmDialog({
      title: `${label} release ${r.task} ${r.version}?`,
      body: h("div", {},
        h("p", { class: "effect" }, a.effect),
        a.devices != null ? h("p", { class: "muted" }, `Devices affected: ${fmtNum(a.devices)}`) : null),
      danger: a.action === "abort" || a.action === "rollback",
    });
    if (!ok) return;
    showError(actionError, null);
    try {
      await api(`/releases/${enc(r.id)}/${a.action}`, { method: "POST", signal });
      const eventsBefore = liveEvents;
      const fresh = await api(`/releases/${enc(r.id)}`, { signal });
      // A live event that arrived meanwhile may be newer than this answer, and the stream
      // sends only changes: never let an older status overwrite it.
      if (liveEvents === eventsBefore) update(fresh);
    } catch (e) {
      if (e.name !== "AbortError") showError(actionError, e, `${label} failed`);
    }
  }

  let liveEvents = 0;
  update(first);
  api(`/releases/${enc(id)}/coverage`, { signal }).then((c) => {
    if (!coverage) { coverage = c; drawChart(c); }
  }).catch((e) => {
    if (e.name !== "AbortError") chartBox.replaceChildren(alertBox(e, "Loading the coverage series failed"));
  });

  sse(`/releases/${enc(id)}/live`, {
    signal,
    onEvent: (name, data) => {
      if (name !== "status") return;
      liveEvents += 1;
      try {
        update(JSON.parse(data));
      } catch (e) {
        showError(liveError, e, "A live update could not be read");
      }
    },
    onState: (stateName, message) => {
      setText(live, stateName);
      live.className = `live live-${stateName}`;
      if (stateName === "live") showError(liveError, null);
      else if (message) showError(liveError, message, `Live updates (${stateName})`);
    },
  });
}

/** The policy as sentences: targeting, stages, gate, abort rule, priority, pace. */
export function policySummary(p) {
  const gate = p.gate || {};
  const rows = [
    ["Targeting", h("code", {}, JSON.stringify(p.target ?? { all: [] }))],
    ["Stages", (p.stages || [100]).map((s) => `${s}%`).join(" → ")],
    ["Gate", gate.auto_advance
      ? `advance automatically when ≥ ${fmtPct(gate.min_success_rate)} of ≥ ${gate.min_devices} reporting devices succeed` +
        `${gate.min_soak_secs ? `, after ${gate.min_soak_secs} s soak` : ""}` +
        `${gate.max_run_p99_ms != null ? `, run p99 ≤ ${gate.max_run_p99_ms} ms` : ""}`
      : "manual: an operator advances each stage"],
    ["Abort", abortText(p.abort)],
    ["Priority", String(p.priority ?? 0)],
    ["Pace window", p.pace_window_ms != null ? `${fmtNum(p.pace_window_ms)} ms` : "cloud default"],
  ];
  return h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function abortText(a) {
  if (!a) return "never automatically";
  const rules = [];
  if (a.max_failed_devices != null) rules.push(`≥ ${a.max_failed_devices} failed devices`);
  if (a.max_failure_rate != null) rules.push(`≥ ${fmtPct(a.max_failure_rate)} of ≥ ${a.min_executed ?? 1} reporting devices failed`);
  if (a.max_run_p99_ms != null) rules.push(`run p99 > ${a.max_run_p99_ms} ms over ≥ ${a.min_runs ?? 20} runs`);
  const kinds = (a.kinds || ["install", "run"]).join(" and ");
  return rules.length ? `when ${rules.join(" or ")} (counting ${kinds} failures)` : `rule set, no limits (counting ${kinds})`;
}
