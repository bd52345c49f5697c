#!/usr/bin/env bash
# Soak (issue 24; not in CI): SECONDS (default 1800) of release churn (a new version of the example
# task released every 2 minutes), device churn and event load (`walle fleet simulate` devices
# going offline and back, each running and uploading), plus one real `walle-device` agent fed the
# sample event stream every 10 s. Prints the cloud's and the agent's RSS and open fds every
# minute and, at the end, their growth from minute 5 to the last minute (target < 5 %).
#   bash bench/fleet/soak.sh [SECONDS (1800)] [DEVICES (2000)]
# Release binaries as in run.sh (BENCH_BIN=DIR to use given ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-1800}"; devices="${2:-2000}"
source bench/fleet/common.sh
release_binaries walle-cloud walle-device walle-sdk
http=$(free_port); grpc=$(free_port); ingest=$(free_port)
RUST_LOG=warn "$bin/walle-cloud" serve --data-dir "$work/cloud" --http-addr "127.0.0.1:$http" \
  --grpc-addr "127.0.0.1:$grpc" >"$work/cloud.log" 2>&1 &
cloud=$!; pids+=($cloud)
until curl -sf "http://127.0.0.1:$http/v1/health" >/dev/null; do sleep 0.1; done
export WALLE_CLOUD="http://127.0.0.1:$http" WALLE_TOKEN="$(cat "$work/cloud/admin.token")"
task="$work/task"; cp -r examples/tasks/ipv-feature "$task"
release() {  # publishes and releases version 1.0.$1
  sed -i "s/^version = .*/version = \"1.0.$1\"/" "$task/walle.toml"
  "$bin/walle" task publish "$task" >/dev/null
  "$bin/walle" release create --task ipv-feature --version "1.0.$1" >/dev/null
}
release 0
RUST_LOG=warn "$bin/walle-device" run --cloud "http://127.0.0.1:$grpc" --data-dir "$work/device" \
  --device-id soak-agent --ingest-addr "127.0.0.1:$ingest" >"$work/device.log" 2>&1 &
agent=$!; pids+=($agent)
RUST_LOG=warn "$bin/walle" fleet simulate --device-plane "http://127.0.0.1:$grpc" --devices "$devices" \
  --churn-per-minute 0.2 --offline-secs 5..60 --runs-per-minute 2 --run-failure-share 0.01 \
  --duration-secs "$seconds" >"$work/sim.out" 2>"$work/sim.err" &
sim=$!; pids+=($sim)
stats() {  # rss_kb fds of a pid
  echo "$(awk '/VmRSS/ {print $2}' "/proc/$1/status") $(ls "/proc/$1/fd" | wc -l)"
}
echo "| minute | cloud RSS (MB) | cloud fds | agent RSS (MB) | agent fds | releases |"
echo "|---|---|---|---|---|---|"
start=$(date +%s); version=0; minute=0; round=0; first=""; last=""
while kill -0 "$sim" 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$seconds" ]; do
  sleep 10
  round=$(( round + 1 ))   # the sample stream with fresh event ids and sessions each time
  sed -e "s/\"id\":\"/\"id\":\"r$round-/" -e "s/\"session\":\"/\"session\":\"r$round-/" \
    examples/events/ipv-sample.jsonl >"$work/events.jsonl"
  "$bin/walle-device" replay "$work/events.jsonl" --to "http://127.0.0.1:$ingest" >/dev/null 2>&1 || true
  elapsed=$(( $(date +%s) - start ))
  if [ $(( elapsed / 120 )) -gt "$version" ]; then version=$(( elapsed / 120 )); release "$version"; fi
  if [ $(( elapsed / 60 )) -gt "$minute" ]; then
    minute=$(( elapsed / 60 ))
    read -r crss cfds <<<"$(stats "$cloud")"; read -r arss afds <<<"$(stats "$agent")"
    echo "| $minute | $(( crss / 1024 )) | $cfds | $(( arss / 1024 )) | $afds | $(( version + 1 )) |"
    [ "$minute" -eq 5 ] && first="$crss $cfds $arss $afds"
    last="$crss $cfds $arss $afds"
  fi
done
if [ -n "$first" ]; then
  python3 - "$first" "$last" <<'PY'
import sys
names = ["cloud RSS", "cloud fds", "agent RSS", "agent fds"]
first, last = [list(map(int, a.split())) for a in sys.argv[1:3]]
for name, a, b in zip(names, first, last):
    print(f"{name}: minute 5 {a}, end {b}, growth {(b - a) / max(a, 1) * 100:+.1f} %")
PY
fi
tail -3 "$work/sim.out"
