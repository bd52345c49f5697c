#!/usr/bin/env bash
# The cross-system LLM bench (issue 25): Walle's engine, llama.cpp (llama-cpp-python) and
# candle 0.11's quantized llama on SmolLM2-135M-Instruct Q4_1, the same GGUF file and the same
# 4,096 prompt tokens, on 1 and 2 threads, with this machine's read bandwidth measured in the
# same run; prints one Markdown table (see src/main.rs for the protocol, table.py for the
# bandwidth limit).
#
#     bash bench/llm/run.sh            # THREADS="1 2" SYSTEMS="ours llama.cpp candle" by default
#
# Builds what it needs, idempotently: llama-cpp-python (which compiles llama.cpp with cmake,
# `apt-get install -y cmake` if missing) in its own venv ($WALLE_LLM_BENCH_ENV, default
# ~/.cache/walle-llm-bench, never the test venv), and this directory's cargo workspace (candle
# and the engine, release). The model comes from the test venv (scripts/setup.sh) or
# $WALLE_SMOLLM2. The prompt is CPython's pydoc_data/topics.py (English prose).
set -euo pipefail
cd "$(dirname "$0")"
venv="${WALLE_LLM_BENCH_ENV:-$HOME/.cache/walle-llm-bench}"
test_py="${WALLE_PY_ENV:-$HOME/.cache/walle-py}/bin/python"
model="${WALLE_SMOLLM2:-$("$test_py" ../../engine/tests/llm/reference.py model-path)}"
threads="${THREADS:-1 2}"
systems="${SYSTEMS:-ours llama.cpp candle}"

if ! "$venv/bin/python" -c 'import llama_cpp, numpy' 2>/dev/null; then
    command -v cmake >/dev/null || { echo "llama-cpp-python needs cmake: apt-get install -y cmake" >&2; exit 1; }
    python3 -m venv "$venv"
    # GGML_NATIVE: llama.cpp for this CPU's instruction set, as our kernels are.
    CMAKE_ARGS="-DGGML_NATIVE=ON" nice -n 10 "$venv/bin/pip" install --quiet llama-cpp-python numpy
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-llm-bench-target}"
nice -n 10 cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/walle-llm-bench"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
text="$("$venv/bin/python" -c 'import pydoc_data.topics as t; print(t.__file__)')"
{
    echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) CPUs;" \
        "ISA: $(grep -o -w -E 'avx2|avx512f|avx512bw|avx512_vnni|avx512vl|fma|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ); model: $model"
} | tee "$work/header.txt" >&2
"$bin" tokens "$model" "$text" "$work/tokens.txt" | tee "$work/results.jsonl"
for t in $threads; do
    "$bin" bandwidth "$t" | tee -a "$work/results.jsonl"
    for s in $systems; do
        case "$s" in
            ours) "$bin" ours "$model" "$work/tokens.txt" "$t" ;;
            llama.cpp) "$venv/bin/python" llama_cpp_bench.py "$model" "$work/tokens.txt" "$t" ;;
            # candle's Q4_1 has no SIMD path (~15 tokens/s of prefill here): up to 1,024
            # tokens, one run each, unless CANDLE_MAX says otherwise.
            candle) RAYON_NUM_THREADS="$t" WALLE_LLM_BENCH_MAX="${CANDLE_MAX:-1024}" WALLE_LLM_BENCH_RUNS=1 \
                "$bin" candle "$model" "$work/tokens.txt" "$t" ;;
            # An earlier build of this bench (OURS_BEFORE=path), for before/after in one run.
            ours-before) "$OURS_BEFORE" ours "$model" "$work/tokens.txt" "$t" | sed 's/"system":"ours"/"system":"ours-before"/' ;;
            *) echo "unknown system $s" >&2; exit 1 ;;
        esac | tee -a "$work/results.jsonl"
    done
    "$bin" bandwidth "$t" | tee -a "$work/results.jsonl"
done
echo
cat "$work/header.txt"
"$venv/bin/python" table.py < "$work/results.jsonl"
if [ -n "${KEEP_RESULTS:-}" ]; then cp "$work/results.jsonl" "$KEEP_RESULTS"; fi
