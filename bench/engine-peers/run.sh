#!/usr/bin/env bash
# Runs the cross-system engine benchmark (release build), after the engine's kernels bench,
# which measures this CPU's fp32 FMA peak (to read the models' GFLOP/s against) and the GEMM
# and convolution kernels. Needs the conformance cases
# (`cargo nextest run -p walle-engine --test conformance` prepares them) and the onnxruntime
# wheel that scripts/setup.sh installs, whose shared library ONNX Runtime is loaded from.
set -euo pipefail
cd "$(dirname "$0")"
venv="${WALLE_PY_ENV:-$HOME/.cache/walle-py}"
ORT_DYLIB_PATH="$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)"
export ORT_DYLIB_PATH
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/walle-bench-target}"
(cd ../.. && cargo bench --quiet -p walle-engine --bench kernels)
cargo run --release --quiet -- "$@"
