#!/usr/bin/env bash
# The whole test suite: unit and integration tests of every crate, the binary walkthrough, and
# the console's browser tests (headless Chromium against a live cloud and devices).
# Installs what the tests need first (idempotent). This is the README's test command and what
# .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-target}"

bash scripts/setup.sh
cargo build --workspace --bins
bash scripts/smoke.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
bash scripts/console-test.sh
