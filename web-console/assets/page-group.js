// One group: its members (add/remove), the releases whose targeting names it, delete.

import { api } from "./api.js";
import { h, table, fmtTime, field, pageHeader, section, showError, alertBox, confirmDialog, enc } from "./ui.js";
import { releaseColumns } from "./page-releases.js";

const ids = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);

export async function render({ main, params, signal, may, navigate }) {
  const name = params.name;
  main.append(pageHeader(`Group ${name}`, { sub: h("a", { href: "#/groups" }, "All groups") }));
  const errors = h("div");
  const body = h("div");
  main.append(errors, body);
  const canManage = may("manage_groups");

  async function load() {
    showError(errors, null);
    let g;
    try {
      g = await api(`/groups/${enc(name)}`, { signal });
    } catch (e) {
      if (e.name !== "AbortError") showError(errors, e, "Loading the group failed");
      return;
    }
    const devices = g.devices || [];
    const memberError = h("div");
    const removeButton = (id) => h("button", {
      type: "button", class: "secondary small", "aria-label": `Remove ${id}`,
      onclick: () => change({ remove: [id] }, memberError),
    }, "Remove");
    const addInput = h("textarea", { rows: "2", placeholder: "dev-1, dev-2" });
    const addResult = h("div");
    body.replaceChildren(
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "Description"), h("dd", {}, g.description || "–"),
        h("dt", {}, "Members"), h("dd", { title: "Device ids listed in the group (they need not be registered yet)." }, String(g.members ?? devices.length)),
        h("dt", {}, "Created"), h("dd", {}, fmtTime(g.created_at_ms)))),
      section("Members",
        memberError,
        table([
          { title: "Device", cell: (id) => h("a", { href: `#/devices/${enc(id)}` }, id) },
          ...(canManage ? [{ title: "Action", cell: (id) => removeButton(id) }] : []),
        ], devices, { test: "group-members", caption: "Members", empty: "No members yet." }),
        canManage ? h("form", {
          class: "inline-form",
          onsubmit: (e) => { e.preventDefault(); change({ add: ids(addInput.value) }, addResult); },
        }, field("Device ids to add", addInput, { help: "Comma- or space-separated; devices not registered yet may be listed." }),
        h("div", { class: "actions field" }, h("button", { type: "submit", class: "primary" }, "Add members"))) : null,
        addResult),
      section("Releases that target this group",
        table(releaseColumns(), g.releases || [], { test: "group-releases", caption: "Releases naming this group", empty: "No release names this group in its targeting." })),
      canManage ? section("Delete", h("p", { class: "muted" }, "Releases that name a deleted group no longer match its devices."),
        h("button", {
          type: "button", class: "danger",
          onclick: async () => {
            const ok = await confirmDialog({
              title: `Delete group ${name}?`,
              body: h("p", {}, `The group and its ${devices.length} member entries are removed; ${(g.releases || []).length} release(s) name it in their targeting.`),
              confirmLabel: "Confirm", danger: true,
            });
            if (!ok) return;
            try {
              await api(`/groups/${enc(name)}`, { method: "DELETE", signal });
              navigate("#/groups");
            } catch (err) {
              if (err.name !== "AbortError") showError(errors, err, "Deleting the group failed");
            }
          },
        }, "Delete group")) : null);
  }

  async function change(delta, slot) {
    slot.replaceChildren();
    if (delta.add && !delta.add.length) {
      slot.append(alertBox("Give at least one device id."));
      return;
    }
    try {
      await api(`/groups/${enc(name)}/members`, { method: "POST", body: { add: [], remove: [], ...delta }, signal });
      await load();
    } catch (err) {
      if (err.name !== "AbortError") slot.replaceChildren(alertBox(err, "Changing members failed"));
    }
  }
  await load();
}
