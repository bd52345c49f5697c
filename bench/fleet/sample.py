"""Samples processes' RSS, CPU time and open file descriptors from /proc every 0.5 s.

    python3 sample.py OUT.csv PID [PID ...]

Writes `unix_ms,pid,rss_kb,cpu_ticks,fds` rows until every PID is gone (or SIGTERM).
"""
import os
import signal
import sys
import time

out_path, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
running = True


def stop(*_):
    global running
    running = False


signal.signal(signal.SIGTERM, stop)


def sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb, ticks, fds


with open(out_path, "w") as out:
    out.write("unix_ms,pid,rss_kb,cpu_ticks,fds\n")
    while running:
        now = int(time.time() * 1000)
        alive = 0
        for pid in pids:
            try:
                rss, ticks, fds = sample(pid)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            alive += 1
            out.write(f"{now},{pid},{rss},{ticks},{fds}\n")
        out.flush()
        if not alive:
            break
        time.sleep(0.5)
