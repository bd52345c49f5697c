#!/usr/bin/env bash
# Containment benchmark: how soon a hostile task (native-code abuse) is stopped, in Walle's VM
# and in CPython with a SIGALRM deadline, in one run.
#   bash bench/vm/hostile.sh [DEADLINE_MS KILL_AFTER_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-bench-target}"
exec cargo run --release --quiet -p walle-vm --example hostile_bench -- "$@"
