// Admin: operator tokens (create with a role, shown once; revoke), apps (enrollment secret shown
// once) and the audit log with filters. The server answers 403 to a non-admin.

import { api, query } from "./api.js";
import { h, table, badge, fmtTime, field, pageHeader, section, showError, loading, alertBox, confirmDialog, copyButton } from "./ui.js";

const ROLES = ["viewer", "developer", "release-manager", "admin"];

function shownOnce(text, what, test) {
  return h("div", { class: "secret", "data-test": test, role: "status" },
    h("strong", {}, `New ${what}:`), h("code", {}, text), copyButton(text),
    h("span", { class: "muted" }, "Copy it now: it will not be shown again."));
}

export async function render({ main, signal, may }) {
  main.append(pageHeader("Admin", { sub: "Operator tokens, enrolled apps and the audit log." }));
  if (!may("admin")) {
    main.append(alertBox("Your role is not admin: tokens, apps and the audit log are for admins."));
    return;
  }
  main.append(tokensSection(signal), appsSection(signal), auditSection(signal));
}

function tokensSection(signal) {
  const list = h("div", {}, loading());
  const listError = h("div");
  const name = h("input", { type: "text", required: true, autocomplete: "off" });
  const role = h("select", {}, ROLES.map((r) => h("option", { value: r, selected: r === "viewer" }, r)));
  const created = h("div", { "aria-live": "polite" });
  async function load() {
    showError(listError, null);
    try {
      const tokens = await api("/tokens", { signal });
      list.replaceChildren(table([
        { title: "Name", cell: (t) => t.name },
        { title: "Id", cell: (t) => h("code", {}, t.id) },
        { title: "Role", cell: (t) => t.role },
        { title: "Created", cell: (t) => fmtTime(t.created_at_ms) },
        { title: "State", cell: (t) => badge(t.revoked_at_ms ? "revoked" : "active") },
        {
          title: "Action",
          cell: (t) => (t.revoked_at_ms ? "–" : h("button", {
            type: "button", class: "danger small", "aria-label": `Revoke ${t.name}`,
            onclick: () => revoke(t),
          }, "Revoke")),
        },
      ], tokens, { test: "tokens", caption: "Operator tokens", empty: "No operator token besides the bootstrap admin." }));
    } catch (e) {
      if (e.name !== "AbortError") { list.replaceChildren(); showError(listError, e, "Loading tokens failed"); }
    }
  }
  async function revoke(t) {
    const ok = await confirmDialog({
      title: `Revoke token ${t.name}?`,
      body: h("p", {}, `Calls with this ${t.role} token are refused from now on. This cannot be undone.`),
      danger: true,
    });
    if (!ok) return;
    try {
      await api(`/tokens/${encodeURIComponent(t.id)}/revoke`, { method: "POST", signal });
      load();
    } catch (e) {
      if (e.name !== "AbortError") showError(listError, e, "Revoking failed");
    }
  }
  load();
  return section("Operator tokens",
    h("form", {
      class: "inline-form",
      onsubmit: async (e) => {
        e.preventDefault();
        created.replaceChildren();
        try {
          const body = await api("/tokens", { method: "POST", body: { name: name.value.trim(), role: role.value }, signal });
          const text = body.token;
          created.append(text ? shownOnce(text, `${role.value} token "${name.value.trim()}"`, "new-secret")
            : alertBox(`The cloud created the token but sent no token text: ${JSON.stringify(body)}`));
          name.value = "";
          load();
        } catch (err) {
          if (err.name !== "AbortError") created.append(alertBox(err, "Creating the token failed"));
        }
      },
    }, field("Token name", name), field("Role", role),
    h("div", { class: "actions field" }, h("button", { type: "submit", class: "primary" }, "Create token"))),
    created, listError, list);
}

function appsSection(signal) {
  const list = h("div", {}, loading());
  const listError = h("div");
  const appId = h("input", { type: "text", required: true, autocomplete: "off" });
  const created = h("div", { "aria-live": "polite" });
  async function load() {
    showError(listError, null);
    try {
      const apps = await api("/apps", { signal });
      list.replaceChildren(table([
        { title: "App id", cell: (a) => a.app_id },
        { title: "Created", cell: (a) => fmtTime(a.created_at_ms) },
      ], apps, { test: "apps", caption: "Apps", empty: "No app enrolled." }));
    } catch (e) {
      if (e.name !== "AbortError") { list.replaceChildren(); showError(listError, e, "Loading apps failed"); }
    }
  }
  load();
  return section("Apps",
    h("p", { class: "muted" }, "Devices of an app register with its enrollment secret."),
    h("form", {
      class: "inline-form",
      onsubmit: async (e) => {
        e.preventDefault();
        created.replaceChildren();
        try {
          const body = await api("/apps", { method: "POST", body: { app_id: appId.value.trim() }, signal });
          const text = body.enrollment_secret;
          created.append(text ? shownOnce(text, `enrollment secret for ${appId.value.trim()}`, "new-app-secret")
            : alertBox(`The cloud created the app but sent no secret: ${JSON.stringify(body)}`));
          appId.value = "";
          load();
        } catch (err) {
          if (err.name !== "AbortError") created.append(alertBox(err, "Creating the app failed"));
        }
      },
    }, field("App id", appId),
    h("div", { class: "actions field" }, h("button", { type: "submit", class: "primary" }, "Create app"))),
    created, listError, list);
}

function auditSection(signal) {
  const actor = h("input", { type: "text" });
  const method = h("select", {}, ["", "POST", "PUT", "PATCH", "DELETE"].map((m) => h("option", { value: m }, m || "any")));
  const path = h("input", { type: "text", placeholder: "/v1/releases" });
  const since = h("input", { type: "datetime-local" });
  const until = h("input", { type: "datetime-local" });
  const results = h("div", {}, loading());
  const errors = h("div");
  const LIMIT = 100;
  let cursorStack = [];
  async function load() {
    showError(errors, null);
    const before = cursorStack[cursorStack.length - 1];
    try {
      const rows = await api(`/audit${query({
        limit: LIMIT, actor: actor.value.trim(), method: method.value, path: path.value.trim(),
        since_ms: since.value ? new Date(since.value).getTime() : "",
        until_ms: before ?? (until.value ? new Date(until.value).getTime() : ""),
      })}`, { signal });
      results.replaceChildren(table([
        { title: "When", cell: (a) => fmtTime(a.at_ms) },
        { title: "Actor", cell: (a) => a.actor },
        { title: "Role", cell: (a) => a.role },
        { title: "Call", cell: (a) => h("code", {}, `${a.method} ${a.path}`) },
        { title: "Status", num: true, help: "HTTP status the cloud answered.", cell: (a) => h("span", { class: a.status >= 400 ? "status-bad" : null }, String(a.status)) },
      ], rows, { test: "audit", caption: "Audit log", empty: "No audit entries match." }),
      h("div", { class: "pager" },
        h("button", { type: "button", class: "secondary", disabled: !cursorStack.length, onclick: () => { cursorStack.pop(); load(); } }, "Newer entries"),
        h("button", { type: "button", class: "secondary", disabled: rows.length < LIMIT, onclick: () => { cursorStack.push(rows[rows.length - 1].at_ms - 1); load(); } }, "Older entries")));
    } catch (e) {
      if (e.name !== "AbortError") { results.replaceChildren(); showError(errors, e, "Loading the audit log failed"); }
    }
  }
  load();
  return section("Audit log",
    h("p", { class: "muted" }, "Every call that changed something, newest first."),
    h("form", {
      class: "filters", "aria-label": "Filter the audit log",
      onsubmit: (e) => { e.preventDefault(); cursorStack = []; load(); },
    }, field("Actor", actor), field("Method", method), field("Path", path), field("Since", since), field("Until", until),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Filter"))),
    errors, results);
}
