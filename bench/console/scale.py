#!/usr/bin/env python3
"""How fast the console's API calls answer on a big fleet: seeds a cloud's SQLite database with
DEVICES devices and RELEASES releases (a task's history: most aborted or superseded, a few live),
starts `walle-cloud` on it and times each call the console makes (median of 5, after one warm-up).

    python3 bench/console/scale.py [--devices 1000000] [--releases 10000] [--bin DIR]

Prints when the fleet was in memory after the start, then a table of call → first ms, then
median ms, and the release page after 1,000 / 10,000 / 100,000 devices installed a new version. Seeding writes straight into the schema the cloud created, so
it measures the read paths, not registration.
"""
import argparse, json, os, random, socket, sqlite3, statistics, subprocess, sys, tempfile, time
import urllib.request

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def wait_health(base, proc, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"walle-cloud exited with {proc.returncode}")
        try:
            urllib.request.urlopen(base + "/v1/health", timeout=1).read(); return
        except Exception:
            time.sleep(0.1)
    sys.exit("walle-cloud did not come up")

def start(bin_dir, data, log=subprocess.DEVNULL):
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([os.path.join(bin_dir, "walle-cloud"), "serve", "--data-dir", data,
                             "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}"],
                            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "walle_cloud=info"})
    base = f"http://127.0.0.1:{http}"
    wait_health(base, proc)
    return proc, base

def seed(db_path, devices, releases):
    rng = random.Random(7)
    db = sqlite3.connect(db_path)
    now = int(time.time() * 1000)
    db.execute("INSERT INTO tasks (name, description, created_at_ms) VALUES ('t', '', ?)", (now,))
    db.execute("INSERT INTO task_versions VALUES ('t', '1.0.0', 'd', 1, '{}', '', '', ?)", (now,))
    regions, models, oses = ["eu", "us", "cn", "in", "br"], [f"model-{i}" for i in range(200)], ["android", "ios"]
    def device_rows():
        for i in range(devices):
            dev = f"dev-{i:07d}"
            profile = {"device_id": dev, "app_id": "shop", "app_version": f"5.{i % 10}.0",
                       "os": oses[i % 2], "os_version": "14", "model": rng.choice(models),
                       "hardware_tier": ["low", "mid", "high"][i % 3], "region": regions[i % 5], "tags": []}
            yield (dev, f"h{i}", json.dumps(profile, separators=(",", ":")), now, now, "shop")
    db.executemany("INSERT INTO devices (id, token_hash, profile_json, registered_at_ms, last_seen_ms, app_id) "
                   "VALUES (?, ?, ?, ?, ?, ?)", device_rows())
    db.executemany("INSERT INTO device_tasks VALUES (?, 't', '1.0.0', 'installed', '', ?)",
                   ((f"dev-{i:07d}", now) for i in range(devices)))
    policy = json.dumps({"target": {"all": []}, "stages": [1.0, 10.0, 100.0]})
    def release_rows():
        for seq in range(1, releases + 1):
            state = "active" if seq > releases - 3 else ("aborted" if seq % 2 else "superseded")
            yield (f"rel_{seq:08d}", seq, "t", "1.0.0", state, now - (releases - seq) * 1000,
                   policy, f"rel_{seq:08d}", 0, now, 0, "", "", 0, "active")
    db.executemany("INSERT INTO releases (id, seq, task, version, state, created_at_ms, policy_json, salt, stage, "
                   "stage_started_at_ms, priority, state_reason, superseded_by, notified, state_before_superseded) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", release_rows())
    db.executemany("INSERT INTO task_events (device_id, id, kind, task, version, release_id, at_ms, detail, duration_ms) "
                   "VALUES (?, ?, 'run_failed', 't', '1.0.0', ?, ?, 'KeyError', 0)",
                   ((f"dev-{i:07d}", f"e{i}", f"rel_{releases:08d}", now - i) for i in range(0, devices, 100)))
    db.commit(); db.close()

def wait_fleet_read(log_path, proc, deadline=600):
    """When the cloud's log says the fleet is in memory (its read at start)."""
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"walle-cloud exited with {proc.returncode}")
        with open(log_path) as log:
            if "fleet read into memory" in log.read():
                return time.time()
        time.sleep(0.1)
    sys.exit("the fleet was not read within the deadline")

def install(db_path, devices):
    """`devices` devices, spread over the fleet, report installing t@2.0.0 (as Report writes it)."""
    db = sqlite3.connect(db_path, timeout=60)
    now = int(time.time() * 1000)
    total = db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    step = max(1, total // devices)
    db.executemany("UPDATE device_tasks SET version = '2.0.0', updated_at_ms = ? WHERE device_id = ? AND task = 't'",
                   ((now, f"dev-{i:07d}") for i in range(0, total, step)))
    db.commit(); db.close()

def timed(base, token, path, runs=5):
    """(first call ms, median ms of the next `runs` calls, response bytes)."""
    def once():
        req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
        start = time.perf_counter(); body = urllib.request.urlopen(req, timeout=600).read()
        return (time.perf_counter() - start) * 1000, len(body)
    first, _ = once()
    samples = [once() for _ in range(runs)]
    return first, statistics.median(s[0] for s in samples), samples[0][1]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--releases", type=int, default=10_000)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "cloud")
        proc, _ = start(args.bin, data); proc.terminate(); proc.wait()
        t0 = time.time(); seed(os.path.join(data, "walle.db"), args.devices, args.releases)
        print(f"seeded {args.devices} devices, {args.releases} releases in {time.time() - t0:.0f} s")
        log_path = os.path.join(work, "cloud.log")
        t0 = time.time()
        proc, base = start(args.bin, data, open(log_path, "w"))
        print(f"fleet read into memory at start: {wait_fleet_read(log_path, proc) - t0:.1f} s after launch")
        token = open(os.path.join(data, "admin.token")).read().strip()
        live = f"rel_{args.releases:08d}"
        calls = ["/v1/overview", "/v1/releases?limit=50", f"/v1/releases?limit=50&before={args.releases // 2}",
                 "/v1/releases?task=t&state=active", "/v1/devices?limit=50",
                 "/v1/devices?q=dev-09999&limit=50", "/v1/devices?region=eu&limit=50",
                 "/v1/devices?model=model-7&hardware_tier=high&limit=50", "/v1/devices?model=none&limit=50",
                 "/v1/devices/dev-0123456", f"/v1/releases/{live}/failures?limit=50",
                 f"/v1/releases/rel_{args.releases // 2:08d}", f"/v1/releases/{live}"]
        try:
            print(f"{'call':<60} {'first ms':>10} {'then median ms':>15} {'bytes':>9}")
            for path in calls:
                first, ms, size = timed(base, token, path)
                print(f"{path:<60} {first:>10.1f} {ms:>15.1f} {size:>9}")
            # Installs arrive: the next view re-reads only the devices that changed.
            # A status slower than 100 ms is shared for 4x its cost: wait that out, so the first
            # call after the change computes it afresh.
            for changed in (1_000, 10_000, 100_000):
                install(os.path.join(data, "walle.db"), changed)
                time.sleep(4 * first / 1000 + 1)
                first, ms, size = timed(base, token, f"/v1/releases/{live}")
                print(f"{'release page after ' + str(changed) + ' devices changed':<60} {first:>10.1f} {ms:>15.1f} {size:>9}")
        finally:
            proc.terminate(); proc.wait()

main()
