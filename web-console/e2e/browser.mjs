// Browser side of the console tests: Debian's headless Chromium driven by playwright-core (no
// browser download), sign-in through the form, axe-core injected into each page, screenshots.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { repoRoot } from "./fleet.mjs";

const require = createRequire(import.meta.url);
const axePath = require.resolve("axe-core/axe.min.js");

export const LAPTOP = { width: 1366, height: 768 };
export const PHONE = { width: 375, height: 812 };
export const screenshotDir = path.join(repoRoot, "target/console-screenshots");

export async function launchBrowser() {
  const executablePath = process.env.WALLE_CHROMIUM || "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) throw new Error(`no Chromium at ${executablePath} (run scripts/setup.sh)`);
  fs.mkdirSync(screenshotDir, { recursive: true });
  return chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
}

/**
 * A fresh browsing context (its own sessionStorage) with one page. Console errors and failed
 * requests are collected on `page.problems` for failure reports.
 */
export async function newPage(browser, viewport = LAPTOP) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(10_000);
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && page.problems.push(`console error: ${m.text()}`));
  return page;
}

/** Opens the console and signs in through its form with `token`; waits for the whoami text. */
export async function signIn(page, fleet, token = fleet.adminToken) {
  await page.goto(`${fleet.url}/console/`);
  await page.getByLabel("Operator token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator('[data-test="whoami"]').filter({ hasText: /\S/ }).waitFor({ state: "visible" });
}

/** Goes to a hash route of the console (same document: no reload). */
export async function go(page, hash) {
  await page.evaluate((h) => (window.location.hash = h), hash);
  await page.waitForFunction((h) => window.location.hash === h, hash);
}

/** Waits for the page's single <h1> to read `name` (a string or RegExp). */
export async function heading(page, name) {
  const h1 = page.getByRole("heading", { level: 1, name });
  await h1.waitFor({ state: "visible" });
  const count = await page.locator("h1").count();
  if (count !== 1) throw new Error(`expected exactly one <h1> on ${page.url()}, found ${count}`);
  return h1;
}

/**
 * Runs axe-core in the page; returns the serious and critical violations as readable text (empty
 * when none).
 */
export async function axeViolations(page) {
  const loaded = await page.evaluate(() => typeof window.axe !== "undefined");
  if (!loaded) await page.addScriptTag({ path: axePath });
  const results = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
    }));
  });
  return results
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map(
      (v) =>
        `  [${v.impact}] ${v.id}: ${v.help}\n` +
        v.nodes
          .slice(0, 5)
          .map((n) => `      at ${n.target}\n        ${String(n.summary).replace(/\n/g, "\n        ")}`)
          .join("\n") +
        (v.nodes.length > 5 ? `\n      … and ${v.nodes.length - 5} more` : ""),
    );
}

/** Saves a full-page screenshot as target/console-screenshots/NAME.png. */
export async function screenshot(page, name) {
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/**
 * The number of documents this tab loaded, plus whether a marker set earlier on `window`
 * survived: both show that the console updated in place, without a reload.
 */
export async function setNoReloadMarker(page) {
  await page.evaluate(() => (window.__walleE2eMarker = "still-here"));
}

export async function assertNoReload(page) {
  const state = await page.evaluate(() => ({
    navigations: performance.getEntriesByType("navigation").length,
    marker: window.__walleE2eMarker,
  }));
  if (state.navigations !== 1 || state.marker !== "still-here") {
    throw new Error(`the page reloaded: ${JSON.stringify(state)}`);
  }
}
