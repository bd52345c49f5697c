"""Turns one replicas run (the simulator's JSON summary and the /proc samples of each replica)
into table rows: the release's timings, then one row per replica.

    python3 replicas_report.py SIM.json SAMPLES.csv PACE_MS CLOUD_PID [CLOUD_PID ...]
"""
import csv
import json
import sys

sim_path, samples_path, pace_ms = sys.argv[1:4]
cloud_pids = sys.argv[4:]
summary = json.load(open(sim_path))
rows = {}
for row in csv.DictReader(open(samples_path)):
    rows.setdefault(row["pid"], []).append(
        (int(row["unix_ms"]), int(row["rss_kb"]), int(row["cpu_ticks"]))
    )


def secs(ms):
    return "-" if ms is None else f"{ms / 1000:.1f} s"


def millis(ms):
    return "-" if ms is None else f"{ms} ms"


settled, ended = summary["settled_at_unix_ms"], summary["ended_at_unix_ms"]
release = summary.get("release", {})
print(
    f"| {len(cloud_pids)} replicas | {summary['devices']:,} devices on "
    f"{summary['connections']:,} connections | pace {int(pace_ms) / 1000:.0f} s | "
    f"50 / 90 / 99 % installed {secs(release.get('time_to_50_percent_ms'))} / "
    f"{secs(release.get('time_to_90_percent_ms'))} / {secs(release.get('time_to_99_percent_ms'))} | "
    f"peak {summary['peaks']['syncs_per_sec']:.0f} syncs/s |"
)
print()
print("| replica | devices' notices | first / 50 % / 99 % notified after creation | "
      "RSS idle | RSS peak | CPU during release |")
print("|---|---|---|---|---|---|")
fanout = {f["replica"]: f for f in release.get("notices_by_replica", [])}
for index, pid in enumerate(cloud_pids):
    samples = rows.get(pid, [])
    idle = [s for s in samples if s[0] <= settled]
    during = [s for s in samples if settled <= s[0] <= ended]
    cpu = (during[-1][2] - during[0][2]) / 100 if len(during) > 1 else 0.0
    span = (during[-1][0] - during[0][0]) / 1000 if len(during) > 1 else 0.0
    f = fanout.get(index, {})
    print(
        f"| {index}{' (creates the release)' if index == 0 else ''} | {f.get('notices', 0):,} | "
        f"{millis(f.get('first_ms'))} / {millis(f.get('p50_ms'))} / {millis(f.get('p99_ms'))} | "
        f"{max((s[1] for s in idle), default=0) / 1024:.0f} MB | "
        f"{max((s[1] for s in samples), default=0) / 1024:.0f} MB | "
        f"{cpu:.1f} s in {span:.0f} s |"
    )
