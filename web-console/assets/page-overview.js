// Overview: the fleet (registered / online), active releases with stage and health, recent
// failures, and tunnel records per task over the last hour — one call, `GET /v1/overview`.

import { api } from "./api.js";
import { h, table, badge, fmtNum, fmtPct, pageHeader, section, showError, successRate, enc } from "./ui.js";
import { failureColumns } from "./page-failures.js";

const HELP = {
  registered: "Devices that have registered with this cloud.",
  online: "Devices with an open push stream to the cloud right now.",
  active: "Releases currently rolling out (state active).",
  paused: "Releases an operator or the gate paused.",
};

export async function render({ main, signal }) {
  const errors = h("div");
  const refreshButton = h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh");
  const updated = h("span", { class: "muted", role: "status" });
  main.append(pageHeader("Overview", { sub: "The fleet and its releases at a glance.", tools: [updated, refreshButton] }), errors);
  const body = h("div");
  main.append(body);

  async function load() {
    showError(errors, null);
    let o;
    try {
      o = await api("/overview", { signal });
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Loading the overview failed");
      return;
    }
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    const card = (key, label, value, help, extra) => h("div", { class: "figure" },
      h("dt", { title: help }, label, h("span", { class: "help", "aria-hidden": "true" }, "?"),
        h("span", { class: "sr-only" }, ` (${help})`)),
      h("dd", { "data-figure": key, title: help }, value, extra || null));
    const devices = o.devices || {};
    const releases = o.releases || {};
    const onlineShare = devices.registered ? devices.online / devices.registered : 0;
    body.replaceChildren(
      h("dl", { class: "stat-cards", "aria-label": "Fleet and releases" },
        card("registered", "Devices registered", fmtNum(devices.registered), HELP.registered),
        card("online", "Online now", fmtNum(devices.online), HELP.online,
          h("div", { class: "bar", role: "presentation" }, h("span", { style: `width:${Math.round(onlineShare * 100)}%` }))),
        card("active", "Active releases", fmtNum(releases.active), HELP.active),
        card("paused", "Paused releases", fmtNum(releases.paused), HELP.paused)),
      section("Active releases",
        table([
          { title: "Release", cell: (r) => h("a", { href: `#/releases/${enc(r.id)}` }, `${r.task} ${r.version}`) },
          { title: "State", cell: (r) => h("span", { title: r.state_reason || null }, badge(r.state), r.state_reason ? h("span", { class: "reason" }, r.state_reason) : null) },
          { title: "Stage", help: "Current stage (1-based) of the release's stages and its cumulative percentage of targeted devices.", cell: (r) => `${(r.stage ?? 0) + 1} of ${r.stages ?? "?"} · ${r.percent ?? "?"}%` },
          {
            title: "Installed", num: true, help: "Targeted devices running this version, of the devices the release targets now.",
            cell: (r) => h("span", {}, `${fmtNum(r.installed)} / ${fmtNum(r.targeted)}`,
              h("div", { class: "bar", role: "presentation" }, h("span", { style: `width:${r.targeted ? Math.round((100 * r.installed) / r.targeted) : 0}%` }))),
          },
          { title: "Failed devices", num: true, help: "Devices with at least one failure of the counted kinds.", cell: (r) => (r.failed_devices > 0 ? h("a", { href: `#/releases/${enc(r.id)}/failures` }, fmtNum(r.failed_devices)) : "0") },
          { title: "Success rate", num: true, help: "(executed − failed devices) ÷ executed, where executed = devices that reported an install outcome.", cell: (r) => fmtPct(r.success_rate ?? successRate(r.executed, r.failed_devices)) },
        ], o.active_releases || [], { test: "active-releases", caption: "Active releases", empty: "No release is rolling out." })),
      h("div", { class: "grid-2" },
        section("Recent failures",
          h("p", { class: "muted" }, "Newest first, at most 20, across releases."),
          table(failureColumns({ release: true }), o.recent_failures || [], { test: "recent-failures", caption: "Recent failures", empty: "No failures reported." })),
        section("Tunnel records, last hour",
          h("p", { class: "muted" }, "Records devices sent through the tunnel in the last hour, per task."),
          table([
            { title: "Task", cell: (t) => h("a", { href: `#/data?task=${enc(t.task)}` }, t.task) },
            { title: "Records", num: true, help: "Tunnel records received from devices for this task in the last hour.", cell: (t) => fmtNum(t.records) },
          ], o.records_last_hour || [], { test: "records-last-hour", caption: "Records per task, last hour", empty: "No records in the last hour." }))));
  }
  await load();
}
