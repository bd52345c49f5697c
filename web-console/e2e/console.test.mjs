// End-to-end tests of the operator console: headless Chromium against a live walle-cloud with
// real walle-device processes. Run with scripts/console-test.sh (or `node --test` in this folder
// with WALLE_BIN_DIR naming the binaries' folder).
//
// The tests share one fleet and run in order; each sets up through the API what an earlier one
// would have left behind when that one failed, so a broken page fails only its own test.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fsp from "node:fs/promises";
import { Fleet, PROFILES, waitFor } from "./fleet.mjs";
import {
  PHONE,
  launchBrowser,
  newPage,
  signIn,
  go,
  heading,
  axeViolations,
  screenshot,
  setNoReloadMarker,
  assertNoReload,
} from "./browser.mjs";

const TASK = "ipv-feature";
// A second task with the same code (and trigger), so the Data page's task filter has something to
// leave out.
const SHADOW = "ipv-shadow";
const GROUP = "e2e-pilots";
const GHOST = "e2e-ghost-never-registered";
const DEVICES = 6;
const FAILING_ERROR = "walle-e2e: version 1.2.0 fails on purpose";
const ACTION_BUTTONS = ["Advance", "Pause", "Resume", "Abort", "Roll back", "Start release", "Upload", "Create token", "Revoke"];

let fleet;
let browser;
// What the tests made, for the ones after them: release ids, the versions uploaded.
const made = { releases: {} };

before(
  async () => {
    fleet = await Fleet.start({ devices: DEVICES });
    browser = await launchBrowser();
  },
  { timeout: 120_000 },
);

after(async () => {
  await browser?.close().catch(() => {});
  await fleet?.stop();
});

/**
 * One test with a fresh browser page. On failure the error is given the page's URL, the
 * browser's errors and the tail of every process's log, and a screenshot is saved as
 * FAILED-<slug>.png.
 */
function scenario(name, timeoutMs, body) {
  test(name, { timeout: timeoutMs }, async () => {
    const page = await newPage(browser);
    try {
      await body(page);
    } catch (e) {
      const slug = name.replace(/[^a-z0-9]+/gi, "-").toLowerCase().slice(0, 60);
      const shot = await screenshot(page, `FAILED-${slug}`).catch(() => "(no screenshot)");
      const problems = page.problems.length ? `\nbrowser:\n  ${page.problems.slice(-10).join("\n  ")}` : "";
      const alerts = await page
        .locator('[role="alert"]')
        .allTextContents()
        .catch(() => []);
      const shown = alerts.length ? `\nalerts on the page:\n  ${alerts.map((a) => a.trim()).join("\n  ")}` : "";
      const extra = `\npage: ${page.url()} (screenshot ${shot})${shown}${problems}\n${fleet.logTails()}`;
      e.message += extra;
      // The runner prints the stack, which some errors (assertions, Playwright's) fixed already.
      if (typeof e.stack === "string" && !e.stack.includes(extra)) e.stack += extra;
      throw e;
    } finally {
      await page.context().close().catch(() => {});
    }
  });
}

// ---- helpers ---------------------------------------------------------------------------------

const num = (text) => Number((/-?\d+/.exec(String(text).replace(/[,\u202f\u00a0]/g, "")) || [NaN])[0]);

/** A table's header texts and body cells, as the operator reads them. */
async function tableCells(table) {
  return table.evaluate((t) => ({
    headers: [...t.querySelectorAll("thead th")].map((th) => th.textContent.trim()),
    rows: [...t.querySelectorAll("tbody tr")].map((tr) => [...tr.cells].map((td) => td.textContent.trim())),
  }));
}

/** The first integer in a figure's text ("4", "4 of 6", "67 %"), or NaN. */
async function figure(page, name) {
  const text = await page.locator(`[data-figure="${name}"]`).first().textContent();
  const match = /-?\d+/.exec(text ?? "");
  return match ? Number(match[0]) : NaN;
}

async function waitFigure(page, name, predicate, what, timeoutMs = 45_000) {
  return waitFor(
    `the page's ${name} figure ${what}`,
    async () => {
      const value = await figure(page, name);
      if (!predicate(value)) throw new Error(`it shows ${JSON.stringify(await page.locator(`[data-figure="${name}"]`).first().textContent())}`);
      return { value };
    },
    { timeoutMs },
  ).then((r) => r.value);
}

/** Fills a text field or picks from a <select>, whichever the console made. */
async function setField(locator, value) {
  const tag = await locator.evaluate((el) => el.tagName.toLowerCase());
  if (tag === "select") {
    await waitFor(`option ${value}`, () => locator.evaluate((el, v) => [...el.options].some((o) => o.value === v || o.text === v), value));
    await locator.selectOption(value);
  } else {
    // The page may fill a field itself a moment later (a default version once the task's
    // versions load): type again until our value holds across two looks.
    let held = 0;
    await waitFor(`the field to keep ${JSON.stringify(value)}`, async () => {
      if ((await locator.inputValue()) !== value) {
        held = 0;
        await locator.fill(value);
        return false;
      }
      return ++held >= 3;
    }, { timeoutMs: 10_000, intervalMs: 150 });
  }
}

async function packAndPublish(version, scriptSuffix) {
  if (!(await fleet.hasVersion(TASK, version))) {
    const bundle = await fleet.pack(TASK, { version, scriptSuffix });
    await fleet.publish(bundle, TASK);
  }
}

/** 1.0.0 released to every device through the API and installed everywhere. */
async function ensureBaseline() {
  if (made.releases.base) return;
  await packAndPublish("1.0.0");
  const release = await fleet.createRelease(TASK, "1.0.0", { stages: [100] });
  made.releases.base = release.id;
  await fleet.waitInstalled(TASK, "1.0.0");
}

/** Some active release to look at (the staged one when it exists). */
async function activeReleaseId() {
  await ensureBaseline();
  for (const id of [made.releases.staged, made.releases.base]) {
    if (id && (await fleet.release(id)).state === "active") return id;
  }
  const rows = await fleet.api("GET", `/v1/releases?task=${TASK}&state=active`);
  assert.ok(rows.length > 0, "no active release");
  return rows[0].id;
}

/** Opens the confirmation dialog of `action`, checks it shows the API's effect text, confirms. */
async function confirmAction(page, releaseId, buttonName, action) {
  const detail = await fleet.release(releaseId);
  const offered = (detail.actions || []).find((a) => a.action === action);
  assert.ok(offered, `the API offers no ${action} for ${releaseId}: ${JSON.stringify(detail.actions)}`);
  await page.getByRole("button", { name: buttonName, exact: true }).click();
  const dialog = page.locator("dialog[open]");
  await dialog.waitFor({ state: "visible" });
  const text = (await dialog.textContent()).replace(/\s+/g, " ");
  assert.ok(text.includes(offered.effect.replace(/\s+/g, " ")), `the ${buttonName} dialog does not show the API's effect ${JSON.stringify(offered.effect)}: ${JSON.stringify(text)}`);
  await dialog.getByRole("button", { name: "Confirm", exact: true }).click();
  await dialog.waitFor({ state: "hidden" });
}

// ---- tests -----------------------------------------------------------------------------------

scenario("sign-in: the form, a refused token, who I am, the navigation, sign out", 60_000, async (page) => {
  await page.goto(`${fleet.url}/console/`);
  await page.getByLabel("Operator token").fill("wlo_not-a-real-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  const refused = page.getByRole("alert");
  await refused.first().waitFor({ state: "visible" });
  assert.match(await refused.first().textContent(), /\S/, "the refusal says nothing");
  assert.equal(await page.locator('[data-test="whoami"]').filter({ hasText: /\S/ }).isVisible(), false, "signed in with a bad token");

  await signIn(page, fleet);
  const whoami = (await page.locator('[data-test="whoami"]').textContent()).toLowerCase();
  assert.match(whoami, /admin/, `whoami does not show the role: ${whoami}`);
  await heading(page, /overview/i);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("walle.token")), fleet.adminToken);
  const nav = page.getByRole("navigation", { name: "Main" });
  for (const link of ["Overview", "Releases", "New release", "Tasks", "Devices", "Groups", "Data", "Admin"]) {
    assert.equal(await nav.getByRole("link", { name: link, exact: true }).count(), 1, `no ${link} link for an admin`);
  }
  // The overview counts the connected fleet.
  await waitFor("the overview to show the registered devices", async () => (await page.locator("main").textContent()).includes(String(DEVICES)));

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Operator token").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("walle.token")), null, "the token is still stored after sign out");
});

scenario("tasks: upload a version through the file input, see its manifest; a duplicate is refused", 60_000, async (page) => {
  const bundle = await fleet.pack(TASK, { version: "1.0.0" });
  await fleet.ensureTask(TASK, "Item-page-view feature");
  await signIn(page, fleet);
  await go(page, `#/tasks/${TASK}`);
  await heading(page, new RegExp(TASK));
  await page.getByLabel("Bundle file").setInputFiles(bundle);
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  const versionLink = page.locator(`a[href="#/tasks/${TASK}/1.0.0"]`).first();
  await versionLink.waitFor({ state: "visible" });
  assert.ok(await fleet.hasVersion(TASK, "1.0.0"), "the API does not list the uploaded version");

  // The same bundle again: the API answers 409 and the page shows its text.
  await page.getByLabel("Bundle file").setInputFiles(bundle);
  await page.getByRole("button", { name: "Upload", exact: true }).click();
  const alert = page.getByRole("alert").filter({ hasText: /exist|already|1\.0\.0/i });
  await alert.first().waitFor({ state: "visible" });

  await versionLink.click();
  await heading(page, /1\.0\.0/);
  const manifest = page.locator('[data-test="manifest"]');
  await manifest.waitFor({ state: "visible" });
  const text = await manifest.textContent();
  assert.ok(text.includes(TASK) && text.includes("main.py") && text.includes("item-page-view"), `the manifest is not shown: ${text}`);
});

scenario("new release: preview, start, watch the chart and counts move live, advance", 120_000, async (page) => {
  await ensureBaseline();
  await packAndPublish("1.1.0");
  await signIn(page, fleet);
  await go(page, "#/releases/new");
  await heading(page, /new release/i);
  await setField(page.getByLabel("Task", { exact: true }), TASK);
  await page.getByLabel("Task", { exact: true }).press("Tab");
  await setField(page.getByLabel("Version", { exact: true }), "1.1.0");
  await page.getByLabel("Stages", { exact: true }).fill("50, 100");
  await page.getByRole("button", { name: "Preview", exact: true }).click();
  const preview = page.locator('[data-test="preview"]');
  await preview.waitFor({ state: "visible" });
  const grid = await tableCells(preview);
  assert.equal(grid.rows.length, 2, `the preview does not have 2 stages: ${JSON.stringify(grid)}`);
  const col = (version) => grid.headers.findIndex((h) => h.includes(version));
  const newCol = col("1.1.0");
  assert.ok(newCol >= 0, `the preview has no column for 1.1.0: ${grid.headers}`);
  const [first, last] = grid.rows;
  assert.ok(last.some((c) => /^100\s*%?$/.test(c)), `the last preview row is not the 100 % stage: ${last}`);
  assert.equal(num(last[newCol]), DEVICES, `the 100 % stage does not put all ${DEVICES} devices on 1.1.0: ${last}`);
  const previewedFirst = num(first[newCol]);
  if (previewedFirst < DEVICES) {
    const oldCol = col("1.0.0");
    assert.ok(oldCol >= 0 && num(first[oldCol]) === DEVICES - previewedFirst, `the 50 % stage does not show the others keeping 1.0.0: ${grid.headers} / ${first}`);
  }

  await page.getByRole("button", { name: "Start release", exact: true }).click();
  const id = await waitFor("the release's page", () => {
    const m = /#\/releases\/([^/?]+)$/.exec(new URL(page.url()).hash);
    return m && m[1] !== "new" ? decodeURIComponent(m[1]) : false;
  });
  made.releases.staged = id;
  const created = await fleet.release(id);
  assert.equal(created.version, "1.1.0");
  assert.deepEqual(created.policy.stages.map(Number), [50, 100]);

  await heading(page, `Release ${TASK} 1.1.0`);
  await setNoReloadMarker(page);
  // Sample what the page shows every 100 ms, from inside the page, to see the figures move.
  await page.evaluate(() => {
    window.__samples = [];
    setInterval(() => {
      const installed = document.querySelector('[data-figure="installed"]')?.textContent ?? "";
      const chart = document.querySelector('svg[role="img"][aria-label="Coverage over time"]');
      window.__samples.push({ installed: Number((/-?\d+/.exec(installed) || [NaN])[0]), points: Number(chart?.getAttribute("data-points")) });
    }, 100);
  });
  await waitFor('the live indicator to read "live"', async () => {
    const text = await page.locator('[data-test="live"]').textContent();
    if (!/^[\s●•]*live\s*$/i.test(text)) throw new Error(`it reads ${JSON.stringify(text)}`);
    return true;
  });
  const chart = page.locator('svg[role="img"][aria-label="Coverage over time"]');
  await chart.waitFor({ state: "visible" });
  const firstPoints = Number(await chart.getAttribute("data-points"));

  // Stage 1 (50 %): the devices the preview put there install; the page follows.
  const stageOne = (await fleet.release(id)).stats.stages[0].targeted;
  assert.equal(stageOne, previewedFirst, "the release did not take the previewed devices (the preview's salt)");
  await waitFigure(page, "installed", (v) => v === stageOne, `to reach stage 1's ${stageOne} devices`);
  await waitFor("the chart to draw new samples", async () => Number(await chart.getAttribute("data-points")) > firstPoints, { timeoutMs: 15_000 });

  await confirmAction(page, id, "Advance", "advance");
  await waitFigure(page, "installed", (v) => v === DEVICES, `to reach all ${DEVICES} devices`);
  await waitFigure(page, "targeted", (v) => v === DEVICES, `to be ${DEVICES}`);
  await fleet.waitInstalled(TASK, "1.1.0");
  const stages = page.locator('[data-test="stages"] tbody tr');
  assert.equal(await stages.count(), 2, "the per-stage table does not have the release's 2 stages");
  assert.match(await page.locator('[data-test="state"]').textContent(), /active/i);

  // The sampler runs every 100 ms: let it take one after the figure reached its final value.
  await waitFor(`the sampler to see ${DEVICES} installed`, async () =>
    (await page.evaluate(() => window.__samples.at(-1)?.installed)) === DEVICES, { timeoutMs: 5_000 });
  const samples = await page.evaluate(() => window.__samples);
  const installedSeen = samples.map((s) => s.installed).filter((v) => !Number.isNaN(v));
  // What the page showed, in order, each value with how long it stayed (100 ms samples).
  const history = installedSeen
    .reduce((runs, v) => (runs.length && runs.at(-1)[0] === v ? runs.at(-1)[1]++ : runs.push([v, 1]), runs), [])
    .map(([v, n]) => `${v} (${n / 10} s)`)
    .join(" -> ");
  assert.ok(Math.min(...installedSeen) < DEVICES, `the page never showed fewer than ${DEVICES} installed: ${history}`);
  assert.equal(installedSeen.at(-1), DEVICES, `the installed figure did not stay at ${DEVICES} (API: ${(await fleet.release(id)).stats.installed}): ${history}`);
  const points = samples.map((s) => s.points).filter((v) => !Number.isNaN(v));
  assert.ok(points.at(-1) > points[0], `the chart's data-points did not grow: ${points[0]} -> ${points.at(-1)}`);
  await assertNoReload(page);
});

scenario("a failing version: failure count -> failures -> device and its error; Abort rolls devices back", 150_000, async (page) => {
  await ensureBaseline();
  // What each device runs before the failing version arrives.
  const before = {};
  for (const d of fleet.devices) before[d.id] = await fleet.installedOn(d, TASK);
  await packAndPublish("1.2.0", `def run(ctx):\n    raise RuntimeError(${JSON.stringify(FAILING_ERROR)})`);
  const release = await fleet.createRelease(TASK, "1.2.0", { stages: [100] });
  made.releases.failing = release.id;
  await fleet.waitInstalled(TASK, "1.2.0");
  for (const d of fleet.devices) {
    const answer = await fleet.visit(d);
    assert.equal(answer.triggered, 1, `${d.id} did not trigger a run: ${JSON.stringify(answer)}`);
  }
  await waitFor(`${DEVICES} failed devices in the release's statistics`, async () => (await fleet.release(release.id)).stats.failed_devices === DEVICES);

  await signIn(page, fleet);
  await go(page, `#/releases/${release.id}`);
  await heading(page, `Release ${TASK} 1.2.0`);
  await waitFigure(page, "failed_devices", (v) => v === DEVICES, `to show ${DEVICES}`);
  await page.locator('[data-figure="failed_devices"] a').first().click();
  await waitFor("the failures page", () => new URL(page.url()).hash.startsWith(`#/releases/${release.id}/failures`));
  const failures = page.locator('[data-test="failures"]');
  await failures.waitFor({ state: "visible" });
  await waitFor(`${DEVICES} failure rows`, async () => (await failures.locator("tbody tr").count()) >= DEVICES);
  const firstRow = failures.locator("tbody tr").first();
  assert.ok((await firstRow.locator("pre").textContent()).includes(FAILING_ERROR), "the failure row does not show the device's error");
  const deviceLink = firstRow.locator('a[href^="#/devices/"]').first();
  const deviceId = decodeURIComponent((await deviceLink.getAttribute("href")).slice("#/devices/".length));
  assert.ok(before[deviceId] !== undefined, `the failure names an unknown device ${deviceId}`);
  await deviceLink.click();
  await heading(page, new RegExp(deviceId));
  await waitFor("the device page to show the error", async () => (await page.locator("main").textContent()).includes(FAILING_ERROR));

  // Abort from the release's page, through the confirmation dialog.
  await go(page, `#/releases/${release.id}`);
  await heading(page, `Release ${TASK} 1.2.0`);
  await setNoReloadMarker(page);
  await waitFigure(page, "installed", (v) => v === DEVICES, `to show ${DEVICES}`);
  await confirmAction(page, release.id, "Abort", "abort");
  await waitFor("the state to read aborted", async () => {
    const state = await page.locator('[data-test="state"]').textContent();
    if (!/aborted/i.test(state)) throw new Error(`it reads ${JSON.stringify(state)}`);
    return true;
  });
  await waitFigure(page, "installed", (v) => v === 0, "to drop to 0 as devices leave the version");
  await waitFigure(page, "still_running", (v) => v === 0, "to drop to 0 once every device rolled back");
  await assertNoReload(page);
  assert.equal((await fleet.release(release.id)).state, "aborted");
  for (const d of fleet.devices) {
    await waitFor(`${d.id} back on ${before[d.id]}`, async () => (await fleet.installedOn(d, TASK)) === before[d.id], { timeoutMs: 45_000 });
    await waitFor(`the API's tasks of ${d.id} to show ${before[d.id]}`, async () => {
      const detail = await fleet.api("GET", `/v1/devices/${d.id}`);
      return detail.tasks.some((t) => t.task === TASK && t.version === before[d.id]);
    });
  }
  // The release of the version the devices went back to counts them installed again.
  const previous = await activeReleaseId();
  const previousVersion = (await fleet.release(previous)).version;
  const onPrevious = Object.values(before).filter((v) => v === previousVersion).length;
  await go(page, `#/releases/${previous}`);
  await heading(page, `Release ${TASK} ${previousVersion}`);
  await waitFigure(page, "installed", (v) => v === onPrevious, `of ${previousVersion} to return to ${onPrevious}`);
});

scenario("roles: a viewer sees no action buttons anywhere (and an admin does)", 90_000, async (page) => {
  const releaseId = await activeReleaseId();
  const version = (await fleet.release(releaseId)).version;
  // Control: the admin sees the actions on the same pages.
  await signIn(page, fleet);
  await go(page, `#/releases/${releaseId}`);
  await heading(page, `Release ${TASK} ${version}`);
  await page.getByRole("button", { name: "Abort", exact: true }).waitFor({ state: "visible" });
  await go(page, `#/tasks/${TASK}`);
  await page.getByRole("button", { name: "Upload", exact: true }).waitFor({ state: "visible" });
  await page.getByRole("button", { name: "Sign out" }).click();

  const viewer = await fleet.createToken("e2e viewer", "viewer");
  await signIn(page, fleet, viewer);
  assert.match((await page.locator('[data-test="whoami"]').textContent()).toLowerCase(), /viewer/);
  const nav = page.getByRole("navigation", { name: "Main" });
  await nav.getByRole("link", { name: "Overview", exact: true }).waitFor();
  assert.equal(await nav.getByRole("link", { name: "New release", exact: true }).count(), 0, "a viewer is offered New release");
  assert.equal(await nav.getByRole("link", { name: "Admin", exact: true }).count(), 0, "a viewer is offered Admin");

  // Each page with what shows it has loaded its data.
  const pages = [
    ["#/overview", /overview/i, () => page.locator("main").filter({ hasText: TASK }).waitFor()],
    ["#/releases", /releases/i, () => page.locator(`a[href="#/releases/${releaseId}"]`).first().waitFor()],
    [`#/releases/${releaseId}`, `Release ${TASK} ${version}`, () => waitFigure(page, "installed", (v) => v >= 0, "to be filled")],
    ["#/releases/new", /new release/i, null],
    ["#/tasks", /tasks/i, () => page.locator(`a[href="#/tasks/${TASK}"]`).first().waitFor()],
    [`#/tasks/${TASK}`, new RegExp(TASK), () => page.locator(`a[href="#/tasks/${TASK}/1.0.0"]`).first().waitFor()],
    [`#/tasks/${TASK}/1.0.0`, /1\.0\.0/, () => page.locator('[data-test="manifest"]').waitFor()],
    ["#/devices", /devices/i, () => page.locator('[data-test="devices"]').filter({ hasText: fleet.devices[0].id }).waitFor()],
    [`#/devices/${fleet.devices[0].id}`, new RegExp(fleet.devices[0].id), () => page.locator("main").filter({ hasText: TASK }).waitFor()],
    ["#/groups", /groups/i, null],
    ["#/data", /data/i, null],
  ];
  if (made.releases.failing) pages.push([`#/releases/${made.releases.failing}`, `Release ${TASK} 1.2.0`, () => waitFigure(page, "failed_devices", (v) => v >= 0, "to be filled")]);
  const offered = [];
  for (const [hash, name, ready] of pages) {
    await go(page, hash);
    if (hash === "#/releases/new") {
      // A viewer may not create releases: the page says so or shows no form; never Start release.
      await page.locator("h1").first().waitFor();
    } else {
      await heading(page, name);
    }
    if (ready) await ready();
    for (const button of ACTION_BUTTONS) {
      if ((await page.getByRole("button", { name: button, exact: true }).count()) > 0) offered.push(`${button} on ${hash}`);
    }
    if ((await page.locator('input[type="file"]').count()) > 0) offered.push(`a file input on ${hash}`);
  }
  assert.deepEqual(offered, [], `a viewer is offered actions: ${offered.join(", ")}`);
  // The server agrees: the viewer's token may not act.
  await assert.rejects(fleet.api("POST", `/v1/releases/${releaseId}/pause`, { token: viewer }), (e) => e.status === 403);
});

scenario("accessibility: every page passes axe (no serious or critical violations); screenshots", 150_000, async (page) => {
  const releaseId = await activeReleaseId();
  const version = (await fleet.release(releaseId)).version;
  const failing = made.releases.failing;
  await fleet.api("POST", "/v1/groups", { body: { name: "beta", description: "E2E beta phones" } }).catch((e) => {
    if (e.status !== 409) throw e;
  });
  await fleet.api("POST", "/v1/groups/beta/members", { body: { add: [fleet.devices[0].id, fleet.devices[1].id], remove: [] } });
  const device = fleet.devices[0].id;

  // [screenshot name, hash, h1, ready check, also at phone size]
  const tour = [
    ["overview", "#/overview", /overview/i, () => page.locator("main").filter({ hasText: TASK }).waitFor(), true],
    ["releases", "#/releases", /releases/i, () => page.locator(`a[href="#/releases/${releaseId}"]`).first().waitFor(), false],
    ["release-new", "#/releases/new", /new release/i, () => page.getByLabel("Stages", { exact: true }).waitFor(), false],
    ["release", `#/releases/${releaseId}`, `Release ${TASK} ${version}`, () => waitFigure(page, "installed", (v) => v > 0, "to be filled"), true],
    ["tasks", "#/tasks", /tasks/i, () => page.locator(`a[href="#/tasks/${TASK}"]`).first().waitFor(), false],
    ["task", `#/tasks/${TASK}`, new RegExp(TASK), () => page.locator(`a[href="#/tasks/${TASK}/1.0.0"]`).first().waitFor(), false],
    ["version", `#/tasks/${TASK}/1.0.0`, /1\.0\.0/, () => page.locator('[data-test="manifest"]').waitFor(), false],
    ["devices", "#/devices", /devices/i, () => page.locator('[data-test="devices"]').filter({ hasText: device }).waitFor(), true],
    ["device", `#/devices/${device}`, new RegExp(device), () => page.locator("main").filter({ hasText: TASK }).waitFor(), false],
    ["groups", "#/groups", /groups/i, () => page.locator('a[href="#/groups/beta"]').first().waitFor(), false],
    ["group", "#/groups/beta", /beta/, () => page.locator("main").filter({ hasText: device }).waitFor(), false],
    ["data", "#/data", /data/i, null, false],
    ["admin", "#/admin", /admin/i, () => page.locator('[data-test="audit"]').waitFor(), false],
  ];
  if (failing) {
    tour.push(["failures", `#/releases/${failing}/failures`, /failures/i, () => page.locator('[data-test="failures"] tbody tr').first().waitFor(), true]);
  }

  const violations = [];
  const check = async (name) => {
    const found = await axeViolations(page);
    if (found.length) violations.push(`${name} (${page.url()}):\n${found.join("\n")}`);
    await screenshot(page, name);
  };

  await page.goto(`${fleet.url}/console/`);
  await page.getByLabel("Operator token").waitFor();
  await check("sign-in");
  await signIn(page, fleet);
  const problems = [];
  for (const [name, hash, h1, ready] of tour) {
    try {
      await go(page, hash);
      await heading(page, h1);
      if (ready) await ready();
      await check(name);
    } catch (e) {
      problems.push(`${name} (${hash}) did not load: ${e.message.split("\n")[0]}`);
    }
  }
  // The confirmation dialog, open.
  try {
    await go(page, `#/releases/${releaseId}`);
    await heading(page, `Release ${TASK} ${version}`);
    await page.getByRole("button", { name: "Pause", exact: true }).click();
    await page.locator("dialog[open]").waitFor();
    await check("release-confirm-dialog");
    await page.locator("dialog[open]").getByRole("button", { name: "Cancel", exact: true }).click();
    assert.equal((await fleet.release(releaseId)).state, "active", "Cancel paused the release");
  } catch (e) {
    problems.push(`the confirmation dialog: ${e.message.split("\n")[0]}`);
  }

  // Phone size (375 px wide) for a few pages.
  const phone = await newPage(browser, PHONE);
  try {
    await phone.goto(`${fleet.url}/console/`);
    await phone.getByLabel("Operator token").waitFor();
    const phoneCheck = async (name) => {
      const found = await axeViolations(phone);
      if (found.length) violations.push(`${name} at 375 px (${phone.url()}):\n${found.join("\n")}`);
      await screenshot(phone, `${name}-phone`);
    };
    await phoneCheck("sign-in");
    await signIn(phone, fleet);
    for (const [name, hash, h1, , atPhone] of tour) {
      if (!atPhone) continue;
      try {
        await go(phone, hash);
        await heading(phone, h1);
        await phone.locator("main").filter({ hasText: /\S/ }).waitFor();
        // A page wider than the phone scrolls sideways as a whole: unusable.
        const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        if (overflow > 1) problems.push(`${name} at 375 px is ${overflow} px wider than the screen`);
        await phoneCheck(name);
      } catch (e) {
        problems.push(`${name} at 375 px did not load: ${e.message.split("\n")[0]}`);
      }
    }
  } finally {
    await phone.context().close();
  }
  const report = [
    problems.length ? `pages that did not load or fit:\n  ${problems.join("\n  ")}` : "",
    violations.length ? `axe found serious or critical violations:\n${violations.join("\n")}` : "",
  ].filter(Boolean);
  assert.equal(report.length, 0, report.join("\n"));
});

// ---- more helpers ------------------------------------------------------------------------------

/** Fails when the page shows an alert or the browser logged an error. */
async function assertNoErrors(page, when) {
  const alerts = await page.locator('main [role="alert"]').allTextContents();
  assert.deepEqual(alerts, [], `alerts ${when}`);
  assert.deepEqual(page.problems, [], `browser errors ${when}`);
}

/** The first cell's text of every body row of the table with data-test=`test` ([] when empty). */
async function firstColumn(page, test) {
  return page.locator(`table[data-test="${test}"] tbody tr`).evaluateAll((rows) => rows.map((r) => r.cells[0].textContent.trim()));
}

/** Waits until the first column of table `test` is exactly `expected` (in any order). */
async function waitColumn(page, test, expected, what) {
  const want = [...expected].sort();
  await waitFor(what, async () => {
    const seen = (await firstColumn(page, test)).sort();
    if (JSON.stringify(seen) !== JSON.stringify(want)) throw new Error(`the table shows ${JSON.stringify(seen)}, not ${JSON.stringify(want)}`);
    return true;
  }, { timeoutMs: 10_000 });
}

/** Creates group `name` through the API unless it exists. */
async function ensureGroup(name) {
  await fleet.api("POST", "/v1/groups", { body: { name, description: "E2E pilot phones" } }).catch((e) => {
    if (e.status !== 409) throw e;
  });
}

/** The second task, released to every device and installed everywhere. */
async function ensureShadow() {
  if (made.releases.shadow) return;
  if (!(await fleet.hasVersion(SHADOW, "1.0.0"))) {
    await fleet.publish(await fleet.pack(TASK, { version: "1.0.0", name: SHADOW }), SHADOW);
  }
  const release = await fleet.createRelease(SHADOW, "1.0.0", { stages: [100] });
  made.releases.shadow = release.id;
  await fleet.waitInstalled(SHADOW, "1.0.0");
}

/** The <dt> → <dd> texts of the <dl> in the section headed `title`. */
async function sectionPairs(page, title) {
  return page.locator("section").filter({ has: page.getByRole("heading", { level: 2, name: title, exact: true }) }).first().evaluate((s) => {
    const pairs = {};
    for (const dt of s.querySelectorAll("dl dt")) pairs[dt.textContent.trim()] = dt.nextElementSibling?.textContent.trim();
    return pairs;
  });
}

// ---- groups, devices, data, admin --------------------------------------------------------------

scenario("groups: create one, add and remove members, a release targeting it is listed, deleting it is refused", 90_000, async (page) => {
  const releaseId = await activeReleaseId();
  const version = (await fleet.release(releaseId)).version;
  await fleet.api("DELETE", `/v1/groups/${GROUP}`).catch((e) => {
    if (e.status !== 404) throw e;
  });
  const [kept, dropped] = [fleet.devices[2].id, fleet.devices[3].id];

  await signIn(page, fleet);
  await go(page, "#/groups");
  await heading(page, /groups/i);
  await page.getByLabel("Group name", { exact: true }).fill(GROUP);
  await page.getByLabel("Description", { exact: true }).fill("E2E pilot phones");
  await page.getByRole("button", { name: "Create group", exact: true }).click();
  await heading(page, `Group ${GROUP}`);
  assert.equal(new URL(page.url()).hash, `#/groups/${GROUP}`);
  assert.equal((await fleet.api("GET", `/v1/groups/${GROUP}`)).description, "E2E pilot phones");
  await page.locator('[data-test="group-members"]').waitFor();
  assert.deepEqual(await firstColumn(page, "group-members"), [], "a new group lists members");

  // Two of the fleet's devices and one id that never registered.
  await page.getByLabel("Device ids to add", { exact: true }).fill(`${kept}, ${dropped} ${GHOST}`);
  await page.getByRole("button", { name: "Add members", exact: true }).click();
  await waitColumn(page, "group-members", [kept, dropped, GHOST], "the three members to be listed");
  assert.deepEqual([...(await fleet.api("GET", `/v1/groups/${GROUP}`)).devices].sort(), [kept, dropped, GHOST].sort());
  await assertNoErrors(page, "after adding members");

  await page.getByRole("button", { name: `Remove ${dropped}`, exact: true }).click();
  await waitColumn(page, "group-members", [kept, GHOST], `${dropped} to leave the list`);
  assert.deepEqual([...(await fleet.api("GET", `/v1/groups/${GROUP}`)).devices].sort(), [kept, GHOST].sort());
  await assertNoErrors(page, "after removing a member");
  assert.equal(await page.locator('[data-test="group-releases"] tbody tr').count(), 0, "a new group lists releases naming it");

  // A release (the version the devices run already, so nothing moves) whose target names the group.
  const release = await fleet.createRelease(TASK, version, { target: { group: GROUP }, stages: [100] });
  made.releases.group = release.id;
  await go(page, "#/groups");
  await go(page, `#/groups/${GROUP}`);
  await heading(page, `Group ${GROUP}`);
  const listed = page.locator(`[data-test="group-releases"] a[href="#/releases/${release.id}"]`);
  await listed.waitFor({ state: "visible" });
  const row = await page.locator('[data-test="group-releases"] tbody tr').filter({ has: page.locator(`a[href="#/releases/${release.id}"]`) }).textContent();
  assert.ok(row.includes(TASK) && row.includes(version), `the release row does not name ${TASK} ${version}: ${row}`);

  // Deleting the group while that release is live: the page shows the API's 409 text.
  await page.getByRole("button", { name: "Delete group", exact: true }).click();
  const dialog = page.locator("dialog[open]");
  await dialog.waitFor({ state: "visible" });
  await dialog.getByRole("button", { name: "Confirm", exact: true }).click();
  await dialog.waitFor({ state: "hidden" });
  const refusal = await fleet.api("DELETE", `/v1/groups/${GROUP}`).then(
    () => assert.fail("the API deleted a group a live release targets"),
    (e) => (e.status === 409 ? e.error : assert.fail(`the API answered ${e.message}, not 409`)),
  );
  const alert = page.getByRole("alert").filter({ hasText: refusal });
  await alert.first().waitFor({ state: "visible" });
  assert.match(await alert.first().textContent(), /409/, "the alert does not give the status");
  assert.equal(new URL(page.url()).hash, `#/groups/${GROUP}`, "the page left the group although it was not deleted");
  await fleet.api("GET", `/v1/groups/${GROUP}`);
});

scenario("devices: search by id prefix, page forward and back, a device's profile, tasks and groups", 90_000, async (page) => {
  await ensureBaseline();
  await ensureGroup(GROUP);
  const member = fleet.devices[2];
  await fleet.api("POST", `/v1/groups/${GROUP}/members`, { body: { add: [member.id], remove: [] } });
  const prefix = "e2e-phone-";
  const all = fleet.devices.map((d) => d.id).sort();
  const pageSize = 4;

  // The page asks for 50 devices a page and has no page-size control: narrow its calls to 4 a
  // page so the fleet's 6 devices take two pages (the server pages them; the page follows `next`).
  const asked = [];
  await page.route((url) => url.pathname === "/v1/devices", (route) => {
    const url = new URL(route.request().url());
    asked.push(url.search);
    url.searchParams.set("limit", String(pageSize));
    return route.continue({ url: url.toString() });
  });
  await signIn(page, fleet);
  await go(page, "#/devices");
  await heading(page, /devices/i);
  await page.locator('[data-test="devices"]').waitFor();

  // A prefix that matches one device only, then the fleet's common prefix.
  const search = page.getByLabel("Search devices", { exact: true });
  await search.fill(member.id);
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await waitColumn(page, "devices", [member.id], `the search for ${member.id} to list it alone`);
  await search.fill(prefix);
  await page.getByRole("button", { name: "Search", exact: true }).click();
  const first = all.slice(0, pageSize);
  const second = all.slice(pageSize);
  await waitColumn(page, "devices", first, `page 1 to list ${first}`);
  assert.ok(asked.at(-1).includes(`q=${prefix}`), `the page did not search by prefix: ${asked.at(-1)}`);
  assert.equal(new URL(page.url()).hash, `#/devices?q=${prefix}`, "the search is not in the address");
  const next = page.getByRole("button", { name: "Next page", exact: true });
  const previous = page.getByRole("button", { name: "Previous page", exact: true });
  assert.equal(await previous.isDisabled(), true, "Previous page is offered on page 1");

  await next.click();
  await waitColumn(page, "devices", second, `page 2 to list ${second}`);
  const page2 = await firstColumn(page, "devices");
  assert.ok(page2.every((id) => !first.includes(id)), `page 2 repeats page 1: ${page2}`);
  assert.equal(await next.isDisabled(), true, "Next page is offered on the last page");
  assert.match(await page.locator(".pager").textContent(), /Page 2/);

  await previous.click();
  await waitColumn(page, "devices", first, "Previous page to come back to page 1");
  assert.equal(await previous.isDisabled(), true, "Previous page is offered on page 1 again");
  await assertNoErrors(page, "while paging devices");
  await page.unroute((url) => url.pathname === "/v1/devices");

  // Open the device: its profile, its installed task version, its groups.
  const installed = await fleet.installedOn(member, TASK);
  assert.ok(installed, `${member.id} runs no ${TASK}`);
  await waitFor(`the API to list ${TASK} ${installed} on ${member.id}`, async () =>
    (await fleet.api("GET", `/v1/devices/${member.id}`)).tasks.some((t) => t.task === TASK && t.version === installed));
  await page.locator(`[data-test="devices"] a[href="#/devices/${member.id}"]`).click();
  await heading(page, `Device ${member.id}`);
  const profile = await sectionPairs(page, "Profile");
  const expected = PROFILES[fleet.devices.indexOf(member) % PROFILES.length];
  const want = {
    "Device id": member.id, "App id": "com.example.shop", "App version": "5.2.0", OS: expected.os, "OS version": expected.os_version,
    Model: expected.model, "Hardware tier": expected.hardware_tier, Region: expected.region, Tags: "e2e",
  };
  for (const [label, value] of Object.entries(want)) assert.equal(profile[label], value, `profile ${label}: ${JSON.stringify(profile)}`);
  const tasks = await page.locator('[data-test="device-tasks"] tbody tr').evaluateAll((rows) => rows.map((r) => [...r.cells].map((c) => c.textContent.trim())));
  const row = tasks.find((r) => r[0] === TASK);
  assert.ok(row, `the device page lists no ${TASK}: ${JSON.stringify(tasks)}`);
  assert.equal(row[1], installed, `the device page shows ${TASK} ${row[1]}, the device runs ${installed}`);
  const groups = page.locator("section").filter({ has: page.getByRole("heading", { level: 2, name: "Groups", exact: true }) });
  await groups.locator(`a[href="#/groups/${GROUP}"]`).waitFor({ state: "visible" });
  const groupsShown = await groups.locator("li").allTextContents();
  assert.deepEqual(groupsShown.sort(), [...(await fleet.api("GET", `/v1/devices/${member.id}`)).groups].sort());
  await assertNoErrors(page, "on the device page");
});

scenario("data: runs upload records; filter by task, see rows, export JSON Lines of that task only", 120_000, async (page) => {
  await ensureBaseline();
  // A version that fails on purpose left running by an earlier test makes no records: stop it.
  if (made.releases.failing && (await fleet.release(made.releases.failing)).state === "active") {
    await fleet.api("POST", `/v1/releases/${made.releases.failing}/abort`);
    await Promise.all(fleet.devices.map((d) => waitFor(`${d.id} to leave 1.2.0`, async () => (await fleet.installedOn(d, TASK)) !== "1.2.0", { timeoutMs: 45_000 })));
  }
  await ensureShadow();
  const count = async (task) => (await fleet.api("GET", `/v1/records?task=${task}&limit=1000`)).length;
  const beforeShadow = await count(SHADOW);
  const beforeTask = await count(TASK);
  const visited = fleet.devices.slice(0, 3);
  for (const d of visited) {
    const answer = await fleet.visit(d);
    assert.equal(answer.triggered, 2, `${d.id} did not trigger both tasks: ${JSON.stringify(answer)}`);
  }
  // The runs' outputs come up through the tunnel as records.
  await waitFor(`${visited.length} new records of each task`, async () =>
    (await count(SHADOW)) >= beforeShadow + visited.length && (await count(TASK)) >= beforeTask + visited.length, { timeoutMs: 30_000 });
  const expected = await fleet.api("GET", `/v1/records?task=${SHADOW}&limit=1000`);

  await signIn(page, fleet);
  await go(page, "#/data");
  await heading(page, /data/i);
  await page.getByLabel("Task", { exact: true }).fill(SHADOW);
  await page.getByRole("button", { name: "Show records", exact: true }).click();
  await waitFor(`${expected.length} rows of ${SHADOW}`, async () => {
    const tasks = await page.locator('table[data-test="records"] tbody tr').evaluateAll((rows) => rows.map((r) => r.cells[1].textContent.trim()));
    if (tasks.length !== Math.min(expected.length, 50) || tasks.some((t) => !t.startsWith(`${SHADOW} `))) throw new Error(`the rows show ${JSON.stringify(tasks)}`);
    return true;
  }, { timeoutMs: 10_000 });
  assert.equal(new URL(page.url()).hash, `#/data?task=${SHADOW}`);
  const devicesShown = new Set(await firstColumn(page, "records"));
  for (const d of visited) assert.ok(devicesShown.has(d.id), `no record of ${d.id} shown`);
  const payload = await page.locator('table[data-test="records"] tbody tr pre').first().textContent();
  assert.equal(JSON.parse(payload).feature, "ipv", `the payload is not the run's output: ${payload}`);

  const [download] = await Promise.all([
    page.waitForEvent("download", { timeout: 15_000 }),
    page.getByRole("button", { name: "Export JSON Lines", exact: true }).click(),
  ]);
  assert.match(download.suggestedFilename(), /\.jsonl$/);
  const text = await fsp.readFile(await download.path(), "utf8");
  const lines = text.split("\n").filter((l) => l.trim());
  const records = lines.map((l, i) => {
    try {
      return JSON.parse(l);
    } catch (e) {
      throw new Error(`line ${i + 1} of the export is not JSON (${e.message}): ${l.slice(0, 200)}`);
    }
  });
  assert.ok(records.length >= expected.length, `the export has ${records.length} records, the API ${expected.length}`);
  const others = records.filter((r) => r.task !== SHADOW);
  assert.deepEqual(others, [], `the export of ${SHADOW} holds other tasks' records`);
  const exportedIds = new Set(records.map((r) => `${r.device_id}/${r.id}`));
  for (const r of expected) assert.ok(exportedIds.has(`${r.device_id}/${r.id}`), `record ${r.device_id}/${r.id} is not in the export`);
  await page.getByRole("status").filter({ hasText: /Exported/ }).waitFor();
  await assertNoErrors(page, "after the export");
});

scenario("admin: a viewer token shown once, signs in, is revoked and then refused; the audit lists it", 90_000, async (page) => {
  const name = `e2e-temp-${Date.now().toString(36)}`;
  await signIn(page, fleet);
  await go(page, "#/admin");
  await heading(page, /admin/i);
  await page.locator('[data-test="tokens"]').waitFor();
  await page.getByLabel("Token name", { exact: true }).fill(name);
  await setField(page.getByLabel("Role", { exact: true }), "viewer");
  await page.getByRole("button", { name: "Create token", exact: true }).click();
  const shown = page.locator('[data-test="new-secret"]');
  await shown.waitFor({ state: "visible" });
  const secret = (await shown.locator("code").textContent()).trim();
  assert.match(secret, /^\S{16,}$/, `the shown token does not look like one: ${secret}`);
  const token = (await fleet.api("GET", "/v1/tokens")).find((t) => t.name === name);
  assert.ok(token && token.role === "viewer", `the API has no viewer token ${name}`);
  await page.locator('[data-test="tokens"] tbody tr').filter({ hasText: name }).waitFor();

  // Shown once: after leaving the page and coming back, the secret is nowhere.
  await go(page, "#/overview");
  await go(page, "#/admin");
  await heading(page, /admin/i);
  await page.locator('[data-test="tokens"] tbody tr').filter({ hasText: name }).waitFor();
  assert.equal(await shown.count(), 0, "the new token is shown again");
  assert.ok(!(await page.locator("body").textContent()).includes(secret), "the token text is on the page again");

  // The new token signs in elsewhere, as a viewer.
  const other = await newPage(browser);
  try {
    await signIn(other, fleet, secret);
    const whoami = await other.locator('[data-test="whoami"]').textContent();
    assert.match(whoami, /viewer/i);
    assert.ok(whoami.includes(name), `whoami does not name the token: ${whoami}`);
  } finally {
    await other.context().close();
  }

  // Revoke it through the dialog.
  await page.getByRole("button", { name: `Revoke ${name}`, exact: true }).click();
  const dialog = page.locator("dialog[open]");
  await dialog.waitFor({ state: "visible" });
  assert.ok((await dialog.textContent()).includes(name), "the dialog does not name the token");
  await dialog.getByRole("button", { name: "Confirm", exact: true }).click();
  await dialog.waitFor({ state: "hidden" });
  const row = page.locator('[data-test="tokens"] tbody tr').filter({ hasText: name });
  await row.filter({ hasText: /revoked/ }).waitFor();
  assert.equal(await page.getByRole("button", { name: `Revoke ${name}`, exact: true }).count(), 0, "a revoked token is offered Revoke");
  const refusal = await fleet.api("GET", "/v1/me", { token: secret }).then(
    () => assert.fail("the API still takes the revoked token"),
    (e) => (e.status === 401 ? e.error : assert.fail(`the API answered ${e.message}, not 401`)),
  );

  // Signing in with it now fails with the API's text.
  const again = await newPage(browser);
  try {
    await again.goto(`${fleet.url}/console/`);
    await again.getByLabel("Operator token").fill(secret);
    await again.getByRole("button", { name: "Sign in" }).click();
    const alert = again.getByRole("alert").filter({ hasText: refusal });
    await alert.first().waitFor({ state: "visible" });
    assert.match(await alert.first().textContent(), /401/);
    assert.equal(await again.locator('[data-test="whoami"]').filter({ hasText: /\S/ }).isVisible(), false, "signed in with a revoked token");
  } finally {
    await again.context().close();
  }

  // The audit log, filtered by path, lists the create and the revoke (and nothing else).
  await page.getByLabel("Path", { exact: true }).fill("/v1/tokens");
  await page.getByRole("button", { name: "Filter", exact: true }).click();
  const revokeCall = `POST /v1/tokens/${token.id}/revoke`;
  const audit = page.locator('table[data-test="audit"]');
  await audit.locator("tbody tr").filter({ hasText: revokeCall }).waitFor();
  const calls = await audit.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.cells[3].textContent.trim()));
  const apiRows = await fleet.api("GET", "/v1/audit?path=/v1/tokens&limit=100");
  assert.ok(calls.every((c) => /^\w+ \/v1\/tokens/.test(c)), `the filtered audit lists other calls: ${calls}`);
  assert.deepEqual(calls, apiRows.map((a) => `${a.method} ${a.path}`), "the audit table is not the API's filtered audit");
  const createdAt = apiRows.find((a) => a.method === "POST" && a.path === "/v1/tokens" && a.at_ms <= apiRows.find((r) => r.path.endsWith(`/${token.id}/revoke`)).at_ms);
  assert.ok(calls.includes("POST /v1/tokens") && createdAt, `the audit does not list the token's creation: ${calls}`);
  assert.equal(calls.filter((c) => c === revokeCall).length, 1, `the revoke is not listed once: ${calls}`);
});
