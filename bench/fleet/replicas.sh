#!/usr/bin/env bash
# Replicas under load (issue 24): REPLICAS `walle-cloud serve` processes on one PostgreSQL
# database (sharing the data dir: publisher key, admin token and bundle files, as replicas behind
# one bucket would), and one `walle fleet simulate` whose devices are spread over them (device i
# on replica i % REPLICAS). The release is created through replica 0; the other replicas learn of
# it through PostgreSQL LISTEN/NOTIFY. Prints the time to 50 / 90 / 99 % installed, and per
# replica: its devices' notices (first / median / 99th percentile after the release's creation),
# its idle and peak RSS and its CPU during the release.
#   bash bench/fleet/replicas.sh [REPLICAS 2] [DEVICES 10000] [PER_CONNECTION 1] [PACE_MS 30000]
# Release binaries as in run.sh (BENCH_BIN=DIR to use ready ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
replicas="${1:-2}"; devices="${2:-10000}"; per_connection="${3:-1}"; pace_ms="${4:-30000}"
source bench/fleet/common.sh
release_binaries walle-cloud walle-sdk
db="walle_fleet_replicas_$$"
trap 'cleanup; psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2' EXIT
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $db" >&2
planes=(); clouds=(); first_http=""
for i in $(seq 0 $((replicas - 1))); do
  http=$(free_port); grpc=$(free_port)
  cat >"$work/cloud$i.toml" <<TOML
data_dir = "$work/cloud"
http_addr = "127.0.0.1:$http"
grpc_addr = "127.0.0.1:$grpc"
pace_window_ms = $pace_ms
database_url = "postgres://postgres@127.0.0.1:5432/$db"
TOML
  RUST_LOG=warn "$bin/walle-cloud" serve --config "$work/cloud$i.toml" >"$work/cloud$i.log" 2>&1 &
  clouds+=($!); pids+=($!)
  # The first replica creates the data dir and migrates the database before the others start.
  until curl -sf "http://127.0.0.1:$http/v1/health" >/dev/null; do sleep 0.1; done
  planes+=(--device-plane "http://127.0.0.1:$grpc")
  [ -z "$first_http" ] && first_http=$http
done
export WALLE_CLOUD="http://127.0.0.1:$first_http" WALLE_TOKEN="$(cat "$work/cloud/admin.token")"
"$bin/walle" task publish examples/tasks/ipv-feature >/dev/null
RUST_LOG=warn "$bin/walle" --output json fleet simulate "${planes[@]}" \
  --devices "$devices" --devices-per-connection "$per_connection" --release ipv-feature@1.0.0 \
  --settle-secs 5 --timeout-secs 900 --ramp 4000 >"$work/sim.json" 2>"$work/sim.err" &
sim=$!; pids+=($sim)
python3 bench/fleet/sample.py "$work/samples.csv" "${clouds[@]}" "$sim" &
sampler=$!; pids+=($sampler)
if ! wait "$sim"; then
  echo "the simulator failed:" >&2; tail -5 "$work/sim.err" >&2; tail -5 "$work/cloud0.log" >&2; exit 1
fi
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
[ -n "${BENCH_KEEP:-}" ] && cp "$work/sim.json" "$work/sim.err" "$work/samples.csv" "$BENCH_KEEP/"
python3 bench/fleet/replicas_report.py "$work/sim.json" "$work/samples.csv" "$pace_ms" "${clouds[@]}"
