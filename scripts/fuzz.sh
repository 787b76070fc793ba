#!/usr/bin/env bash
# Coverage-guided fuzzing of the engine's parsers and the server's request conversion and
# validation (docs/fuzzing.md): each target of fuzz/ runs under libFuzzer with AddressSanitizer
# for SECONDS seconds (default 600), starting from its committed corpus. New inputs go to
# fuzz/target/corpus/<target> (not committed); a crash leaves its input in
# fuzz/artifacts/<target>/ and stops the script. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). The bounded runs on stable are `cargo test -p glimpse-engine
# --test fuzz_corpus` and `cargo test -p glimpse-server --test fuzz_corpus`, which
# scripts/test.sh runs.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config_json safetensors_header lookahead_file chat_template http_body grpc_request)
fi

for target in "${targets[@]}"; do
  work="fuzz/target/corpus/$target"
  mkdir -p "$work"
  printf '\n==> %s for %s s\n' "$target" "$seconds"
  # -timeout: an input that takes 5 s is a hang worth reporting (1 s gave false alarms on a loaded
  # machine); -rss_limit_mb: a parser that allocates gigabytes for a small input is a finding too.
  cargo +nightly fuzz run -O --debug-assertions "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1
done
