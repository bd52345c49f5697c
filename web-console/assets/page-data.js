// Data: a task's tunnel records with filters (newest first) and the JSON Lines export.

import { api, query } from "./api.js";
import { h, detailPre, table, fmtTime, field, pageHeader, section, showError, loading, download, alertBox, enc } from "./ui.js";

const toMs = (v) => (v ? new Date(v).getTime() : "");

export async function render({ main, query: q, signal }) {
  const task = h("input", { type: "text", list: "data-tasks", value: q.get("task") || "" });
  const taskList = h("datalist", { id: "data-tasks" });
  const device = h("input", { type: "text", value: q.get("device") || "" });
  const version = h("input", { type: "text", value: q.get("version") || "" });
  const from = h("input", { type: "datetime-local" });
  const to = h("input", { type: "datetime-local" });
  const limit = h("select", {}, ["50", "100", "500"].map((n) => h("option", { value: n }, n)));
  const errors = h("div");
  const results = h("div", { "aria-live": "polite" });
  const exportResult = h("div");
  const pager = h("div", { class: "pager" });
  let cursors = []; // to_ms of each older page (records are newest first)
  api("/tasks", { signal }).then((ts) => taskList.replaceChildren(...ts.slice(0, 500).map((t) => h("option", { value: t.name })))).catch(() => {});

  const filters = () => ({
    task: task.value.trim(), device: device.value.trim(), version: version.value.trim(),
    from_ms: toMs(from.value), to_ms: toMs(to.value),
  });
  main.append(pageHeader("Data", { sub: "Records tasks sent from devices through the tunnel, newest first." }),
    h("form", {
      class: "filters card", "aria-label": "Filter records",
      onsubmit: (e) => { e.preventDefault(); cursors = []; history.replaceState(null, "", `#/data${query({ task: task.value.trim(), device: device.value.trim(), version: version.value.trim() })}`); load(); },
    },
    field("Task", task), taskList, field("Device", device), field("Version", version),
    field("From", from), field("To", to), field("Show", limit),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Show records"),
      h("button", { type: "button", class: "secondary", onclick: exportAll }, "Export JSON Lines"))),
    exportResult, errors, section("Records", results, pager));

  async function load() {
    results.replaceChildren(loading());
    showError(errors, null);
    try {
      const f = filters();
      if (cursors.length) f.to_ms = cursors[cursors.length - 1];
      const rows = await api(`/records${query({ ...f, limit: limit.value })}`, { signal });
      pager.replaceChildren(
        h("button", { type: "button", class: "secondary", disabled: !cursors.length, onclick: () => { cursors.pop(); load(); } }, "Newer records"),
        h("button", {
          type: "button", class: "secondary", disabled: rows.length < Number(limit.value),
          // The API has no cursor: the next page is "produced before the oldest record shown".
          onclick: () => { cursors.push(Math.min(...rows.map((r) => r.created_at_ms))); load(); },
        }, "Older records"));
      results.replaceChildren(
        h("p", { class: "muted" }, `${rows.length} record${rows.length === 1 ? "" : "s"}${cursors.length ? " (older page)" : ""}; at most ${limit.value} a page, newest first.`),
        table([
          { title: "Device", cell: (r) => h("a", { href: `#/devices/${enc(r.device_id)}` }, r.device_id) },
          { title: "Task", cell: (r) => `${r.task} ${r.version}` },
          { title: "Created", help: "When the device produced the record.", cell: (r) => fmtTime(r.created_at_ms) },
          { title: "Received", help: "When the cloud received it.", cell: (r) => fmtTime(r.received_at_ms) },
          { title: "Payload", cell: (r) => detailPre(JSON.stringify(r.payload)) },
        ], rows, { test: "records", caption: "Records", empty: "No records match." }));
    } catch (e) {
      if (e.name === "AbortError") return;
      results.replaceChildren();
      showError(errors, e, "Loading records failed");
    }
  }

  async function exportAll() {
    exportResult.replaceChildren(h("p", { class: "muted", role: "status" }, "Exporting…"));
    try {
      const response = await api(`/records/export${query(filters())}`, { raw: true, signal });
      const blob = await response.blob();
      const name = `walle-records-${task.value.trim() || "all"}-${new Date().toISOString().replace(/[:.]/g, "-")}.jsonl`;
      download(new Blob([blob], { type: "application/x-ndjson" }), name);
      exportResult.replaceChildren(h("p", { class: "notice", role: "status" }, `Exported ${name} (${blob.size} bytes).`));
    } catch (e) {
      if (e.name !== "AbortError") exportResult.replaceChildren(alertBox(e, "Export failed"));
    }
  }
  await load();
}
