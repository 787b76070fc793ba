#!/usr/bin/env bash
# The CUDA kernels' shim tests (crate cuda-kernels) under the sanitizers: rebuilds the shim with
# AddressSanitizer and runs every shim test, then with ThreadSanitizer (all threads of a block
# running at once) and runs every test but the RMSNorm build without barriers (the prefill attention
# build with a causal off-by-one has no race: its test runs under both), and finally shows that TSan
# reports the data race of the RMSNorm build without its barriers. The sanitizer runtime is
# preloaded into the test binaries only, never into cargo or rustc. Each run is bounded by a
# timeout; the next plain `cargo test` rebuilds the shim without sanitizers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIMIT_SECS="${GLIMPSE_SANITIZER_LIMIT_SECS:-300}"
CXX="${CXX:-c++}"

# shim_binaries SANITIZER: builds the workspace's test binaries with the shim compiled under
# SANITIZER and prints the paths of the shim's (cuda-kernels/tests/shim_*.rs). Building the same
# targets as the tests step's `cargo test --workspace` keeps its feature resolution, so only the
# shim and its test binaries are rebuilt; selecting them with -p or --test drops other crates'
# dev-dependency features and rebuilds tokenizers, candle and the engine (~2 min of CI).
shim_binaries() {
	GLIMPSE_SHIM_SANITIZE="$1" timeout "$LIMIT_SECS" \
		cargo test --workspace --locked --no-run --message-format=json-render-diagnostics |
		python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    target = message.get("target", {})
    if (message.get("reason") == "compiler-artifact" and message.get("executable")
            and target.get("kind") == ["test"] and target.get("name", "").startswith("shim_")):
        print(message["executable"])'
}

# shim_tests SANITIZER RUNTIME OPTIONS [TEST ARGS...]: every shim test binary under SANITIZER,
# run from the crate's folder as cargo would, with the runtime preloaded.
shim_tests() {
	local sanitizer="$1" runtime options="$3" binaries binary
	runtime="$("$CXX" -print-file-name="$2")"
	shift 3
	binaries="$(shim_binaries "$sanitizer")"
	[ -n "$binaries" ] || {
		echo "no shim test binaries (cuda-kernels/tests/shim_*.rs) were built" >&2
		return 1
	}
	local status=0
	for binary in $binaries; do
		echo "--- $(basename "$binary")"
		(cd cuda-kernels && timeout "$LIMIT_SECS" env LD_PRELOAD="$runtime" "$options" "$binary" "$@") ||
			status=$?
	done
	return "$status"
}

echo "==> AddressSanitizer"
shim_tests address libasan.so ASAN_OPTIONS=detect_leaks=0:abort_on_error=1

TSAN_OPTIONS="TSAN_OPTIONS=halt_on_error=1:suppressions=$ROOT/scripts/cuda-shim/tsan.supp"
echo "==> ThreadSanitizer"
shim_tests thread libtsan.so "$TSAN_OPTIONS" --skip without_its_barriers

echo "==> ThreadSanitizer reports the RMSNorm build without barriers"
LOG="${CARGO_TARGET_DIR:-target}/cuda-shim-tsan-without-sync.log"
if shim_tests thread libtsan.so "$TSAN_OPTIONS" without_its_barriers --exact \
	rms_norm_without_its_barriers_is_caught >"$LOG" 2>&1; then
	echo "TSan did not stop the RMSNorm build without barriers (log: $LOG)" >&2
	exit 1
fi
grep -q "ThreadSanitizer: data race .*rms_norm.cu" "$LOG" || {
	echo "the RMSNorm build without barriers failed without a TSan race report (log: $LOG)" >&2
	exit 1
}
echo "TSan reported the race: $(grep -m1 'SUMMARY: ThreadSanitizer' "$LOG")"
