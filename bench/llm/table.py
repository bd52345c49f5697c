"""Prints bench/llm/run.sh's JSON lines (stdin) as one Markdown table.

Decode's bandwidth limit at context C is bandwidth / (weight bytes + C × KV bytes per
position): the tokens/s a decoder reaches if it does nothing but read what a token needs once
at the measured read bandwidth (same thread count). A share of it is printed beside each
system's decode figure.
"""

import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
model = next(r for r in rows if r["system"] == "model")
bandwidth = {}
for r in rows:
    if r["system"] == "bandwidth":
        # The best of the passes around the systems: noise only lowers it.
        bandwidth[r["threads"]] = max(bandwidth.get(r["threads"], 0), r["gb_s"])
systems = [s for s in ("ours-before", "ours", "llama.cpp", "candle") if any(r["system"] == s for r in rows)]
threads = sorted(bandwidth)


def figure(system, t, metric, n=None):
    for r in rows:
        if r["system"] == system and r["threads"] == t and r.get("metric") == metric:
            if n is None or r.get("n") == n:
                return r.get("tok_s", r.get("value"))
    return None


def limit(t, c):
    return bandwidth[t] * 1e9 / (model["weight_bytes"] + c * model["kv_bytes_per_position"])


head = ["", *[f"{s} {t}t" for t in threads for s in systems]]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for n in (128, 1024):
    cells = [figure(s, t, "prefill", n) for t in threads for s in systems]
    print(f"| prefill {n} tokens (tok/s) | " + " | ".join(f"{v:.0f}" if v else "–" for v in cells) + " |")
for c in (128, 1024, 4096):
    cells = []
    for t in threads:
        for s in systems:
            v = figure(s, t, "decode", c)
            cells.append(f"{v:.1f} ({100 * v / limit(t, c):.0f} %)" if v else "–")
    print(f"| decode at context {c} (tok/s, % of limit) | " + " | ".join(cells) + " |")
cells = [figure(s, t, "peak_rss_mb") for t in threads for s in systems]
print("| peak RSS (MB) | " + " | ".join(f"{v:.0f}" if v else "–" for v in cells) + " |")
print()
for t in threads:
    lims = ", ".join(f"{limit(t, c):.0f} tok/s at {c}" for c in (128, 1024, 4096))
    print(f"- {t} thread(s): read bandwidth {bandwidth[t]:.1f} GB/s; decode limit {lims}")
print(
    f"- bytes per decoded token: {model['weight_bytes'] / 1e6:.1f} MB of weights + "
    f"{model['kv_bytes_per_position'] / 1e3:.1f} kB of f16 KV per cached position"
)
for t in threads:
    b = figure("llama.cpp", t, "baseline_rss_mb")
    if b:
        print(f"- llama.cpp's peak RSS includes its Python process ({b:.0f} MB before loading the model)")
        break
