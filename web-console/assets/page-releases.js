// Releases list: filters (task, state), newest first, paginated on the server with `before=seq`.

import { api, query } from "./api.js";
import { h, table, badge, fmtTime, fmtAgo, field, pageHeader, showError, loading, enc } from "./ui.js";

const STATES = ["", "active", "paused", "completed", "aborted", "superseded"];
const LIMIT = 50;

export function stageText(r) {
  const stages = (r.policy && r.policy.stages) || [];
  if (!stages.length) return `stage ${r.stage + 1}`;
  return `${r.stage + 1} of ${stages.length} · ${stages[r.stage] ?? stages[stages.length - 1]}%`;
}

export function releaseColumns() {
  return [
    { title: "Release", cell: (r) => h("a", { href: `#/releases/${enc(r.id)}` }, r.id) },
    { title: "Task", cell: (r) => h("a", { href: `#/tasks/${enc(r.task)}` }, r.task) },
    { title: "Version", cell: (r) => h("a", { href: `#/tasks/${enc(r.task)}/${enc(r.version)}` }, r.version) },
    {
      title: "State", help: "The release's state; hover for the reason it is in it.",
      cell: (r) => h("span", { title: r.state_reason || null }, badge(r.state),
        r.state_reason ? h("span", { class: "reason" }, r.state_reason) : null),
    },
    {
      title: "Stage", help: "Current stage (1-based) of the policy's stages, and that stage's cumulative percentage of targeted devices.",
      cell: (r) => stageText(r),
    },
    { title: "Created", cell: (r) => h("time", { title: fmtTime(r.created_at_ms) }, fmtAgo(r.created_at_ms)) },
  ];
}

export async function render({ main, query: q, signal, may }) {
  const state = { task: q.get("task") || "", state: q.get("state") || "", cursors: [] };
  const taskInput = h("input", { type: "search", value: state.task, placeholder: "any task", list: "task-names" });
  const taskList = h("datalist", { id: "task-names" });
  const stateSelect = h("select", {}, STATES.map((s) => h("option", { value: s, selected: s === state.state }, s || "any state")));
  const results = h("div", { "aria-live": "polite" });
  const errors = h("div");
  const pager = h("div", { class: "pager" });

  main.append(
    pageHeader("Releases", {
      sub: "Newest first. Each release rolls one task version out to its targeted devices in stages.",
      tools: may("create_release") || may("preview_release") ? h("a", { href: "#/releases/new", class: "button primary" }, "New release") : null,
    }),
    h("form", {
      class: "filters card", role: "search", "aria-label": "Filter releases",
      onsubmit: (e) => { e.preventDefault(); apply(); },
    },
    field("Filter by task", taskInput), taskList, field("State", stateSelect),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Apply filters"))),
    errors, results, pager);

  stateSelect.addEventListener("change", apply);
  api("/tasks", { signal }).then((tasks) => {
    taskList.replaceChildren(...tasks.slice(0, 500).map((t) => h("option", { value: t.name })));
  }).catch(() => { /* suggestions only; the list still works without them */ });

  function apply() {
    state.task = taskInput.value.trim();
    state.state = stateSelect.value;
    state.cursors = [];
    history.replaceState(null, "", `#/releases${query({ task: state.task, state: state.state })}`);
    load();
  }

  async function load() {
    results.replaceChildren(loading());
    showError(errors, null);
    const before = state.cursors[state.cursors.length - 1];
    try {
      const rows = await api(`/releases${query({ task: state.task, state: state.state, limit: LIMIT, before })}`, { signal });
      results.replaceChildren(table(releaseColumns(), rows, {
        test: "releases", caption: "Releases", empty: "No releases match these filters.",
      }));
      const page = state.cursors.length + 1;
      pager.replaceChildren(
        h("button", {
          type: "button", class: "secondary", disabled: state.cursors.length === 0,
          onclick: () => { state.cursors.pop(); load(); },
        }, "Previous page"),
        h("span", { class: "muted" }, `Page ${page} · ${rows.length} release${rows.length === 1 ? "" : "s"}`),
        h("button", {
          type: "button", class: "secondary", disabled: rows.length < LIMIT,
          onclick: () => { state.cursors.push(rows[rows.length - 1].seq); load(); },
        }, "Next page"));
    } catch (e) {
      if (e.name === "AbortError") return;
      results.replaceChildren();
      showError(errors, e, "Loading releases failed");
    }
  }
  await load();
}
