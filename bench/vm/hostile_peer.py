"""CPython's side of the containment benchmark: each hostile case of hostile_cases.py run in a
subprocess of its own, with a SIGALRM deadline that raises in the script, as CPython's only way
to stop code in a thread; printed as one JSON object {case: seconds until it stopped, or null if
it had not stopped when killed}.

  python3 hostile_peer.py DEADLINE_S KILL_AFTER_S
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_cases import CASES  # noqa: E402

CHILD = """
import signal, sys
def stop(signum, frame):
    raise TimeoutError("deadline")
signal.signal(signal.SIGALRM, stop)
def run(ctx):
    {body}
signal.setitimer(signal.ITIMER_REAL, {deadline})
try:
    run(None)
except BaseException:
    pass
"""


def main():
    deadline, kill_after = float(sys.argv[1]), float(sys.argv[2])
    results = {}
    for name, body in CASES:
        code = CHILD.format(body=body, deadline=deadline)
        start = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-c", code], timeout=kill_after, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[name] = time.perf_counter() - start
        except subprocess.TimeoutExpired:
            results[name] = None
    print(json.dumps({"python": sys.version.split()[0], "stopped_after_s": results}))


if __name__ == "__main__":
    main()
