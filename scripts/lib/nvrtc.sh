# shellcheck shell=bash
# Sourced by the CUDA check scripts, from the repository root. `nvrtc_lib_dir` installs NVRTC from
# PyPI into a venv under target/nvrtc (pinned in scripts/cuda-nvrtc/requirements.txt; pip skips
# what is already there) and prints the folder holding libnvrtc.so.13 and its builtins library.
# shellcheck source=scripts/lib/python-venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/python-venv.sh"
NVRTC_VENV="$(realpath -m "${CARGO_TARGET_DIR:-target}")/nvrtc/venv"
nvrtc_lib_dir() {
	python_venv "$NVRTC_VENV" scripts/cuda-nvrtc/requirements.txt --no-deps >&2
	echo "$NVRTC_VENV"/lib/python3*/site-packages/nvidia/cu13/lib
}
