// A real Walle fleet for the console's browser tests: `walle-cloud serve` and several
// `walle-device run` processes from the built binaries, on free loopback ports, each with its own
// temporary data dir; bundles packed with `walle task pack`; events fed to the devices' ingest
// endpoints. Every wait has a deadline (no fixed sleeps), and `stop()` ends every process it
// started, even when a test failed (and on process exit as a last resort).

import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs";
import fsp from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const run = promisify(execFile);

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Where the binaries are: $WALLE_BIN_DIR, else the cargo target dir scripts/test.sh builds. */
export function binDir() {
  if (process.env.WALLE_BIN_DIR) return process.env.WALLE_BIN_DIR;
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), ".cache/walle-target");
  return path.join(target, "debug");
}

/** A loopback port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `check` (sync or async) until it returns a truthy value, which is returned. Throws, naming
 * `what` and the last value or error seen, once `timeoutMs` passed.
 */
export async function waitFor(what, check, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const seen = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what} (last seen: ${seen})`);
    }
    await delay(intervalMs);
  }
}

/** An HTTP error of the control plane, with its status and the API's error text. */
export class ApiError extends Error {
  constructor(method, urlPath, status, text) {
    super(`${method} ${urlPath} -> ${status}: ${text}`);
    this.status = status;
    // The API's error text (the `error` field of its JSON body), else the raw body.
    try {
      this.error = JSON.parse(text).error ?? text;
    } catch {
      this.error = text;
    }
  }
}

// Profiles that make the fleet look like one (several OSes, tiers, regions).
export const PROFILES = [
  { os: "android", os_version: "14", model: "Pixel 8", hardware_tier: "high", region: "eu-west" },
  { os: "ios", os_version: "17.4", model: "iPhone 13", hardware_tier: "mid", region: "us-east" },
  { os: "android", os_version: "12", model: "Galaxy A23", hardware_tier: "low", region: "ap-south" },
];

const toml = (value) => JSON.stringify(value); // a JSON string is a valid TOML basic string

/** One running process with its log file. */
class Proc {
  constructor(name, bin, args, logPath) {
    this.name = name;
    this.logPath = logPath;
    const log = fs.openSync(logPath, "a");
    this.child = spawn(bin, args, { stdio: ["ignore", log, log], env: { ...process.env, NO_COLOR: "1" } });
    fs.closeSync(log);
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
    this.exitCode = undefined;
    this.exited.then((r) => (this.exitCode = r));
    this.child.on("error", (e) => fs.appendFileSync(logPath, `\n[fleet] cannot start ${bin}: ${e.message}\n`));
  }

  get running() {
    return this.exitCode === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Asks the process to stop (SIGTERM), then kills it if it has not after `graceMs`. */
  async stop(graceMs = 5_000) {
    if (!this.running) return;
    this.child.kill("SIGTERM");
    const timer = new Promise((resolve) => setTimeout(() => resolve("late"), graceMs));
    if ((await Promise.race([this.exited, timer])) === "late") {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }

  tail(lines = 30) {
    let text = "";
    try {
      text = fs.readFileSync(this.logPath, "utf8");
    } catch {
      return "(no log)";
    }
    // eslint-disable-next-line no-control-regex
    return text.replace(/\x1b\[[0-9;]*m/g, "").split("\n").slice(-lines).join("\n");
  }
}

const allProcs = new Set();
const killAll = () => {
  for (const p of allProcs) if (p.running) p.child.kill("SIGKILL");
};
// Last resort when the test process ends without `stop()` (a crash, the runner's timeout).
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 }[signal]);
  });
}

export class Fleet {
  /**
   * Starts a cloud and `devices` devices and waits until every device is connected and the cloud
   * lists it. `cloudConfig` / `deviceConfig` are extra TOML lines.
   */
  static async start({ devices = 5, cloudConfig = "", deviceConfig = "" } = {}) {
    const fleet = new Fleet();
    try {
      await fleet.#start(devices, cloudConfig, deviceConfig);
    } catch (e) {
      e.message += `\n${fleet.logTails()}`;
      await fleet.stop();
      throw e;
    }
    return fleet;
  }

  constructor() {
    this.bin = binDir();
    this.procs = [];
    this.devices = [];
  }

  async #start(deviceCount, cloudConfig, deviceConfig) {
    for (const name of ["walle-cloud", "walle-device", "walle"]) {
      if (!fs.existsSync(path.join(this.bin, name))) {
        throw new Error(`no ${name} in ${this.bin} (set WALLE_BIN_DIR, or build with cargo build --workspace --bins)`);
      }
    }
    this.dir = await fsp.mkdtemp(path.join(os.tmpdir(), "walle-e2e-"));
    const [http, grpc] = [await freePort(), await freePort()];
    this.url = `http://127.0.0.1:${http}`;
    this.grpcUrl = `http://127.0.0.1:${grpc}`;
    const cloudDir = path.join(this.dir, "cloud");
    const configPath = path.join(this.dir, "cloud.toml");
    // Quick controller ticks and coverage samples, so stages, aborts and the chart move within
    // seconds; devices spread their pulls over 1.5 s after a notice.
    await fsp.writeFile(
      configPath,
      ["controller_interval_ms = 200", "coverage_sample_ms = 500", "pace_window_ms = 1500", cloudConfig].join("\n"),
    );
    const args = ["serve", "--config", configPath, "--data-dir", cloudDir, "--http-addr", `127.0.0.1:${http}`, "--grpc-addr", `127.0.0.1:${grpc}`];
    this.consoleDir = process.env.WALLE_CONSOLE_DIR || null;
    if (this.consoleDir) args.push("--console-dir", this.consoleDir);
    this.cloud = this.#spawn("cloud", "walle-cloud", args);
    await waitFor("the cloud's /v1/health", async () => {
      if (!this.cloud.running) throw new Error(`walle-cloud exited: ${JSON.stringify(this.cloud.exitCode)}`);
      return (await fetch(`${this.url}/v1/health`)).ok;
    });
    this.adminToken = (await fsp.readFile(path.join(cloudDir, "admin.token"), "utf8")).trim();

    for (let i = 0; i < deviceCount; i++) {
      const id = `e2e-phone-${i + 1}`;
      const ingest = await freePort();
      const dataDir = path.join(this.dir, id);
      const profile = PROFILES[i % PROFILES.length];
      const config = path.join(this.dir, `${id}.toml`);
      await fsp.writeFile(
        config,
        [
          `cloud_url = ${toml(this.grpcUrl)}`,
          `data_dir = ${toml(dataDir)}`,
          `ingest_addr = ${toml(`127.0.0.1:${ingest}`)}`,
          "vm_threads = 1",
          // The tests steer rollbacks from the cloud; a device never rolls back on its own here.
          "rollback_after_failures = 0",
          deviceConfig,
          "[profile]",
          `device_id = ${toml(id)}`,
          `app_id = "com.example.shop"`,
          `app_version = "5.2.0"`,
          ...Object.entries(profile).map(([k, v]) => `${k} = ${toml(v)}`),
          `tags = ["e2e"]`,
        ].join("\n"),
      );
      const proc = this.#spawn(id, "walle-device", ["run", "--config", config]);
      this.devices.push({ id, ingest: `http://127.0.0.1:${ingest}`, proc });
    }
    for (const device of this.devices) {
      await waitFor(`device ${device.id} to connect`, async () => {
        if (!device.proc.running) throw new Error(`${device.id} exited: ${JSON.stringify(device.proc.exitCode)}`);
        return (await this.deviceStatus(device)).connected;
      });
    }
    await waitFor("the cloud to list every device", async () => {
      const listed = await this.deviceIds();
      return this.devices.every((d) => listed.includes(d.id));
    });
  }

  #spawn(name, bin, args) {
    const proc = new Proc(name, path.join(this.bin, bin), args, path.join(this.dir, `${name}.log`));
    this.procs.push(proc);
    allProcs.add(proc);
    return proc;
  }

  /** Stops every process (devices first) and removes the data unless WALLE_E2E_KEEP is set. */
  async stop() {
    const devices = this.procs.filter((p) => p !== this.cloud);
    await Promise.all(devices.map((p) => p.stop()));
    if (this.cloud) await this.cloud.stop();
    for (const p of this.procs) allProcs.delete(p);
    if (this.dir && !process.env.WALLE_E2E_KEEP) await fsp.rm(this.dir, { recursive: true, force: true });
  }

  /** The last lines of every process's log, for a failing test's report. */
  logTails(cloudLines = 30, deviceLines = 6) {
    return this.procs
      .map((p) => {
        const lines = p === this.cloud ? cloudLines : deviceLines;
        return `----- ${p.name} (${p.logPath}), last ${lines} lines\n${p.tail(lines)}`;
      })
      .join("\n");
  }

  // ---- control plane -------------------------------------------------------------------------

  /** Calls the control plane; returns the parsed JSON (or text). Throws ApiError on non-2xx. */
  async api(method, urlPath, { body, token = this.adminToken, contentType } = {}) {
    const headers = { authorization: `Bearer ${token}` };
    let payload;
    if (body instanceof Uint8Array) {
      payload = body;
      headers["content-type"] = contentType || "application/octet-stream";
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers["content-type"] = "application/json";
    }
    const response = await fetch(this.url + urlPath, { method, headers, body: payload });
    const text = await response.text();
    if (!response.ok) throw new ApiError(method, urlPath, response.status, text);
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  /** Ids of the devices the cloud lists (either the paged `{devices, next}` shape or an array). */
  async deviceIds() {
    const ids = [];
    let after = "";
    for (let page = 0; page < 20; page++) {
      const answer = await this.api("GET", `/v1/devices?limit=200${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      const rows = Array.isArray(answer) ? answer : answer.devices;
      ids.push(...rows.map((d) => d.id ?? d.device_id));
      if (Array.isArray(answer) || !answer.next) break;
      after = answer.next;
    }
    return ids;
  }

  /** Creates a token with `role` and returns its secret text. */
  async createToken(name, role) {
    const created = await this.api("POST", "/v1/tokens", { body: { name, role } });
    return created.token;
  }

  /** Creates the task if it does not exist yet. */
  async ensureTask(name, description = "") {
    try {
      await this.api("POST", "/v1/tasks", { body: { name, description } });
    } catch (e) {
      if (e.status !== 409) throw e;
    }
  }

  /** Uploads a bundle file through the API (creating its task first). */
  async publish(bundlePath, task) {
    await this.ensureTask(task);
    const bytes = new Uint8Array(await fsp.readFile(bundlePath));
    return this.api("POST", `/v1/tasks/${task}/versions`, { body: bytes });
  }

  async hasVersion(task, version) {
    try {
      const versions = await this.api("GET", `/v1/tasks/${task}/versions`);
      return versions.some((v) => v.version === version);
    } catch (e) {
      if (e.status === 404) return false;
      throw e;
    }
  }

  /** Creates a release through the API. */
  createRelease(task, version, policy = {}) {
    return this.api("POST", "/v1/releases", { body: { task, version, policy } });
  }

  release(id) {
    return this.api("GET", `/v1/releases/${id}`);
  }

  // ---- bundles ---------------------------------------------------------------------------------

  /**
   * Copies examples/tasks/`example` to a temporary folder, sets its version and, when given,
   * appends `scriptSuffix` to its script (e.g. a `run` that raises), renames the task when `name`
   * is given (a second task with the same code), and packs it with `walle task pack`. Returns the
   * bundle's path.
   */
  async pack(example, { version, scriptSuffix, name } = {}) {
    const source = path.join(repoRoot, "examples/tasks", example);
    const label = name || example;
    const dir = await fsp.mkdtemp(path.join(this.dir, `${label}-${version || "src"}-`));
    await fsp.cp(source, dir, { recursive: true });
    const manifestPath = path.join(dir, "walle.toml");
    for (const [key, value] of [["version", version], ["name", name]]) {
      if (!value) continue;
      const manifest = await fsp.readFile(manifestPath, "utf8");
      const line = new RegExp(`^${key} = ".*"$`, "m");
      if (!line.test(manifest)) throw new Error(`no ${key} line in ${manifestPath}`);
      await fsp.writeFile(manifestPath, manifest.replace(line, `${key} = "${value}"`));
    }
    if (scriptSuffix) await fsp.appendFile(path.join(dir, "main.py"), `\n${scriptSuffix}\n`);
    const out = path.join(this.dir, `${label}-${version || "src"}.walle`);
    try {
      await run(path.join(this.bin, "walle"), ["task", "pack", dir, "-o", out], { timeout: 30_000 });
    } catch (e) {
      throw new Error(`walle task pack ${dir} failed: ${e.stderr || e.message}`);
    }
    return out;
  }

  // ---- devices -------------------------------------------------------------------------------

  async deviceStatus(device) {
    const response = await fetch(`${device.ingest}/v1/status`);
    if (!response.ok) throw new Error(`${device.id} status: ${response.status}`);
    return response.json();
  }

  /** The version of `task` the device runs now, from its own status (null when none). */
  async installedOn(device, task) {
    const status = await this.deviceStatus(device);
    return status.installed.find((t) => t.task === task)?.version ?? null;
  }

  /** Waits until every device in `devices` runs `task@version`. */
  async waitInstalled(task, version, devices = this.devices, timeoutMs = 45_000) {
    await Promise.all(
      devices.map((d) =>
        waitFor(`${d.id} to run ${task} ${version}`, async () => (await this.installedOn(d, task)) === version, { timeoutMs }),
      ),
    );
  }

  /**
   * Feeds a device one item-page visit (enter, click, exit) with fresh event ids, which the
   * ipv-feature trigger turns into one run. Returns the ingest endpoint's answer.
   */
  async visit(device, item = "sku-42") {
    const stamp = `${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    const ts = Date.now();
    const session = `e2e-${stamp}`;
    const events = [
      { id: `${stamp}-1`, ts, session, page: "item", event: "enter", item },
      { id: `${stamp}-2`, ts: ts + 1000, session, page: "item", event: "click", item, args: { action: "add_to_cart" } },
      { id: `${stamp}-3`, ts: ts + 4000, session, page: "item", event: "exit", item },
    ];
    const response = await fetch(`${device.ingest}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/x-ndjson" },
      body: events.map((e) => JSON.stringify(e)).join("\n") + "\n",
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${device.id} refused events: ${response.status} ${text}`);
    return JSON.parse(text);
  }
}
