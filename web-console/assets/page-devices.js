// Devices: search by id prefix and profile fields; ordered by id and paginated on the server
// (`after=<next>`), so a fleet of a million devices is never fetched whole.

import { api, query } from "./api.js";
import { h, table, badge, fmtTime, fmtAgo, field, pageHeader, showError, loading, enc } from "./ui.js";

const LIMIT = 50;
const FILTERS = [
  ["app_id", "App id"], ["app_version", "App version"], ["os", "OS"], ["os_version", "OS version"],
  ["model", "Model"], ["hardware_tier", "Hardware tier"], ["region", "Region"], ["group", "Group"],
];

export async function render({ main, query: q, signal }) {
  const search = h("input", { type: "search", value: q.get("q") || "", placeholder: "device id prefix", autocomplete: "off", spellcheck: "false" });
  const inputs = Object.fromEntries(FILTERS.map(([k]) => [k, h("input", { type: "text", value: q.get(k) || "" })]));
  const errors = h("div");
  const results = h("div", { "aria-live": "polite" });
  const pager = h("div", { class: "pager" });
  const state = { pages: [""] }; // cursors: pages[i] is the `after` of page i

  main.append(pageHeader("Devices", { sub: "Registered devices, ordered by id. Search by id prefix and profile fields." }),
    h("form", {
      class: "filters card", role: "search", "aria-label": "Device filters",
      onsubmit: (e) => { e.preventDefault(); apply(); },
    },
    field("Search devices", search),
    FILTERS.map(([k, label]) => field(label, inputs[k])),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Search"))),
    errors, results, pager);

  const params = () => ({
    q: search.value.trim(),
    ...Object.fromEntries(FILTERS.map(([k]) => [k, inputs[k].value.trim()])),
  });

  function apply() {
    state.pages = [""];
    history.replaceState(null, "", `#/devices${query(params())}`);
    load();
  }

  async function load() {
    results.replaceChildren(loading());
    showError(errors, null);
    const after = state.pages[state.pages.length - 1];
    try {
      const page = await api(`/devices${query({ ...params(), limit: LIMIT, after })}`, { signal });
      const rows = page.devices;
      results.replaceChildren(table([
        { title: "Device", cell: (d) => h("a", { href: `#/devices/${enc(d.id)}` }, d.id) },
        { title: "App", cell: (d) => `${d.app_id || d.profile?.app_id || ""} ${d.profile?.app_version || ""}`.trim() },
        { title: "OS", cell: (d) => `${d.profile?.os || ""} ${d.profile?.os_version || ""}`.trim() || "–" },
        { title: "Model", cell: (d) => d.profile?.model || "–" },
        { title: "Tier", help: "Hardware tier from the device's profile.", cell: (d) => d.profile?.hardware_tier || "–" },
        { title: "Region", cell: (d) => d.profile?.region || "–" },
        { title: "Online", help: "Online: the device has an open push stream to the cloud now.", cell: (d) => badge(d.online ? "online" : "offline") },
        { title: "Last seen", help: "Last time the device talked to the cloud.", cell: (d) => h("time", { title: fmtTime(d.last_seen_ms) }, fmtAgo(d.last_seen_ms)) },
      ], rows, { test: "devices", caption: "Devices", empty: state.pages.length > 1 ? "No more devices: the previous page was the last." : "No device matches." }));
      const n = state.pages.length;
      pager.replaceChildren(
        h("button", { type: "button", class: "secondary", disabled: n === 1, onclick: () => { state.pages.pop(); load(); } }, "Previous page"),
        h("span", { class: "muted" }, `Page ${n} · ${rows.length} device${rows.length === 1 ? "" : "s"}`),
        h("button", { type: "button", class: "secondary", disabled: !page.next, onclick: () => { state.pages.push(page.next); load(); } }, "Next page"));
    } catch (e) {
      if (e.name === "AbortError") return;
      results.replaceChildren();
      pager.replaceChildren();
      showError(errors, e, "Searching devices failed");
    }
  }
  await load();
}
