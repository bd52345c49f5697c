"""llama.cpp's half of the cross-system LLM bench (bench/llm/run.sh), through llama-cpp-python.

    python llama_cpp_bench.py MODEL TOKENS THREADS

Runs the protocol of src/main.rs (see its module doc) on llama.cpp with its defaults (f16 KV
cache, batches of 512) on THREADS threads for both prefill and decode, and prints one JSON
object per figure. Peak memory is the process's VmHWM, which includes the Python interpreter
(printed as `baseline_rss_mb`, measured before the model is loaded).
"""

import json
import statistics
import sys
import time

import numpy as np


def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    return 0.0


def main():
    model, tokens_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompt = [int(line) for line in open(tokens_path) if line.strip()]
    baseline = rss("VmRSS")
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    info = f"llama-cpp-python {llama_cpp.__version__}, n_batch {llm.n_batch}"

    def emit(**fields):
        print(json.dumps({"system": "llama.cpp", "threads": threads, **fields}), flush=True)

    def forward(tokens):
        # eval() decodes in batches of n_batch after the cached positions and keeps the
        # last position's logits.
        llm.eval(tokens)
        return llm._ctx.get_logits()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    llm.reset()
    forward(prompt[:16])
    for n in (128, 1024):
        times = []
        for _ in range(3):
            llm.reset()
            start = time.perf_counter()
            forward(prompt[:n])
            times.append(time.perf_counter() - start)
        emit(metric="prefill", n=n, tok_s=round(n / statistics.median(times), 2), info=info)
    decoded = 64
    for c in (128, 1024, 4096):
        llm.reset()
        for i in range(0, c - decoded, 1024):
            forward(prompt[i : min(i + 1024, c - decoded)])
        start = time.perf_counter()
        for _ in range(decoded):
            forward([int(np.argmax(last_logits()))])
        seconds = time.perf_counter() - start
        emit(metric="decode", n=c, tok_s=round(decoded / seconds, 2), info=info)
    emit(metric="peak_rss_mb", value=round(rss("VmHWM"), 1))
    emit(metric="baseline_rss_mb", value=round(baseline, 1))


if __name__ == "__main__":
    main()
