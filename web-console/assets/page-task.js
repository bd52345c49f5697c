// One task: its versions (newest first) and the bundle upload for a new version.

import { api } from "./api.js";
import { h, table, fmtTime, fmtBytes, pageHeader, section, showError, loading, enc } from "./ui.js";
import { uploadForm } from "./page-tasks.js";

export async function render({ main, params, signal, may }) {
  const name = params.name;
  const errors = h("div");
  const list = h("div", {}, loading());
  main.append(pageHeader(`Task ${name}`, { sub: h("span", {}, h("a", { href: "#/tasks" }, "All tasks"), " · versions of this task, newest first.") }),
    errors, section("Versions", list));
  async function load() {
    showError(errors, null);
    try {
      const versions = await api(`/tasks/${enc(name)}/versions`, { signal });
      versions.sort((a, b) => (b.created_at_ms || 0) - (a.created_at_ms || 0));
      list.replaceChildren(table([
        { title: "Version", cell: (v) => h("a", { href: `#/tasks/${enc(name)}/${enc(v.version)}` }, v.version) },
        { title: "Bundle digest", help: "SHA-256 of the bundle file devices verify before installing.", cell: (v) => h("code", { title: v.bundle_digest }, String(v.bundle_digest || "").slice(0, 19) + "…") },
        { title: "Size", num: true, help: "Bundle size in bytes, as devices download it.", cell: (v) => fmtBytes(v.bundle_size) },
        { title: "Published", cell: (v) => fmtTime(v.created_at_ms) },
      ], versions, { test: "versions", caption: "Versions", empty: "No version published yet." }));
    } catch (e) {
      if (e.name !== "AbortError") { list.replaceChildren(); showError(errors, e, "Loading versions failed"); }
    }
  }
  await load();
  if (may("upload_version")) main.append(section("Upload a new version", uploadForm({ fixedTask: name, signal, onDone: load })));
}
