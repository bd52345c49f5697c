# The CPU-bound pure-Python task of the VM throughput benchmark (bench/vm/run.sh). The same text
# runs as a Walle task (task-vm/examples/vm_bench.rs) and under CPython (cpython_peer.py).
# A made-up feature computation: counting, hashing and sorting, no host calls.


def score(n):
    counts = {}
    total = 0
    for i in range(n):
        key = i % 97
        counts[key] = counts.get(key, 0) + 1
        total = (total * 31 + i * key) % 1000003
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return total + ranked[0][0]


def run(ctx):
    return score(ctx["n"])
