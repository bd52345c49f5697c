// A release's failures: which devices failed, how, and their messages; filters kind and stage,
// paginated on the server (limit/offset).

import { api, query } from "./api.js";
import { h, detailPre, table, badge, fmtTime, fmtAgo, field, pageHeader, showError, loading, enc } from "./ui.js";

const LIMIT = 50;
const KINDS = [
  ["", "all kinds"], ["install_failed", "install failed"], ["run_failed", "run failed"], ["rolled_back", "rolled back"],
];

/** Columns of a Failure list (also used by the overview and the device page). */
export function failureColumns({ release = false } = {}) {
  return [
    { title: "Device", cell: (f) => h("a", { href: `#/devices/${enc(f.device_id)}` }, f.device_id) },
    {
      title: "Kind", help: "install failed, run failed or rolled back; for a failed run, the kind of failure (exception, deadline, memory…).",
      cell: (f) => h("span", {}, badge(f.kind), f.failure ? h("span", { class: "reason" }, f.failure) : null),
    },
    release
      ? { title: "Release", cell: (f) => h("a", { href: `#/releases/${enc(f.release_id)}` }, `${f.task} ${f.version}`) }
      : { title: "Stage", help: "The release stage (1-based) the device was in.", cell: (f) => (f.stage != null ? String(f.stage + 1) : "–") },
    { title: "When", cell: (f) => h("time", { title: fmtTime(f.at_ms) }, fmtAgo(f.at_ms)) },
    { title: "Message", cell: (f) => (f.detail ? detailPre(f.detail) : h("span", { class: "muted" }, "no message")) },
  ];
}

export async function render({ main, params, query: q, signal }) {
  const id = params.id;
  const state = { kind: q.get("kind") || "", stage: q.get("stage") || "", offset: 0 };
  const heading = pageHeader("Failures", {
    sub: h("span", {}, "Release ", h("a", { href: `#/releases/${enc(id)}` }, id), ": devices that failed and the message each sent."),
  });
  const kindSelect = h("select", {}, KINDS.map(([v, label]) => h("option", { value: v, selected: v === state.kind }, label)));
  const stageInput = h("input", { type: "number", min: "1", value: state.stage !== "" ? String(Number(state.stage) + 1) : "", placeholder: "all", inputmode: "numeric" });
  const errors = h("div");
  const results = h("div");
  const pager = h("div", { class: "pager" });
  main.append(heading,
    h("form", {
      class: "filters card", "aria-label": "Filter failures",
      onsubmit: (e) => { e.preventDefault(); apply(); },
    }, field("Kind", kindSelect), field("Stage", stageInput, { help: "1-based; empty for every stage." }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Apply filters"))),
    errors, results, pager);
  kindSelect.addEventListener("change", apply);

  api(`/releases/${enc(id)}`, { signal }).then((r) => {
    heading.querySelector("h1").textContent = `Failures of release ${r.task} ${r.version}`;
  }).catch(() => { /* the list below reports its own errors */ });

  function apply() {
    state.kind = kindSelect.value;
    state.stage = stageInput.value ? String(Math.max(0, Number(stageInput.value) - 1)) : "";
    state.offset = 0;
    history.replaceState(null, "", `#/releases/${enc(id)}/failures${query({ kind: state.kind, stage: state.stage })}`);
    load();
  }

  async function load() {
    results.replaceChildren(loading());
    showError(errors, null);
    try {
      const rows = await api(`/releases/${enc(id)}/failures${query({ kind: state.kind, stage: state.stage, limit: LIMIT, offset: state.offset })}`, { signal });
      results.replaceChildren(table(failureColumns(), rows, { test: "failures", caption: "Failures", empty: "No failures of this kind." }));
      pager.replaceChildren(
        h("button", { type: "button", class: "secondary", disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - LIMIT); load(); } }, "Previous page"),
        h("span", { class: "muted" }, rows.length ? `Failures ${state.offset + 1}–${state.offset + rows.length}` : ""),
        h("button", { type: "button", class: "secondary", disabled: rows.length < LIMIT, onclick: () => { state.offset += LIMIT; load(); } }, "Next page"));
    } catch (e) {
      if (e.name === "AbortError") return;
      results.replaceChildren();
      showError(errors, e, "Loading failures failed");
    }
  }
  await load();
}
