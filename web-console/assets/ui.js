// DOM helpers shared by every page: element builder, tables, figures, alerts, dialogs, formats.
// No framework: a page builds its DOM with `h()` and replaces parts of it when data arrives.

/** Builds an element: h("a", {href: "#/x", class: "y"}, "text", child, [more children]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key in el && typeof value !== "string" && key !== "list") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** An alert placed next to what failed: role="alert" with the API's error text. */
export function alertBox(error, prefix = "") {
  const text = error instanceof Error ? error.message : String(error);
  return h("div", { class: "alert", role: "alert" }, prefix ? `${prefix}: ${text}` : text);
}

/** Replaces the contents of a slot with an alert for `error` (or clears it when null). */
export function showError(slot, error, prefix) {
  slot.replaceChildren(error ? alertBox(error, prefix) : "");
}

/** A "Loading…" placeholder that screen readers announce politely. */
export const loading = (what = "Loading…") => h("p", { class: "muted", role: "status" }, what);

/**
 * A table inside a horizontally scrolling wrapper (never wider than the screen).
 * columns: [{title, cell: row => Node|string, help?, num?: bool}]
 */
export function table(columns, rows, { test, caption, empty = "Nothing to show." } = {}) {
  // Focusable so keyboard users can scroll a table wider than a phone screen.
  const wrap = h("div", { class: "table-wrap", tabindex: rows.length ? "0" : null, role: rows.length ? "group" : null, "aria-label": rows.length ? caption || "Table" : null });
  if (!rows.length) {
    wrap.append(h("p", { class: "muted empty", dataset: test ? { test } : undefined }, empty));
    return wrap;
  }
  // Explicit roles keep the table semantics when a phone's CSS stacks rows as cards.
  const thead = h("thead", { role: "rowgroup" }, h("tr", { role: "row" }, columns.map((c) =>
    h("th", { scope: "col", role: "columnheader", title: c.help, class: c.num ? "num" : null }, c.title,
      c.help ? h("span", { class: "sr-only" }, ` (${c.help})`) : null))));
  const tbody = h("tbody", { role: "rowgroup" }, rows.map((row) => h("tr", { role: "row" }, columns.map((c) => {
    const value = c.cell(row);
    return h("td", { role: "cell", class: c.num ? "num" : null, "data-label": c.title }, value ?? "–");
  }))));
  wrap.append(h("table", { role: "table", class: "stack", dataset: test ? { test } : undefined },
    caption ? h("caption", { class: "sr-only" }, caption) : null, thead, tbody));
  return wrap;
}

/** A <dl> of figures: [{key, label, value, help}] → <dt title=help>label</dt><dd data-figure=key>. */
export function figures(items, { live = false } = {}) {
  return h("dl", { class: "figures", "aria-live": live ? "polite" : null },
    items.map((f) => h("div", { class: "figure" },
      h("dt", { title: f.help }, f.label, f.help ? h("span", { class: "help", "aria-hidden": "true" }, "?") : null,
        f.help ? h("span", { class: "sr-only" }, ` (${f.help})`) : null),
      h("dd", { "data-figure": f.key, title: f.help }, f.value ?? "–"))));
}

/** A device's message (traceback…) in a <pre>; focusable because long ones scroll. */
export function detailPre(text) {
  return h("pre", { class: "detail", tabindex: "0" }, text);
}

/** A status badge: text always, colour only as a second cue. */
export function badge(state) {
  const s = String(state || "unknown");
  const tone = {
    active: "ok", completed: "done", online: "ok", installed: "ok", ok: "ok",
    paused: "warn", superseded: "muted", offline: "muted", revoked: "muted",
    aborted: "bad", failed: "bad", rolled_back: "bad", install_failed: "bad", run_failed: "bad",
  }[s] || "neutral";
  return h("span", { class: `badge badge-${tone}` }, s.replace(/_/g, " "));
}

// ---- formats ----

export const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
export const fmtAgo = (ms) => {
  if (!ms) return "–";
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
};
export const fmtPct = (share) => (share == null || Number.isNaN(share) ? "–" : `${Math.round(share * 1000) / 10}%`);
export const fmtNum = (n) => (n == null ? "–" : Number(n).toLocaleString());
export const fmtMs = (n) => (n == null ? "–" : `${fmtNum(n)} ms`);
export const fmtBytes = (n) => {
  if (n == null) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
};
/** Success rate as the contract defines it: (executed − failed_devices) / executed. */
export const successRate = (executed, failed) => (executed > 0 ? (executed - failed) / executed : null);

/** A labelled form field. `control` is the input/select; the label text is exact (tests use it). */
export function field(label, control, { help, id, errorFor } = {}) {
  const cid = control.id || id || uid("f");
  control.id = cid;
  const helpId = help ? `${cid}-help` : null;
  if (helpId) control.setAttribute("aria-describedby", helpId);
  const err = h("div", { class: "field-error", "data-error-for": errorFor || null });
  return h("div", { class: "field" }, h("label", { for: cid }, label), control,
    help ? h("small", { id: helpId, class: "muted" }, help) : null, err);
}

let counter = 0;
export const uid = (p = "id") => `${p}-${++counter}`;

/**
 * A modal confirmation <dialog>: traps focus (showModal), returns focus to the opener on close.
 * Resolves true on Confirm. `body` is a node or text shown above the buttons.
 */
export function confirmDialog({ title, body, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const titleId = uid("dlg");
    const dialog = h("dialog", { "aria-labelledby": titleId, class: "dialog" },
      h("h2", { id: titleId }, title),
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: danger ? "danger" : "primary", onclick: () => close(true) },
          confirmLabel)));
    let done = false;
    function close(result) {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      if (opener && opener.focus && opener.isConnected) opener.focus();
      resolve(result);
    }
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); close(false); });
    // Keep Tab inside the dialog (a modal <dialog> alone lets focus leave to the browser's UI).
    dialog.addEventListener("keydown", (e) => {
      if (e.key !== "Tab") return;
      const items = [...dialog.querySelectorAll("button, a[href], input, select, textarea, [tabindex='0']")]
        .filter((el) => !el.disabled);
      if (!items.length) return;
      const first = items[0];
      const last = items[items.length - 1];
      if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
      else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.secondary").focus();
  });
}

/** Triggers a download of `blob` as `name`. */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, class: "sr-only" }, "download");
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** A copy-to-clipboard button for a secret shown once. */
export function copyButton(text, label = "Copy") {
  const status = h("span", { class: "muted", role: "status" });
  const button = h("button", {
    type: "button", class: "secondary small",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        status.textContent = " Copied.";
      } catch {
        status.textContent = " Copy failed: select the text and copy it by hand.";
      }
    },
  }, label);
  return h("span", {}, button, status);
}

/** Page header: the single <h1> plus optional subtitle and tools. */
export function pageHeader(title, { sub, tools } = {}) {
  return h("div", { class: "page-head" },
    h("div", {}, h("h1", { tabindex: "-1" }, title), sub ? h("p", { class: "muted sub" }, sub) : null),
    tools ? h("div", { class: "tools" }, tools) : null);
}

/** A section card with an <h2>. */
export function section(title, ...children) {
  const id = uid("sec");
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/** Link to a hash route. */
export const link = (href, text, attrs = {}) => h("a", { href, ...attrs }, text);

export const enc = encodeURIComponent;
