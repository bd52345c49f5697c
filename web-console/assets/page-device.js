// One device: profile, online state, installed task versions, groups, recent reports, failures.

import { api } from "./api.js";
import { h, detailPre, table, badge, fmtTime, fmtAgo, fmtMs, pageHeader, section, alertBox, enc } from "./ui.js";
import { failureColumns } from "./page-failures.js";

const PROFILE = [
  ["device_id", "Device id"], ["app_id", "App id"], ["app_version", "App version"], ["os", "OS"],
  ["os_version", "OS version"], ["model", "Model"], ["hardware_tier", "Hardware tier"], ["region", "Region"],
];

export async function render({ main, params, signal }) {
  const id = params.id;
  main.append(pageHeader(`Device ${id}`, { sub: h("a", { href: "#/devices" }, "All devices") }));
  let d;
  try {
    d = await api(`/devices/${enc(id)}`, { signal });
  } catch (e) {
    if (e.name !== "AbortError") main.append(alertBox(e, "Loading the device failed"));
    return;
  }
  const p = d.profile || {};
  const extra = Object.entries(p).filter(([k]) => !PROFILE.some(([key]) => key === k) && k !== "tags");
  main.append(
    h("div", { class: "card status-card" }, h("div", { class: "status-line" },
      h("span", { title: "Online: the device has an open push stream to the cloud now." }, "State: ", badge(d.online ? "online" : "offline")),
      h("span", { class: "muted" }, `Last seen ${fmtAgo(d.last_seen_ms)} (${fmtTime(d.last_seen_ms)})`),
      h("span", { class: "muted" }, `Registered ${fmtTime(d.registered_at_ms)}`))),
    h("div", { class: "grid-2" },
      section("Profile", h("dl", { class: "kv" },
        PROFILE.map(([k, label]) => [h("dt", {}, label), h("dd", {}, String(p[k] ?? "") || "–")]),
        h("dt", {}, "Tags"), h("dd", {}, (p.tags || []).join(", ") || "–"),
        extra.map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]))),
      section("Groups",
        (d.groups || []).length
          ? h("ul", {}, d.groups.map((g) => h("li", {}, h("a", { href: `#/groups/${enc(g)}` }, g))))
          : h("p", { class: "muted" }, "Not a member of any group."))),
    section("Tasks", table([
      { title: "Task", cell: (t) => h("a", { href: `#/tasks/${enc(t.task)}` }, t.task) },
      { title: "Version", cell: (t) => h("a", { href: `#/tasks/${enc(t.task)}/${enc(t.version)}` }, t.version) },
      { title: "State", help: "The install state the device reported for this task.", cell: (t) => badge(t.state) },
      { title: "Detail", cell: (t) => (t.detail ? detailPre(t.detail) : "–") },
      { title: "Updated", cell: (t) => h("time", { title: fmtTime(t.updated_at_ms) }, fmtAgo(t.updated_at_ms)) },
    ], d.tasks || [], { test: "device-tasks", caption: "Installed task versions", empty: "No task installed." })),
    section("Recent reports", table([
      { title: "Kind", cell: (e) => h("span", {}, badge(e.kind), e.failure ? h("span", { class: "reason" }, e.failure) : null) },
      { title: "Task", cell: (e) => (e.task ? `${e.task} ${e.version || ""}` : "–") },
      { title: "Release", cell: (e) => (e.release_id ? h("a", { href: `#/releases/${enc(e.release_id)}` }, e.release_id) : "–") },
      { title: "Duration", num: true, help: "Run duration reported by the device.", cell: (e) => fmtMs(e.duration_ms) },
      { title: "When", cell: (e) => h("time", { title: fmtTime(e.at_ms) }, fmtAgo(e.at_ms)) },
      { title: "Detail", cell: (e) => (e.detail ? detailPre(e.detail) : "–") },
    ], d.events || [], { test: "device-events", caption: "Recent reports", empty: "No report yet." })),
    section("Failures", table(failureColumns({ release: true }), d.failures || [], { test: "device-failures", caption: "Failures", empty: "No failures." })));
}
