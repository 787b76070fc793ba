#!/usr/bin/env bash
# The device run: the checks of engine/tests/gpu_check.rs on a CUDA GPU, in two halves, because
# the GPU machine has no Rust toolchain and is lent for minutes.
#
#   scripts/gpu-check.sh build         here, on a machine with cargo: builds the test binary
#                                      (debug profile: dependencies at opt-level 3, Glimpse's own
#                                      crates at 1), strips it into target/gpu-check/ and checks
#                                      that the tree plus that folder fit what a device run carries
#                                      (64 MiB).
#   scripts/gpu-check.sh run [OUT]     on the GPU machine, in a copy of the repository with
#                                      target/gpu-check/ carried: prints the device (nvidia-smi),
#                                      puts the device's libnvrtc, libcublas and libcublasLt on
#                                      LD_LIBRARY_PATH, runs each check with GLIMPSE_REQUIRE_GPU=1
#                                      (a missing GPU fails instead of skipping) within a 330 s
#                                      budget, and writes to OUT (default $OUT, else
#                                      target/gpu-check/out): results.jsonl (one JSON line per
#                                      comparison and benchmark run), summary.json (device,
#                                      libraries, each check's status and seconds), test.log and
#                                      nvidia-smi.txt. Exits non-zero when a check fails. In
#                                      what is left of the budget, the eviction check runs again
#                                      under compute-sanitizer memcheck if the device has it
#                                      (reported, not deciding: some sandboxes refuse it).
#
# The checks, in order: every kernel compiled by NVRTC for the device and loaded with its entry
# points; the CUDA backend's logits and 32 greedy ids against the CPU backend's on the parity
# fixtures and stories260K; the same with every eviction policy; a benchmark on a 1B-shape Llama
# with random bf16 weights (prefill 2K and 8K, LookaheadKV's TTFT overhead at 8K, decode at batch
# 1 and 64). The fixtures and the bundled model are tracked files, so they travel with the tree.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR=target/gpu-check
BINARY="$DIR/gpu_check"
# What one device run may carry, tree and carried folders together.
CARRY_LIMIT_BYTES=$((64 << 20))
# The whole run's budget: under 6 minutes, so a rerun fits a 15-minute device lease.
BUDGET_SECS=330
# The checks, in the order they run (the benchmark last: it is the one a short budget cuts).
TESTS=(
	every_kernel_compiles_with_nvrtc_for_the_device_and_loads_with_its_entry_points
	prompt_logits_and_greedy_ids_match_the_cpu_backend_on_every_fixture_and_stories260k
	every_eviction_policy_keeps_and_decodes_as_on_the_cpu_backend
	benchmark_decode_at_batch_1_and_64_and_prefill_at_2k_and_8k_on_a_1b_shape_llama
)

build() {
	local started executable tree carried
	started=$SECONDS
	executable="$(cargo test -p glimpse-engine --test gpu_check --no-run --locked \
		--message-format=json-render-diagnostics |
		jq -r 'select(.reason == "compiler-artifact" and .target.name == "gpu_check") | .executable')"
	[ -x "$executable" ] || {
		echo "gpu-check: cargo built no gpu_check test binary" >&2
		exit 1
	}
	mkdir -p "$DIR"
	strip -o "$BINARY" "$executable"
	tree="$(git ls-files -co --exclude-standard -z | du --files0-from=- -cb | tail -1 | cut -f1)"
	carried="$(du -sb "$DIR" | cut -f1)"
	echo "gpu-check: built in $((SECONDS - started)) s; $BINARY is $((carried >> 20)) MiB," \
		"the tree $((tree >> 20)) MiB (limit $((CARRY_LIMIT_BYTES >> 20)) MiB together)"
	if ((tree + carried > CARRY_LIMIT_BYTES)); then
		echo "gpu-check: tree and $DIR exceed what a device run carries" >&2
		exit 1
	fi
	echo "gpu-check: on the device, carry $DIR and run: scripts/gpu-check.sh run \"\$OUT\""
}

# Prints the lib folders of pip's nvidia-* packages wherever python3 looks for packages.
PIP_NVIDIA_LIBS='
import glob, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for root in dict.fromkeys(roots):
    for lib in sorted(glob.glob(root + "/nvidia/*/lib")):
        print(lib)
'

# Prints the folders holding each of the CUDA libraries the backend opens, searched in the CUDA
# toolkit folders, pip's nvidia packages and the linker cache; warns about any not found.
cuda_library_dirs() {
	local lib dir found candidates=()
	candidates+=(/usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib)
	if command -v python3 >/dev/null; then
		# pip's nvidia-* packages: site-packages/nvidia/<package>/lib (cu13/lib for CUDA 13).
		while IFS= read -r dir; do candidates+=("$dir"); done < <(python3 -c "$PIP_NVIDIA_LIBS" 2>/dev/null || true)
	fi
	for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do
		found=""
		for dir in "${candidates[@]}"; do
			if [ -e "$dir/$lib" ]; then
				found="$dir"
				break
			fi
		done
		if [ -z "$found" ]; then
			found="$(ldconfig -p | awk -v lib="$lib" '$1 == lib { sub(/\/[^\/]*$/, "", $NF); print $NF; exit }')"
		fi
		if [ -n "$found" ]; then
			echo "$found"
		else
			echo "gpu-check: $lib not found (the checks that need it will say so)" >&2
		fi
	done | awk '!seen[$0]++'
}

# Runs test $1 of the binary (under the command in the remaining arguments, if any) with what is
# left of the budget; appends its JSON entry to ENTRIES and prints its status.
check() {
	local name="$1" label="$1" left status secs=$SECONDS
	shift
	[ $# -eq 0 ] || label="$name under $*"
	left=$((DEADLINE - SECONDS))
	if ((left <= 0)); then
		status=not_run
	elif timeout "$left" "$@" "$BINARY" --exact "$name" --test-threads=1 --nocapture \
		>>"$OUT_DIR/test.log" 2>&1; then
		status=passed
	elif (($? == 124)); then
		status=timed_out
	else
		status=failed
	fi
	secs=$((SECONDS - secs))
	echo "gpu-check: $label: $status in $secs s"
	ENTRIES+=("{\"name\": \"$label\", \"status\": \"$status\", \"secs\": $secs}")
	[ "$status" = passed ]
}

# compute-sanitizer from the CUDA toolkit, if the device has one.
find_sanitizer() {
	command -v compute-sanitizer 2>/dev/null ||
		{ find /usr/local/cuda*/bin -maxdepth 1 -name compute-sanitizer 2>/dev/null || true; } | head -1
}

run() {
	local started name failed=0 sanitizer
	OUT_DIR="${1:-${OUT:-$DIR/out}}"
	ENTRIES=()
	[ -x "$BINARY" ] || {
		echo "gpu-check: no $BINARY: run \`scripts/gpu-check.sh build\` and carry $DIR" >&2
		exit 1
	}
	mkdir -p "$OUT_DIR"
	OUT_DIR="$(cd "$OUT_DIR" && pwd)"
	rm -f "$OUT_DIR/results.jsonl"
	# Without nvidia-smi (no driver) the checks still run, and fail saying what is missing.
	nvidia-smi 2>&1 | tee "$OUT_DIR/nvidia-smi.txt" || true
	local device
	device="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
		head -1 || echo "no nvidia-smi")"
	local dirs=() dir
	while IFS= read -r dir; do dirs+=("$dir"); done < <(cuda_library_dirs)
	local libraries=""
	for dir in "${dirs[@]}"; do
		LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
		libraries+="${libraries:+, }\"$dir\""
	done
	export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
	echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
	export GLIMPSE_REQUIRE_GPU=1 GLIMPSE_REPO_ROOT="$ROOT" GLIMPSE_GPU_CHECK_OUT="$OUT_DIR"
	GLIMPSE_CUDA_KERNEL_CACHE="$(mktemp -d)"
	export GLIMPSE_CUDA_KERNEL_CACHE
	: >"$OUT_DIR/test.log"
	started=$SECONDS
	DEADLINE=$((started + BUDGET_SECS))
	for name in "${TESTS[@]}"; do
		check "$name" || failed=1
	done
	# Best effort, in what is left of the budget: the eviction check (every kernel but the
	# benchmark's) under memcheck. Some sandboxes refuse the sanitizer, so its status is reported
	# and does not decide the run.
	sanitizer="$(find_sanitizer)"
	if [ -n "$sanitizer" ]; then
		check "${TESTS[2]}" "$sanitizer" --tool memcheck --error-exitcode 1 || true
	else
		echo "gpu-check: no compute-sanitizer on this machine; memcheck skipped"
	fi
	local tests
	tests="$(printf '%s, ' "${ENTRIES[@]}")"
	printf '{"device": "%s", "library_dirs": [%s], "tests": [%s], "secs": %d, "passed": %s}\n' \
		"$device" "$libraries" "${tests%, }" $((SECONDS - started)) \
		"$([ $failed = 0 ] && echo true || echo false)" >"$OUT_DIR/summary.json"
	cat "$OUT_DIR/summary.json"
	grep -A1 'panicked at' "$OUT_DIR/test.log" || true
	return $failed
}

case "${1:-}" in
build) build ;;
run) run "${2:-}" ;;
*)
	echo "usage: scripts/gpu-check.sh build | run [OUT]" >&2
	exit 2
	;;
esac
