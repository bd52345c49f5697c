"""Measures a running walle-device (pid) while feeding it events: see run.sh."""
import json, os, sqlite3, sys, time, urllib.request

pid, ingest, data_dir, seconds, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
TICK = os.sysconf("SC_CLK_TCK")


def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status():
    return json.load(urllib.request.urlopen(f"{ingest}/v1/status", timeout=5))


def used_bytes():
    """Bytes of the device database's pages in use (its WAL included), read while it runs."""
    db = sqlite3.connect(f"file:{os.path.join(data_dir, 'device.sqlite')}?mode=ro", uri=True)
    try:
        pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size
    finally:
        db.close()


def post(lines):
    urllib.request.urlopen(urllib.request.Request(f"{ingest}/v1/events", data="\n".join(lines).encode()), timeout=10).read()


deadline = time.time() + 120
while True:
    try:
        if len(status()["installed"]) == 10:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("the device did not install the 10 tasks")
    time.sleep(0.2)
time.sleep(5)
idle = rss_mib()
print(f"idle RSS with 10 tasks installed: {idle:.1f} MiB")

# Item-page visits: enter, 2 clicks, scroll, exit, over 200 sessions; sent in 10 posts a second.
def events(start, count):
    out = []
    for n in range(start, start + count):
        visit, step = divmod(n, 5)
        kind = ["enter", "click", "click", "scroll", "exit"][step]
        out.append(json.dumps({"id": f"e{n}", "ts": int(time.time() * 1000), "session": f"s{visit % 200}",
                               "page": "item", "event": kind, "item": f"sku-{visit}",
                               "args": {"action": "add_to_cart"} if step == 2 else {}}))
    return out

# On-disk cost of stored events: home-page exposures, which trigger no task.
stored_before, used_before = status()["events"]["events"], used_bytes()
now = int(time.time() * 1000)
for batch in range(20):
    post([json.dumps({"id": f"x{batch}-{n}", "ts": now, "session": f"s{n % 50}", "page": "home", "event": "expose",
                      "item": f"sku-{n}", "args": {"slot": n % 8, "price": 19.99}}) for n in range(1000)])
time.sleep(2.5)  # the store writes its buffer every second
stored = status()["events"]["events"] - stored_before
used = used_bytes() - used_before
print(f"on disk: {used / stored * 1000 / 1024:.1f} KiB per 1,000 stored events ({stored} home-page events, "
      f"database pages in use grew {used / 1024:.0f} KiB)")

cpu_before, start, sent, peak = cpu_seconds(), time.time(), 0, idle
per_post = max(1, rate // 10)
while time.time() - start < seconds:
    post(events(sent, per_post))
    sent += per_post
    peak = max(peak, rss_mib())
    next_post = start + sent / rate
    time.sleep(max(0.0, next_post - time.time()))
elapsed = time.time() - start
cpu = (cpu_seconds() - cpu_before) / elapsed * 100
after = status()
print(f"ingesting {sent / elapsed:.0f} events/s for {elapsed:.0f} s ({rate // 5} item-page visits/s, each "
      f"triggering all 10 tasks): RSS peak {peak:.1f} MiB, CPU {cpu:.1f} % of one core")
print(f"  {after['runs_ok']} task runs, {after['runs_dropped']} dropped (queue full), {after['events_rejected']} events rejected")
