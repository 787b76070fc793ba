#!/usr/bin/env bash
# NVRTC through the CUDA backend's own Rust code, without a GPU: runs the engine's CUDA unit tests
# with NVRTC from PyPI (the venv of scripts/cuda-nvrtc-check.sh) on the test binaries' library path,
# including the two that a plain `cargo test` ignores for want of libnvrtc (a library that cannot be
# loaded fails them). They compile every kernel file for sm_80 and sm_90 through
# backend/cuda/nvrtc.rs, check that the second start is served by the disk cache and that a damaged
# entry is recompiled, and that a kernel that does not compile comes back with NVRTC's log. The library path is set through
# cargo's runner, for the test binaries only, never for cargo or rustc.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/lib/nvrtc.sh
LIB="$(nvrtc_lib_dir)"
RUNNER_VAR="CARGO_TARGET_$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER"
# --workspace: the feature resolution of scripts/test.sh's test step, so nothing is rebuilt.
env "$RUNNER_VAR=env LD_LIBRARY_PATH=$LIB" \
	cargo test --workspace --locked --lib -- backend::cuda:: --include-ignored --nocapture
