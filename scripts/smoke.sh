#!/usr/bin/env bash
# Walks the README's "by hand" path with the real binaries: walle-cloud serve, walle-device run,
# walle task pack/publish, walle release create, walle-device replay/status (over loopback and the
# Unix socket), then checks what the cloud stored. Also runs `walle demo`. Expects the binaries
# built (scripts/test.sh does that).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "smoke: FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# get URL [TOKEN] -> body on stdout, non-zero on failure
get() { python3 - "$@" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2: req.add_header("Authorization", "Bearer " + sys.argv[2])
print(urllib.request.urlopen(req, timeout=5).read().decode())
PY
}
# wait_for SECONDS DESCRIPTION COMMAND... : retries COMMAND until it succeeds or time runs out
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

http_port=$(free_port); grpc_port=$(free_port); ingest_port=$(free_port)
cloud_http="http://127.0.0.1:$http_port"
"$bin/walle-cloud" serve --data-dir "$work/cloud" --http-addr "127.0.0.1:$http_port" \
  --grpc-addr "127.0.0.1:$grpc_port" >"$work/cloud.log" 2>&1 &
pids+=($!)
wait_for 30 "the cloud" get "$cloud_http/v1/health"
"$bin/walle-device" run --cloud "http://127.0.0.1:$grpc_port" --data-dir "$work/device" \
  --device-id smoke-1 --ingest-addr "127.0.0.1:$ingest_port" --ingest-socket "$work/ingest.sock" \
  >"$work/device.log" 2>&1 &
pids+=($!)
ingest="http://127.0.0.1:$ingest_port"
connected() { [[ "$(get "$ingest/v1/status")" == *'"connected":true'* ]]; }
wait_for 30 "the device to connect" connected

export WALLE_CLOUD="$cloud_http" WALLE_TOKEN="$(cat "$work/cloud/admin.token")"
"$bin/walle" task pack examples/tasks/ipv-feature --out "$work/ipv.walle"
"$bin/walle" task publish "$work/ipv.walle" >"$work/publish.log"
"$bin/walle" release preview --task ipv-feature --version 1.0.0 --policy examples/policies/staged.json \
  --output json >"$work/preview.log" || fail "walle release preview failed"
grep -q '"percent": 10' "$work/preview.log" || fail "preview does not list the stages"
"$bin/walle" release create --task ipv-feature --version 1.0.0 --output json >"$work/release.log"
release_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/release.log")
# (Output is captured before grep: `cmd | grep -q` under pipefail fails when grep exits early.)
paused=$("$bin/walle" release pause "$release_id" --output json)
grep -q '"state": "paused"' <<<"$paused" || fail "pause did not pause: $paused"
resumed=$("$bin/walle" release resume "$release_id" --output json)
grep -q '"state": "active"' <<<"$resumed" || fail "resume did not resume: $resumed"
installed() { [[ "$(get "$ingest/v1/status")" == *'"version":"1.0.0"'* ]]; }
wait_for 30 "the device to install ipv-feature 1.0.0" installed

[ "$(stat -c %a "$work/ingest.sock")" = 600 ] || fail "the ingest socket is not mode 0600"
replay=$("$bin/walle-device" replay examples/events/ipv-sample.jsonl --socket "$work/ingest.sock" 2>"$work/replay.err")
echo "$replay"
grep -q "9 events accepted, 1 rejected, 2 task runs triggered" <<<"$replay" || fail "unexpected replay result: $replay"
grep -q "teleport" "$work/replay.err" || fail "the rejected line's reason was not shown"
two_records() { get "$cloud_http/v1/records?device=smoke-1" "$WALLE_TOKEN" | python3 -c 'import json,sys; sys.exit(len(json.load(sys.stdin)) != 2)'; }
wait_for 30 "2 records in the cloud" two_records
get "$cloud_http/v1/records?device=smoke-1" "$WALLE_TOKEN" | python3 -c '
import json, sys
records = {r["payload"]["item"]: r["payload"] for r in json.load(sys.stdin)}
assert records["sku-42"]["dwell_ms"] == 10000 and records["sku-42"]["clicks"] == 2, records
assert records["sku-42"]["add_to_cart"] == 1 and records["sku-42"]["scrolls"] == 1, records
assert records["sku-7"]["dwell_ms"] == 5000 and records["sku-7"]["clicks"] == 0, records
'
"$bin/walle-device" status --to "$ingest" >"$work/status.log"
grep -q '"runs_ok": 2' "$work/status.log" || fail "device status does not show 2 runs: $(cat "$work/status.log")"
"$bin/walle-device" status --socket "$work/ingest.sock" >"$work/status-socket.log"
grep -q '"runs_ok": 2' "$work/status-socket.log" || fail "status over the socket: $(cat "$work/status-socket.log")"
# The sample has one line the pipeline refuses (a "teleport" event): that fails a test unless allowed.
if "$bin/walle" task test examples/tasks/ipv-feature --events examples/events/ipv-sample.jsonl >"$work/local.log" 2>&1; then
  fail "walle task test passed with a refused event line"
fi
grep -q "1 of 10 event lines were refused" "$work/local.log" || fail "the refused line was not reported: $(cat "$work/local.log")"
"$bin/walle" task test examples/tasks/ipv-feature --events examples/events/ipv-sample.jsonl --allow-rejected \
  >"$work/local.log" 2>&1 || fail "walle task test failed: $(cat "$work/local.log")"
grep -q '"dwell_ms":10000' "$work/local.log" || fail "walle task test did not print the feature"

"$bin/walle" demo >"$work/demo.log" 2>&1 || fail "walle demo exited non-zero"
grep -q "demo OK" "$work/demo.log" || fail "walle demo did not report success"
echo "smoke: binaries OK (cloud, device, pack, publish, release, replay, status, task test, demo)"
