"""CPython's figures for the VM benchmark (bench/vm/run.sh), printed as one JSON object.

Run by task-vm/examples/vm_bench.rs in the same run as Walle's figures:
  python3 cpython_peer.py N RUNS ROUNDS
N is the workload's size, RUNS the runs per thread or process per round.
"""

import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload  # noqa: E402


def runs(n, count):
    for _ in range(count):
        workload.run({"n": n})


def threads_throughput(n, count, threads):
    """Runs per second with `threads` threads each doing `count` runs (they share the GIL)."""
    workers = [threading.Thread(target=runs, args=(n, count)) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * count / (time.perf_counter() - start)


def process_main(n, count, barrier, spans):
    barrier.wait()
    start = time.monotonic()
    runs(n, count)
    spans.put((start, time.monotonic()))


def processes_throughput(n, count, processes):
    """Runs per second with `processes` processes each doing `count` runs, from the first start
    to the last finish as the processes saw them (process start-up is not counted)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    spans = context.Queue()
    workers = [
        context.Process(target=process_main, args=(n, count, barrier, spans))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    times = [spans.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(end for _, end in times) - min(start for start, _ in times)
    return processes * count / elapsed


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def subinterpreters(count):
    """Median creation time (ms) and RSS growth per interpreter (KiB) of CPython 3.11's
    subinterpreters, the closest peer of one interpreter per task; None where unavailable."""
    try:
        import _xxsubinterpreters as interpreters
    except ImportError:
        return None, None
    before = rss_kib()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        interpreters.create()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), (rss_kib() - before) / count


def executor_round_trip_us(count):
    """Median submit-and-wait of an empty function on a worker thread: the peer of an empty run."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            pool.submit(lambda ctx: None, {}).result()
            times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def call_ns(count):
    """Nanoseconds per call of a dict's `get` (the peer of a host call) and of a Python function."""
    state = {"k": 1}
    get = state.get

    def noop(key):
        return None

    def loop(fn):
        start = time.perf_counter()
        for _ in range(count):
            fn("k")
        return time.perf_counter() - start

    return loop(get) / count * 1e9, loop(noop) / count * 1e9


def main():
    n, count, rounds = (int(a) for a in sys.argv[1:4])
    runs(n, 1)
    result = {
        "python": sys.version.split()[0],
        "threads1": statistics.median(threads_throughput(n, count, 1) for _ in range(rounds)),
        "threads2": statistics.median(threads_throughput(n, count, 2) for _ in range(rounds)),
        "processes2": statistics.median(processes_throughput(n, count, 2) for _ in range(rounds)),
        "executor_round_trip_us": executor_round_trip_us(2000),
    }
    result["dict_get_ns"], result["function_call_ns"] = call_ns(200_000)
    result["subinterpreter_ms"], result["subinterpreter_kib"] = subinterpreters(20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
