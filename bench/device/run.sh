#!/usr/bin/env bash
# The device agent's resource use (issue 7): idle RSS with 10 tasks installed, RSS and CPU while
# ingesting 1,000 events/s through the local endpoint, and on-disk bytes per 1,000 stored events.
# Release binaries: builds them into CARGO_TARGET_DIR (default ~/.cache/walle-bench-target).
#   bash bench/device/run.sh [SECONDS_OF_INGEST (30)] [EVENTS_PER_SECOND (1000)]
# BENCH_BIN=DIR uses the walle-cloud, walle-device and walle binaries in DIR instead of building.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-bench-target}"
seconds="${1:-30}"; rate="${2:-1000}"
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"   # binaries built beforehand, e.g. to compare two commits
else
  cargo build --release -p walle-cloud -p walle-device -p walle-sdk --bins >&2
  bin="$CARGO_TARGET_DIR/release"
fi
work="$(mktemp -d)"; pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port); grpc=$(free_port); ingest=$(free_port)
"$bin/walle-cloud" serve --data-dir "$work/cloud" --http-addr "127.0.0.1:$http" --grpc-addr "127.0.0.1:$grpc" \
  >"$work/cloud.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$http/v1/health" >/dev/null; do sleep 0.1; done
export WALLE_CLOUD="http://127.0.0.1:$http" WALLE_TOKEN="$(cat "$work/cloud/admin.token")"
for n in $(seq 1 10); do
  dir="$work/task-$n"; cp -r examples/tasks/ipv-feature "$dir"
  sed -i "s/^name = \"ipv-feature\"/name = \"ipv-feature-$n\"/" "$dir/walle.toml"
  "$bin/walle" task publish "$dir" >/dev/null
  "$bin/walle" release create --task "ipv-feature-$n" --version 1.0.0 >/dev/null
done
"$bin/walle-device" run --cloud "http://127.0.0.1:$grpc" --data-dir "$work/device" --device-id bench-1 \
  --ingest-addr "127.0.0.1:$ingest" >"$work/device.log" 2>&1 &
device=$!; pids+=($device)
python3 bench/device/load.py "$device" "http://127.0.0.1:$ingest" "$work/device" "$seconds" "$rate"
