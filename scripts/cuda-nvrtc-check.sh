#!/usr/bin/env bash
# Resource check of the CUDA kernels without a GPU: installs NVRTC from PyPI into a venv under
# target/nvrtc (pinned in scripts/cuda-nvrtc/requirements.txt), compiles every kernel file of
# engine/src/backend/cuda/kernels for sm_80 and sm_90 with ptxas verbose output, prints registers,
# shared memory, stack and spill bytes per kernel, and fails on a compile error or warning, any
# spill, or static shared memory over 48 KiB.
#
#   scripts/cuda-nvrtc-check.sh [ARCH...]      (default: sm_80 sm_90)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/lib/nvrtc.sh
LIB="$(nvrtc_lib_dir)"
ARCHS=("$@")
[ ${#ARCHS[@]} -gt 0 ] || ARCHS=(sm_80 sm_90)
# libnvrtc loads libnvrtc-builtins from the library path.
LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
	"$NVRTC_VENV/bin/python" scripts/cuda-nvrtc/check.py "$LIB/libnvrtc.so.13" engine/src/backend/cuda/kernels \
	"${ARCHS[@]}"
