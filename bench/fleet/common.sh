# Sourced by the fleet benches (run.sh, replicas.sh, soak.sh) from the repository's root:
# `release_binaries PACKAGE...` sets `bin` to the directory of release binaries (BENCH_BIN=DIR
# to use ready ones, else built into CARGO_TARGET_DIR, default ~/.cache/walle-bench-target);
# `work` is a scratch directory and `pids` the processes to stop, both cleaned up on exit;
# `free_port` prints a free loopback port.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-bench-target}"
release_binaries() {
  if [ -n "${BENCH_BIN:-}" ]; then
    bin="$BENCH_BIN"
  else
    local packages=()
    for package in "$@"; do packages+=(-p "$package"); done
    cargo build --release "${packages[@]}" --bins >&2
    bin="$CARGO_TARGET_DIR/release"
  fi
}
work="$(mktemp -d)"; pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
