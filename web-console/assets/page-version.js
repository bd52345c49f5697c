// One task version: bundle facts, its manifest (triggers, features, limits, models) and the
// releases that use it.

import { api } from "./api.js";
import { h, table, fmtTime, fmtBytes, pageHeader, section, alertBox, enc } from "./ui.js";
import { releaseColumns } from "./page-releases.js";

const show = (v) => (v == null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));

/** A list of objects as a table whose columns are the union of their keys. */
function objectsTable(items, test) {
  if (!Array.isArray(items)) items = items && typeof items === "object" ? Object.entries(items).map(([k, v]) => ({ name: k, ...(typeof v === "object" ? v : { value: v }) })) : [];
  const keys = [];
  for (const it of items) for (const k of Object.keys(it)) if (!keys.includes(k)) keys.push(k);
  return table(keys.slice(0, 8).map((k) => ({ title: k, cell: (it) => h("code", {}, show(it[k])) })), items, { test, empty: "None." });
}

export async function render({ main, params, signal, may }) {
  const { name, version } = params;
  main.append(pageHeader(`Task ${name} ${version}`, {
    sub: h("span", {}, h("a", { href: `#/tasks/${enc(name)}` }, `All versions of ${name}`)),
    tools: may("create_release") || may("preview_release")
      ? h("a", { class: "button primary", href: `#/releases/new?task=${enc(name)}&version=${enc(version)}` }, "Release this version") : null,
  }));
  let v;
  try {
    v = await api(`/tasks/${enc(name)}/versions/${enc(version)}`, { signal });
  } catch (e) {
    if (e.name !== "AbortError") main.append(alertBox(e, "Loading the version failed"));
    return;
  }
  // The signed manifest devices receive: {bundle_digest, bundle_size, task: {name, version,
  // runtime, entry, handler, description, triggers, features, limits, models}}.
  const manifest = v.manifest;
  const m = manifest.task || {};
  const known = new Set(["name", "version", "runtime", "entry", "handler", "description", "triggers", "features", "limits", "models"]);
  const rest = Object.fromEntries(Object.entries(m).filter(([k]) => !known.has(k)));
  // Limits the task sets; the others take the device's defaults (null in the manifest).
  const limits = Object.entries(m.limits || {}).filter(([, val]) => val != null);
  main.append(
    section("Bundle", h("dl", { class: "kv" },
      h("dt", {}, "Digest"), h("dd", {}, h("code", { class: "wrap" }, v.bundle_digest || "–")),
      h("dt", {}, "Size"), h("dd", {}, fmtBytes(v.bundle_size)),
      h("dt", {}, "Published"), h("dd", {}, fmtTime(v.created_at_ms)))),
    h("section", { class: "card", "data-test": "manifest", "aria-labelledby": "manifest-h" },
      h("h2", { id: "manifest-h" }, "Manifest"),
      h("dl", { class: "kv" },
        h("dt", {}, "Name"), h("dd", {}, show(m.name)),
        h("dt", {}, "Version"), h("dd", {}, show(m.version)),
        h("dt", {}, "Description"), h("dd", {}, show(m.description)),
        h("dt", {}, "Runtime"), h("dd", {}, show(m.runtime)),
        h("dt", {}, "Entry"), h("dd", {}, h("code", {}, `${show(m.entry)}${m.handler ? ` → ${m.handler}()` : ""}`)),
        h("dt", { title: "Limits this task sets; the others are the device's defaults." }, "Limits"),
        h("dd", {}, limits.length ? limits.map(([k, val]) => h("code", { class: "chip" }, `${k} = ${show(val)}`)) : "device defaults")),
      h("h3", {}, "Triggers"), objectsTable(m.triggers || [], "manifest-triggers"),
      h("h3", {}, "Features"), objectsTable(m.features || [], "manifest-features"),
      h("h3", {}, "Models"), objectsTable(m.models || [], "manifest-models"),
      Object.keys(rest).length ? [h("h3", {}, "Other fields"), h("pre", { class: "block", tabindex: "0" }, JSON.stringify(rest, null, 2))] : null,
      h("details", {}, h("summary", {}, "Whole manifest as JSON"), h("pre", { class: "block", tabindex: "0" }, JSON.stringify(manifest, null, 2)))),
    section("Releases of this version",
      table(releaseColumns(), v.releases || [], { test: "version-releases", caption: "Releases of this version", empty: "No release uses this version." })));
}
