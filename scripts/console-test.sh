#!/usr/bin/env bash
# The operator console's end-to-end browser tests (web-console/e2e): headless Chromium, driven by
# playwright-core, against a live walle-cloud with real walle-device processes; axe-core on every
# page; screenshots in target/console-screenshots/. Expects scripts/setup.sh done (Chromium, the
# npm packages) and the binaries built: $WALLE_BIN_DIR, default $CARGO_TARGET_DIR/debug
# (scripts/test.sh builds them). WALLE_CONSOLE_DIR=web-console/assets serves the console's files
# from the work tree instead of the copy built into walle-cloud. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-target}"
export WALLE_BIN_DIR="${WALLE_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
if [ -n "${WALLE_CONSOLE_DIR:-}" ]; then WALLE_CONSOLE_DIR="$(cd "$WALLE_CONSOLE_DIR" && pwd)"; export WALLE_CONSOLE_DIR; fi
[ -d web-console/e2e/node_modules ] || { echo "console-test: run scripts/setup.sh first (no web-console/e2e/node_modules)" >&2; exit 1; }
rm -rf target/console-screenshots
mkdir -p target/console-screenshots
cd web-console/e2e
# One file, its tests in order on one fleet; the whole run is bounded.
exec node --test --test-reporter=spec --test-timeout=600000 "$@" console.test.mjs
