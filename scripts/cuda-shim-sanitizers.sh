#!/usr/bin/env bash
# The CUDA kernels' shim tests (crate cuda-kernels) under the sanitizers: rebuilds the shim with
# AddressSanitizer and runs every test, then with ThreadSanitizer (all threads of a block running
# at once) and runs every test but the RMSNorm build without barriers (the prefill attention build
# with a causal off-by-one has no race: its test runs under both), and finally shows that TSan
# reports the data race of the RMSNorm build without its barriers. The sanitizer runtime is preloaded into the test
# binaries only (through cargo's runner), never into cargo or rustc. Each run is bounded by a
# timeout; the next plain `cargo test` rebuilds the shim without sanitizers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIMIT_SECS="${GLIMPSE_SANITIZER_LIMIT_SECS:-300}"
RUNNER_VAR="CARGO_TARGET_$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER"
CXX="${CXX:-c++}"

# The shim's test targets (cuda-kernels/tests/shim_*.rs), selected by name with --workspace rather
# than with -p glimpse-cuda-kernels: -p resolves the crate's dependencies with its own features
# alone, which rebuilds half the dependency tree (~2.5 min of CI); --workspace reuses the build the
# tests step made, so only the shim itself is rebuilt with the sanitizer.
SHIM_TESTS=()
for test in cuda-kernels/tests/shim_*.rs; do
	SHIM_TESTS+=(--test "$(basename "$test" .rs)")
done

# shim_tests SANITIZER RUNTIME OPTIONS [CARGO TEST ARGS...] (default: every shim test target)
shim_tests() {
	local sanitizer="$1" runtime options="$3"
	runtime="$("$CXX" -print-file-name="$2")"
	shift 3
	[ "$#" -gt 0 ] || set -- "${SHIM_TESTS[@]}"
	env GLIMPSE_SHIM_SANITIZE="$sanitizer" "$RUNNER_VAR=env LD_PRELOAD=$runtime $options" \
		timeout "$LIMIT_SECS" cargo test --workspace --locked "$@"
}

echo "==> AddressSanitizer"
shim_tests address libasan.so ASAN_OPTIONS=detect_leaks=0:abort_on_error=1

TSAN_OPTIONS="TSAN_OPTIONS=halt_on_error=1:suppressions=$ROOT/scripts/cuda-shim/tsan.supp"
echo "==> ThreadSanitizer"
shim_tests thread libtsan.so "$TSAN_OPTIONS" "${SHIM_TESTS[@]}" -- --skip without_its_barriers

echo "==> ThreadSanitizer reports the RMSNorm build without barriers"
LOG="${CARGO_TARGET_DIR:-target}/cuda-shim-tsan-without-sync.log"
if shim_tests thread libtsan.so "$TSAN_OPTIONS" --test shim_kernels without_its_barriers >"$LOG" 2>&1; then
	echo "TSan did not stop the RMSNorm build without barriers (log: $LOG)" >&2
	exit 1
fi
grep -q "ThreadSanitizer: data race .*rms_norm.cu" "$LOG" || {
	echo "the RMSNorm build without barriers failed without a TSan race report (log: $LOG)" >&2
	exit 1
}
echo "TSan reported the race: $(grep -m1 'SUMMARY: ThreadSanitizer' "$LOG")"
