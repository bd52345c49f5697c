"""Turns one fleet run (the simulator's JSON summary, its progress lines and the /proc samples)
into a table row.

    python3 report.py SIM.json SIM.err SAMPLES.csv CLOUD_PID SIM_PID BACKEND PACE_MS
"""
import csv
import json
import re
import sys

sim_path, progress_path, samples_path, cloud_pid, sim_pid, backend, pace_ms = sys.argv[1:8]
summary = json.load(open(sim_path))


def release_peaks(path):
    """Peak syncs/s, installs/s and MB/s over the progress lines after the release was created."""
    peaks, released = [0.0, 0.0, 0.0], False
    for line in open(path):
        if line.startswith("release ") and " created" in line:
            released = True
        m = re.search(r"\| (\d+) syncs/s (\d+) installs/s ([\d.]+) MB/s", line)
        if released and m:
            peaks = [max(p, float(v)) for p, v in zip(peaks, m.groups())]
    return peaks


sync_peak, install_peak, mb_peak = release_peaks(progress_path)
ticks_per_sec = 100  # os.sysconf("SC_CLK_TCK") on Linux
rows = {}
for row in csv.DictReader(open(samples_path)):
    rows.setdefault(row["pid"], []).append(
        (int(row["unix_ms"]), int(row["rss_kb"]), int(row["cpu_ticks"]), int(row["fds"]))
    )
cloud, client = rows.get(cloud_pid, []), rows.get(sim_pid, [])


def between(samples, start, end):
    return [s for s in samples if start <= s[0] <= end]


def mb(kb):
    return kb / 1024


started, settled = summary["started_at_unix_ms"], summary["settled_at_unix_ms"]
ended = summary["ended_at_unix_ms"]
baseline = [s for s in cloud if s[0] <= started][-1:] or cloud[:1]
idle = between(cloud, summary["connected_at_unix_ms"], settled)
release = between(cloud, settled, ended)
base_rss = baseline[0][1]
idle_rss = max((s[1] for s in idle), default=base_rss)
peak_rss = max((s[1] for s in cloud), default=0)
devices, connections = summary["devices"], summary["connections"]
cpu_release = (release[-1][2] - release[0][2]) / ticks_per_sec if len(release) > 1 else 0.0
release_secs = (release[-1][0] - release[0][0]) / 1000 if len(release) > 1 else 0.0
client_peak = max((s[1] for s in client), default=0)
r = summary.get("release", {})
peaks = summary["peaks"]


def secs(ms):
    return "-" if ms is None else f"{ms / 1000:.1f} s"


print(
    f"| {backend} | {devices:,} | {connections:,} | {int(pace_ms) / 1000:.0f} s | "
    f"{summary['connect_ms'] / 1000:.1f} s | {mb(idle_rss):.0f} MB | "
    f"{(idle_rss - base_rss) / max(connections, 1):.1f} KB | {mb(peak_rss):.0f} MB | "
    f"{secs(r.get('time_to_50_percent_ms'))} / {secs(r.get('time_to_90_percent_ms'))} / "
    f"{secs(r.get('time_to_99_percent_ms'))} | {sync_peak:.0f} | {install_peak:.0f} | "
    f"{peaks['notices_per_sec']:.0f} | {mb_peak:.1f} MB/s | "
    f"{cpu_release:.1f} s in {release_secs:.0f} s ({cpu_release / max(release_secs, 1e-9) * 100:.0f} %) | "
    f"{mb(client_peak):.0f} MB |"
)
