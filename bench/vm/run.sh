#!/usr/bin/env bash
# Task VM benchmark: Walle's interpreters against CPython 3.11, in one run.
#   bash bench/vm/run.sh [N RUNS ROUNDS]
# N: workload size (bench/vm/workload.py), RUNS: runs per worker per round, ROUNDS: rounds (median).
# Run it on a quiet machine: the throughput figures need both cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-bench-target}"
exec cargo run --release --quiet -p walle-vm --example vm_bench -- "$@"
