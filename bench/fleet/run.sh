#!/usr/bin/env bash
# The fleet scale benchmark (issue 24): one cloud replica and `walle fleet simulate` devices on
# this machine. The devices connect (each on its own HTTP/2 connection unless PER_CONNECTION > 1),
# settle, then the example task is released to all of them; prints one table row with the
# time to 50 / 90 / 99 % installed, peak syncs/s and notices/s, bundle bytes/s, the cloud's RSS
# idle and per connection, its CPU during the release, and the simulator's own RSS.
#   bash bench/fleet/run.sh [BACKEND sqlite|postgres] [DEVICES 10000] [PER_CONNECTION 1] [PACE_MS 30000]
# Release binaries are built into CARGO_TARGET_DIR (default ~/.cache/walle-bench-target);
# BENCH_BIN=DIR uses the walle-cloud and walle binaries in DIR. The header: bench/fleet/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
backend="${1:-sqlite}"; devices="${2:-10000}"; per_connection="${3:-1}"; pace_ms="${4:-30000}"
source bench/fleet/common.sh
release_binaries walle-cloud walle-sdk
http=$(free_port); grpc=$(free_port)
database_line=""
if [ "$backend" = postgres ]; then
  db="walle_fleet_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $db" >&2
  database_line="database_url = \"postgres://postgres@127.0.0.1:5432/$db\""
  trap 'cleanup; psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2' EXIT
fi
cat >"$work/cloud.toml" <<TOML
data_dir = "$work/cloud"
http_addr = "127.0.0.1:$http"
grpc_addr = "127.0.0.1:$grpc"
pace_window_ms = $pace_ms
$database_line
TOML
RUST_LOG=warn "$bin/walle-cloud" serve --config "$work/cloud.toml" >"$work/cloud.log" 2>&1 &
cloud=$!; pids+=($cloud)
until curl -sf "http://127.0.0.1:$http/v1/health" >/dev/null; do sleep 0.1; done
export WALLE_CLOUD="http://127.0.0.1:$http" WALLE_TOKEN="$(cat "$work/cloud/admin.token")"
"$bin/walle" task publish examples/tasks/ipv-feature >/dev/null
RUST_LOG=warn "$bin/walle" --output json fleet simulate --device-plane "http://127.0.0.1:$grpc" \
  --devices "$devices" --devices-per-connection "$per_connection" --release ipv-feature@1.0.0 \
  --settle-secs 5 --timeout-secs 900 --ramp 4000 >"$work/sim.json" 2>"$work/sim.err" &
sim=$!; pids+=($sim)
python3 bench/fleet/sample.py "$work/samples.csv" "$cloud" "$sim" &
sampler=$!; pids+=($sampler)
if ! wait "$sim"; then
  echo "the simulator failed:" >&2; tail -5 "$work/sim.err" >&2; tail -5 "$work/cloud.log" >&2; exit 1
fi
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
[ -n "${BENCH_KEEP:-}" ] && cp "$work/sim.json" "$work/sim.err" "$work/samples.csv" "$BENCH_KEEP/"
python3 bench/fleet/report.py "$work/sim.json" "$work/sim.err" "$work/samples.csv" "$cloud" "$sim" "$backend" "$pace_ms"
