// New release: the policy editor (targeting tree, stages, gate, abort, priority, pace), the
// server's preview of who gets which version at each stage, and start with the preview's salt.
// Validation is the API's: its 400 message names a field path (`policy.gate.min_success_rate: …`)
// and is shown beside that field.

import { api } from "./api.js";
import { h, field, pageHeader, section, table, alertBox, fmtNum, uid, enc } from "./ui.js";

// Target node kinds, as `cloud-deploy/src/release/target.rs` spells them.
const KINDS = [
  ["everyone", "Everyone (no condition)"],
  ["all", "All of (every condition holds)"],
  ["any", "Any of (at least one holds)"],
  ["not", "Not (the condition does not hold)"],
  ["group", "Device group"],
  ["app_id", "App id"],
  ["app_version", "App version (semver requirement)"],
  ["os", "OS"],
  ["os_version", "OS version (semver requirement)"],
  ["model", "Model is one of"],
  ["hardware_tier", "Hardware tier is one of"],
  ["region", "Region is one of"],
  ["tag", "Has tag"],
  ["device_ids", "Device id is one of"],
];
const LIST_KINDS = new Set(["model", "hardware_tier", "region", "device_ids"]);
const PLACEHOLDER = {
  group: "e.g. beta-testers", app_id: "e.g. shop", app_version: "e.g. >=5.2, <6", os: "e.g. android",
  os_version: "e.g. >=14", model: "e.g. Pixel 8, SM-S911B", hardware_tier: "e.g. high, mid", region: "e.g. eu, us",
  tag: "e.g. beta", device_ids: "e.g. d1, d2",
};

const splitList = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

export async function render({ main, query: q, signal, may }) {
  const canPreview = may("preview_release");
  const canCreate = may("create_release");
  main.append(pageHeader("New release", {
    sub: "Choose a task version and a policy, preview who gets which version at each stage, then start.",
  }));
  if (!canPreview && !canCreate) {
    main.append(h("p", {}, "Your role may not preview or create releases."));
    return;
  }

  // Error slots by field path; `errorAt` finds the longest registered prefix of a message's path.
  const slots = new Map(); // path -> {slot, control}
  const register = (path, slot, control) => slots.set(path, { slot, control });
  const generalErrors = h("div");

  const fieldWith = (label, control, path, opts = {}) => {
    const wrap = field(label, control, { ...opts, errorFor: path });
    register(path, wrap.querySelector(".field-error"), control);
    return wrap;
  };

  // ---- task and version ----
  const taskInput = h("input", { type: "text", list: "nr-tasks", required: true, autocomplete: "off", value: q.get("task") || "" });
  const versionInput = h("input", { type: "text", list: "nr-versions", required: true, autocomplete: "off", value: q.get("version") || "" });
  const taskList = h("datalist", { id: "nr-tasks" });
  const versionList = h("datalist", { id: "nr-versions" });
  api("/tasks", { signal }).then((tasks) => taskList.replaceChildren(...tasks.slice(0, 500).map((t) => h("option", { value: t.name }))))
    .catch(() => {});
  let lastTask = "";
  const loadVersions = () => {
    const task = taskInput.value.trim();
    if (!task || task === lastTask) return;
    lastTask = task;
    api(`/tasks/${enc(task)}/versions`, { signal }).then((vs) => {
      versionList.replaceChildren(...vs.slice(0, 200).map((v) => h("option", { value: v.version })));
      // The API lists versions newest first: offer the newest.
      if (!versionInput.value && vs.length) versionInput.value = vs[0].version;
    }).catch(() => {});
  };
  taskInput.addEventListener("change", loadVersions);
  if (taskInput.value) loadVersions();

  // ---- targeting tree ----
  const targetRoot = h("div");
  let rootNode = newNode("everyone");
  const groupList = h("datalist", { id: "nr-groups" });
  api("/groups", { signal }).then((gs) => groupList.replaceChildren(...gs.slice(0, 500).map((g) => h("option", { value: g.name }))))
    .catch(() => {});

  function newNode(kind) {
    return { kind, value: "", children: kind === "not" ? [newNode("group")] : [] };
  }

  function nodeToTarget(node) {
    switch (node.kind) {
      case "everyone": return { all: [] };
      case "all": case "any": return { [node.kind]: node.children.map(nodeToTarget) };
      case "not": return { not: nodeToTarget(node.children[0] || newNode("everyone")) };
      default: return { [node.kind]: LIST_KINDS.has(node.kind) ? splitList(node.value) : node.value.trim() };
    }
  }

  // "Targeting" → "Condition 1", "Condition 1" → "Condition 1.2": a node's position for its label.
  const childLabel = (label, i) => (label === "Targeting" ? `Condition ${i + 1}` : `${label}.${i + 1}`);

  // Renders a node; `path` is its policy path (policy.target, policy.target.all[0], …) and
  // `label` its human position ("Targeting", "Condition 1.2").
  function renderNode(node, path, label, onRemove) {
    const kindSelect = h("select", {}, KINDS.filter(([k]) => k !== "everyone" || path === "policy.target")
      .map(([k, text]) => h("option", { value: k, selected: k === node.kind }, text)));
    kindSelect.addEventListener("change", () => {
      const fresh = newNode(kindSelect.value);
      node.kind = fresh.kind;
      node.children = fresh.children;
      node.value = "";
      redrawTargets();
      changed();
      const again = targetRoot.querySelector(`[data-path="${CSS.escape(path)}"] select`);
      if (again) again.focus();
    });
    const box = h("div", { class: "target-node", "data-path": path });
    const row = h("div", { class: "row" }, fieldWith(label, kindSelect, path));
    box.append(row);
    if (["all", "any"].includes(node.kind)) {
      const kids = h("div", { class: "target-children" });
      node.children.forEach((child, i) => {
        kids.append(renderNode(child, `${path}.${node.kind}[${i}]`, childLabel(label, i),
          () => { node.children.splice(i, 1); redrawTargets(); changed(); }));
      });
      kids.append(h("button", {
        type: "button", class: "secondary small",
        onclick: () => { node.children.push(newNode("group")); redrawTargets(); changed(); },
      }, `Add condition to ${label.toLowerCase()}`));
      box.append(kids);
    } else if (node.kind === "not") {
      box.append(h("div", { class: "target-children" },
        renderNode(node.children[0], `${path}.not`, childLabel(label, 0), null)));
    } else if (node.kind !== "everyone") {
      const input = h("input", {
        type: "text", value: node.value, placeholder: PLACEHOLDER[node.kind] || "",
        list: node.kind === "group" ? "nr-groups" : null,
      });
      input.addEventListener("input", () => { node.value = input.value; changed(); });
      row.append(fieldWith(label === "Targeting" ? "Match value" : `Match value ${label.slice("Condition ".length)}`, input, `${path}.${node.kind}`,
        { help: LIST_KINDS.has(node.kind) ? "Comma-separated." : null }));
    }
    if (onRemove) row.append(h("button", { type: "button", class: "secondary small", onclick: onRemove }, `Remove ${label.toLowerCase()}`));
    return box;
  }

  function redrawTargets() {
    for (const key of [...slots.keys()]) if (key.startsWith("policy.target")) slots.delete(key);
    targetRoot.replaceChildren(renderNode(rootNode, "policy.target", "Targeting", null));
  }

  // ---- stages, gate, abort, priority, pace ----
  const stagesInput = h("input", { type: "text", value: "1, 10, 100", inputmode: "decimal" });
  const autoAdvance = h("input", { type: "checkbox" });
  const minSuccess = h("input", { type: "number", step: "0.01", min: "0", max: "1", value: "0.95" });
  const minDevices = h("input", { type: "number", step: "1", min: "0", value: "1" });
  const minSoak = h("input", { type: "number", step: "1", min: "0", value: "0" });
  const gateP99 = h("input", { type: "number", step: "1", min: "1", placeholder: "no limit" });
  const abortOn = h("input", { type: "checkbox" });
  const maxFailedDevices = h("input", { type: "number", step: "1", min: "0", placeholder: "no limit" });
  const maxFailureRate = h("input", { type: "number", step: "0.01", min: "0", max: "1", placeholder: "no limit" });
  const minExecuted = h("input", { type: "number", step: "1", min: "0", value: "1" });
  const kindInstall = h("input", { type: "checkbox", checked: true });
  const kindRun = h("input", { type: "checkbox", checked: true });
  const abortP99 = h("input", { type: "number", step: "1", min: "1", placeholder: "no limit" });
  const minRuns = h("input", { type: "number", step: "1", min: "0", value: "20" });
  const priority = h("input", { type: "number", step: "1", value: "0" });
  const pace = h("input", { type: "number", step: "1000", min: "0", max: "3600000", placeholder: "cloud default" });

  const check = (control, text, path) => {
    const id = uid("c");
    control.id = id;
    const slot = h("div", { class: "field-error", "data-error-for": path });
    register(path, slot, control);
    return h("div", {}, h("div", { class: "check" }, control, h("label", { for: id }, text)), slot);
  };
  const abortFields = h("div", { class: "grid-2" },
    fieldWith("Abort at failed devices", maxFailedDevices, "policy.abort.max_failed_devices", { help: "Abort when at least this many devices failed." }),
    fieldWith("Abort at failure rate", maxFailureRate, "policy.abort.max_failure_rate", { help: "Abort when at least this share (0–1) of reporting devices failed." }),
    fieldWith("Minimum reporting devices before aborting", minExecuted, "policy.abort.min_executed", { help: "Reporting devices needed before the limits above apply." }),
    fieldWith("Abort at run p99 (ms)", abortP99, "policy.abort.max_run_p99_ms", { help: "Abort when the 99th-percentile run time exceeds this." }),
    fieldWith("Minimum runs before the p99 limit", minRuns, "policy.abort.min_runs"),
    h("fieldset", { class: "plain" }, h("legend", {}, "Failures that count"),
      check(kindInstall, "Install failures", "policy.abort.kinds"), check(kindRun, "Run failures", "policy.abort.kinds[1]")));
  const syncAbort = () => { abortFields.hidden = !abortOn.checked; };
  abortOn.addEventListener("change", syncAbort);
  syncAbort();

  const numOrNull = (input) => (input.value.trim() === "" ? undefined : Number(input.value));

  function policy() {
    const stages = splitList(stagesInput.value).map((s) => (Number.isNaN(Number(s)) ? s : Number(s)));
    const p = {
      target: nodeToTarget(rootNode),
      stages,
      gate: {
        auto_advance: autoAdvance.checked,
        min_success_rate: numOrNull(minSuccess) ?? 0.95,
        min_devices: numOrNull(minDevices) ?? 1,
        min_soak_secs: numOrNull(minSoak) ?? 0,
      },
      priority: numOrNull(priority) ?? 0,
    };
    if (numOrNull(gateP99) !== undefined) p.gate.max_run_p99_ms = numOrNull(gateP99);
    if (abortOn.checked) {
      p.abort = {
        min_executed: numOrNull(minExecuted) ?? 1,
        kinds: [kindInstall.checked && "install", kindRun.checked && "run"].filter(Boolean),
        min_runs: numOrNull(minRuns) ?? 20,
      };
      if (numOrNull(maxFailedDevices) !== undefined) p.abort.max_failed_devices = numOrNull(maxFailedDevices);
      if (numOrNull(maxFailureRate) !== undefined) p.abort.max_failure_rate = numOrNull(maxFailureRate);
      if (numOrNull(abortP99) !== undefined) p.abort.max_run_p99_ms = numOrNull(abortP99);
    }
    if (numOrNull(pace) !== undefined) p.pace_window_ms = numOrNull(pace);
    return p;
  }

  // ---- preview and start ----
  const previewBox = h("div", { "aria-live": "polite" });
  const jsonView = h("pre", { class: "block", tabindex: "0" });
  const previewButton = h("button", { type: "button", class: canCreate ? "secondary" : "primary", onclick: doPreview }, "Preview");
  const startButton = h("button", { type: "button", class: "primary", onclick: doStart }, "Start release");
  const startNote = h("p", { class: "muted", id: uid("note") });
  let preview = null; // {salt, stages, body}

  function changed() {
    jsonView.textContent = JSON.stringify(policy(), null, 2);
    if (preview) {
      preview = null;
      previewBox.replaceChildren(h("p", { class: "muted" }, "The policy changed: preview again to see who gets which version."));
    }
    syncStart();
  }
  function syncStart() {
    if (!canPreview) {
      startNote.textContent = "";
      return;
    }
    startNote.textContent = preview
      ? "Starting takes exactly the previewed devices."
      : "Preview first: the release then takes exactly the devices the preview showed.";
    startButton.disabled = !preview;
  }

  function clearErrors() {
    generalErrors.replaceChildren();
    for (const { slot, control } of slots.values()) {
      slot.replaceChildren();
      control.removeAttribute("aria-invalid");
    }
  }

  function showApiError(e) {
    const message = e.message.replace(/^\d{3} /, "");
    const found = message.match(/\b((?:policy|task|version|salt)(?:\.[a-z_]+|\[\d+\])*)\s*:/);
    if (found) {
      let path = found[1];
      while (path && !slots.has(path)) {
        const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
        path = cut > 0 ? path.slice(0, cut) : "";
      }
      if (path) {
        const { slot, control } = slots.get(path);
        slot.replaceChildren(alertBox(message));
        control.setAttribute("aria-invalid", "true");
        control.focus();
        return;
      }
    }
    generalErrors.replaceChildren(alertBox(e));
  }

  const body = () => ({ task: taskInput.value.trim(), version: versionInput.value.trim(), policy: policy() });

  async function doPreview() {
    clearErrors();
    previewButton.disabled = true;
    previewBox.replaceChildren(h("p", { class: "muted", role: "status" }, "Computing the preview…"));
    const sent = body();
    try {
      const result = await api("/releases/preview", { method: "POST", body: sent, signal });
      preview = { salt: result.salt, stages: result.stages, sent };
      renderPreview(sent, result.stages);
    } catch (e) {
      if (e.name === "AbortError") return;
      previewBox.replaceChildren();
      showApiError(e);
    } finally {
      previewButton.disabled = false;
      syncStart();
    }
  }

  function renderPreview(sent, stages) {
    const versions = [];
    for (const s of stages) for (const v of Object.keys(s.versions || {})) if (!versions.includes(v)) versions.push(v);
    versions.sort((a, b) => (a === sent.version ? -1 : b === sent.version ? 1 : a === "none" ? 1 : b === "none" ? -1 : a.localeCompare(b)));
    const cols = [
      { title: "Stage", cell: (s) => String(s.stage + 1) },
      { title: "Percent", num: true, help: "Cumulative share of targeted devices at this stage.", cell: (s) => `${s.percent}%` },
      ...versions.map((v) => ({
        title: v === "none" ? "No version" : v === sent.version ? `${v} (this release)` : v,
        num: true,
        help: v === "none" ? "Registered devices that would run no version of this task." : `Registered devices that would run version ${v}.`,
        cell: (s) => fmtNum((s.versions || {})[v] || 0),
      })),
    ];
    previewBox.replaceChildren(
      h("p", {}, `Who gets which version of ${sent.task} at each stage (registered devices now).`),
      table(cols, stages, { test: "preview", caption: "Preview: devices per version at each stage", empty: "The preview has no stages." }));
  }

  async function doStart() {
    clearErrors();
    startButton.disabled = true;
    const sent = preview ? { ...preview.sent, salt: preview.salt } : body();
    try {
      const row = await api("/releases", { method: "POST", body: sent, signal });
      location.hash = `#/releases/${enc(row.id)}`;
    } catch (e) {
      if (e.name === "AbortError") return;
      showApiError(e);
      syncStart();
    }
  }

  redrawTargets();
  const form = h("form", { class: "policy-form", novalidate: true, onsubmit: (e) => { e.preventDefault(); } },
    section("What to release",
      h("div", { class: "grid-2" },
        fieldWith("Task", taskInput, "task", { help: "The task's name." }),
        fieldWith("Version", versionInput, "version", { help: "A published version of that task (semver)." })),
      taskList, versionList),
    section("Who gets it",
      h("p", { class: "muted" }, "Which registered devices the release is for. Combine conditions with All of / Any of / Not."),
      targetRoot, groupList),
    section("Rollout pace",
      fieldWith("Stages", stagesInput, "policy.stages", { help: "Cumulative percentages of targeted devices, comma-separated and increasing, e.g. 1, 10, 100." }),
      h("div", { class: "grid-2" },
        fieldWith("Priority", priority, "policy.priority", { help: "Higher wins when several active releases of this task target a device." }),
        fieldWith("Pace window (ms)", pace, "policy.pace_window_ms", { help: "Devices spread their pulls over this window (at most 3,600,000 ms = 1 hour); empty for the cloud's default." }))),
    section("When to move on: gate",
      check(autoAdvance, "Advance automatically when the conditions hold", "policy.gate.auto_advance"),
      h("div", { class: "grid-2" },
        fieldWith("Minimum success rate", minSuccess, "policy.gate.min_success_rate", { help: "Share (0–1) of reporting devices that installed and ran without failure." }),
        fieldWith("Minimum reporting devices", minDevices, "policy.gate.min_devices", { help: "Reporting devices needed before the success rate counts." }),
        fieldWith("Minimum soak (seconds)", minSoak, "policy.gate.min_soak_secs", { help: "Time a stage must have run before it may advance." }),
        fieldWith("Maximum run p99 (ms)", gateP99, "policy.gate.max_run_p99_ms", { help: "Advance only while successful runs' p99 is at most this; empty for no latency gate." }))),
    section("When to stop: abort rule",
      check(abortOn, "Abort automatically", "policy.abort"),
      abortFields),
    h("details", { class: "card" }, h("summary", {}, "Policy as JSON (what is sent)"), jsonView),
    section("Preview and start",
      generalErrors,
      h("div", { class: "actions" }, canPreview ? previewButton : null, canCreate ? startButton : null),
      canCreate ? startNote : null,
      previewBox));
  form.addEventListener("input", () => changed());
  form.addEventListener("change", () => changed());
  main.append(form);
  changed();
}
