// Tasks: the list, a form to create one, and the bundle upload (a new version of a task).

import { api } from "./api.js";
import { h, table, fmtTime, fmtBytes, field, pageHeader, section, showError, loading, alertBox, enc } from "./ui.js";

/**
 * The bundle upload form: <input type="file"> labelled "Bundle file", a drop zone, "Upload".
 * `fixedTask` uploads to that task; otherwise a Task field is shown. Calls onDone(versionRow).
 */
export function uploadForm({ fixedTask, signal, onDone, taskNames = [] }) {
  const fileInput = h("input", { type: "file", accept: ".walle,.tar.zst,.zst,application/octet-stream" });
  const taskInput = fixedTask ? null : h("input", { type: "text", list: "upload-tasks", required: true, value: taskNames[0] || "" });
  const chosen = h("p", { class: "muted", "aria-live": "polite" }, "No file chosen.");
  const result = h("div", { "aria-live": "polite" });
  let file = null;
  const choose = (f) => {
    file = f;
    chosen.textContent = f ? `Chosen: ${f.name} (${fmtBytes(f.size)})` : "No file chosen.";
  };
  fileInput.addEventListener("change", () => choose(fileInput.files[0] || null));
  const zone = h("div", { class: "dropzone" }, "Drop a bundle file here (from ", h("code", {}, "walle task pack"), "), or choose it with the field below.");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) choose(f);
  });
  const button = h("button", { type: "submit", class: "primary" }, "Upload");
  const form = h("form", {
    class: "upload",
    onsubmit: async (e) => {
      e.preventDefault();
      result.replaceChildren();
      const task = fixedTask || taskInput.value.trim();
      if (!task) { result.append(alertBox("Give the task the bundle is a version of.")); return; }
      if (!file) { result.append(alertBox("Choose a bundle file first.")); return; }
      button.disabled = true;
      result.append(h("p", { class: "muted", role: "status" }, `Uploading ${file.name}…`));
      try {
        const row = await api(`/tasks/${enc(task)}/versions`, { method: "POST", body: file, signal });
        result.replaceChildren(h("p", { class: "notice", role: "status" }, "Uploaded ",
          h("a", { href: `#/tasks/${enc(row.task || task)}/${enc(row.version)}` }, `${row.task || task} ${row.version}`), "."));
        choose(null);
        fileInput.value = "";
        if (onDone) onDone(row);
      } catch (err) {
        if (err.name === "AbortError") return;
        result.replaceChildren(alertBox(err, "Upload failed"));
        // A bundle for a task that does not exist yet: offer to create the task, then upload.
        if (err.status === 404 && !fixedTask) {
          result.append(h("button", {
            type: "button", class: "secondary",
            onclick: async () => {
              try {
                await api("/tasks", { method: "POST", body: { name: task, description: "" }, signal });
              } catch (createErr) {
                if (createErr.name !== "AbortError") result.replaceChildren(alertBox(createErr, "Creating the task failed"));
                return;
              }
              form.requestSubmit();
            },
          }, `Create task ${task}, then upload`));
        }
      } finally {
        button.disabled = false;
      }
    },
  },
  zone,
  taskInput ? [field("Task", taskInput, { help: "The task this bundle is a version of." }),
    h("datalist", { id: "upload-tasks" }, taskNames.map((n) => h("option", { value: n })))] : null,
  field("Bundle file", fileInput), chosen,
  h("div", { class: "actions" }, button), result);
  return form;
}

export async function render({ main, signal, may }) {
  main.append(pageHeader("Tasks", { sub: "ML tasks published to this cloud; open one for its versions." }));
  const errors = h("div");
  const list = h("div", {}, loading());
  main.append(errors, section("All tasks", list));
  let tasks = [];
  async function load() {
    showError(errors, null);
    try {
      tasks = await api("/tasks", { signal });
      list.replaceChildren(table([
        { title: "Task", cell: (t) => h("a", { href: `#/tasks/${enc(t.name)}` }, t.name) },
        { title: "Description", cell: (t) => t.description || h("span", { class: "muted" }, "–") },
        { title: "Created", cell: (t) => fmtTime(t.created_at_ms) },
      ], tasks, { test: "tasks", caption: "Tasks", empty: "No task yet: publish one with walle task publish, or upload a bundle below." }));
    } catch (e) {
      if (e.name !== "AbortError") { list.replaceChildren(); showError(errors, e, "Loading tasks failed"); }
    }
  }
  await load();
  if (may("upload_version")) {
    const nameInput = h("input", { type: "text", required: true, pattern: "[a-z0-9][a-z0-9-]*" });
    const descInput = h("input", { type: "text" });
    const createResult = h("div");
    main.append(
      section("Upload a version", uploadForm({ signal, taskNames: tasks.map((t) => t.name), onDone: load })),
      section("Create a task",
        h("form", {
          class: "inline-form",
          onsubmit: async (e) => {
            e.preventDefault();
            createResult.replaceChildren();
            try {
              await api("/tasks", { method: "POST", body: { name: nameInput.value.trim(), description: descInput.value.trim() }, signal });
              createResult.append(h("p", { class: "notice", role: "status" }, `Created task ${nameInput.value.trim()}.`));
              nameInput.value = "";
              descInput.value = "";
              load();
            } catch (err) {
              if (err.name !== "AbortError") createResult.append(alertBox(err, "Creating the task failed"));
            }
          },
        }, field("Task name", nameInput), field("Description", descInput),
        h("div", { class: "actions field" }, h("button", { type: "submit", class: "secondary" }, "Create task"))),
        createResult));
  }
}
