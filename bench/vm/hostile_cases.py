"""Hostile task bodies for the containment benchmark (bench/vm/hostile.sh).

Each spends its time or memory inside the interpreter's native code, where a deadline delivered
between bytecodes cannot reach it. The same text runs as a Walle task handler
(task-vm/examples/hostile_bench.rs) and, for the peer, under CPython with a SIGALRM deadline
(hostile_peer.py).
"""

CASES = [
    ("native loop", "return sum(range(10**15))"),
    ("deque of count", "import collections, itertools\n    collections.deque(itertools.count(), 0)"),
    ("sort a huge range", "return len(sorted(range(10**8)))"),
    ("power 10**10**8", "return 10**10**8"),
    ("repeated squaring", "x = 3\n    while True:\n        x = x * x"),
    ("regex backtracking", "import re\n    return re.match(r'(a|a)*\\1c', 'a' * 40)"),
    ("bytearray(10**10)", "return len(bytearray(10**10))"),
    ("format width", "return len(f'{1:>10000000000}')"),
    ("join a repeated list", "return len(''.join(['x' * 10**6] * 1000))"),
]
