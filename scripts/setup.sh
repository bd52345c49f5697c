#!/usr/bin/env bash
# Installs what the test suite needs that a fresh machine of this kind may lack. Idempotent:
# checks before installing anything.
set -euo pipefail

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
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

# Python tools the tests run: moto (an S3-compatible server for the bundle-store tests),
# schemathesis (fuzzes the control plane from its OpenAPI document), and onnx + onnxruntime (the
# engine's conformance cases and their reference outputs). They live in a private venv
# (WALLE_PY_ENV, default ~/.cache/walle-py), reinstalled only when the pinned list changes.
py_env="${WALLE_PY_ENV:-$HOME/.cache/walle-py}"
py_packages="moto[server]==5.2.5 schemathesis==4.32.5 onnx==1.19.0 onnxruntime==1.31.1"
if [ "$(cat "$py_env/.walle-packages" 2>/dev/null)" != "$py_packages" ]; then
  echo "setup: installing $py_packages into $py_env"
  python3 -m venv "$py_env"
  # shellcheck disable=SC2086 # the list is meant to split into packages
  "$py_env/bin/pip" install -q --disable-pip-version-check $py_packages
  echo "$py_packages" > "$py_env/.walle-packages"
fi
