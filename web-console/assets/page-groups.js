// Device groups: the list and a form to create one (named in release targeting as {"group": …}).

import { api } from "./api.js";
import { h, table, fmtTime, fmtNum, field, pageHeader, section, showError, loading, alertBox, enc } from "./ui.js";

export async function render({ main, signal, may, navigate }) {
  main.append(pageHeader("Groups", { sub: "Named sets of devices that release targeting can name." }));
  const errors = h("div");
  const list = h("div", {}, loading());
  main.append(errors, section("All groups", list));
  async function load() {
    showError(errors, null);
    try {
      const groups = await api("/groups", { signal });
      list.replaceChildren(table([
        { title: "Group", cell: (g) => h("a", { href: `#/groups/${enc(g.name)}` }, g.name) },
        { title: "Description", cell: (g) => g.description || "–" },
        { title: "Members", num: true, help: "Device ids listed in the group (they need not be registered yet).", cell: (g) => fmtNum(g.members) },
        { title: "Created", cell: (g) => fmtTime(g.created_at_ms) },
      ], groups, { test: "groups", caption: "Groups", empty: "No group yet." }));
    } catch (e) {
      if (e.name !== "AbortError") { list.replaceChildren(); showError(errors, e, "Loading groups failed"); }
    }
  }
  await load();
  if (may("manage_groups")) {
    const name = h("input", { type: "text", required: true, autocomplete: "off" });
    const desc = h("input", { type: "text" });
    const result = h("div");
    main.append(section("Create a group", h("form", {
      class: "inline-form",
      onsubmit: async (e) => {
        e.preventDefault();
        result.replaceChildren();
        try {
          const g = await api("/groups", { method: "POST", body: { name: name.value.trim(), description: desc.value.trim() }, signal });
          navigate(`#/groups/${enc((g && g.name) || name.value.trim())}`);
        } catch (err) {
          if (err.name !== "AbortError") result.append(alertBox(err, "Creating the group failed"));
        }
      },
    }, field("Group name", name), field("Description", desc),
    h("div", { class: "actions field" }, h("button", { type: "submit", class: "primary" }, "Create group"))), result));
  }
}
