#!/usr/bin/env bash
# Prefix caching through the real server (docs/design.md §7): `glimpse bench --dataset doc-qa`
# (DOCS documents of DOC_LEN tokens, QUESTIONS questions each, arriving interleaved) against
# `glimpse serve` with --enable-prefix-caching true and false, the same KV memory for both, under
# two policies: `full`, and LookaheadKV at budget BUDGET. The model has no trained lookahead
# module, so unless LOOKAHEAD_MODULE names one the script writes a random one with
# `glimpse init-lookahead`: its selections are not meant to be good, but the comparison is of the
# same policy with the cache on and off, whose outputs must agree token for token (greedy,
# --ignore-eos). Prints, per policy: the TTFT median of the non-first questions of each document
# (cache on vs off, and the ratio), KV entries held per request after prefill, output tok/s and
# answer agreement. Results (JSON, CSV, ids per run, summary) land in OUT.
#
#   scripts/bench/prefix-cache.sh --model-dir DIR [--out OUT]
#
# The model directory may also come from MODEL_DIR. Environment knobs (defaults): DOCS 4,
# QUESTIONS 16, DOC_LEN 2048, QUESTION_LEN 32, OUTPUT_LEN 32, BUDGET 128, KV_MEMORY_BYTES
# 2000000000, POLICIES "full lookahead", REQUEST_RATE inf (all at once: a document longer than a
# step's token budget is prefilled in chunks, and FCFS admission lets no later request start
# before an earlier one's prefill finished, so every later question finds its document cached;
# with documents that fit one step, set a rate), GLIMPSE (a prebuilt binary; otherwise a release build is made).
# Sanity run at a tiny size on the bundled model (a debug build):
#   GLIMPSE=target/debug/glimpse DOCS=2 QUESTIONS=3 DOC_LEN=64 QUESTION_LEN=8 OUTPUT_LEN=8 \
#     BUDGET=16 KV_MEMORY_BYTES=20000000 REQUEST_RATE=5 scripts/bench/prefix-cache.sh \
#     --model-dir models/stories260K --out target/prefix-cache-sanity
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL_DIR=${MODEL_DIR:-}
OUT=bench-out/prefix-cache
while [ $# -gt 0 ]; do
	case "$1" in
	--model-dir) MODEL_DIR=$2 && shift 2 ;;
	--out) OUT=$2 && shift 2 ;;
	*) echo "prefix-cache.sh: unknown argument $1 (usage: --model-dir DIR [--out OUT])" >&2 && exit 2 ;;
	esac
done
[ -n "$MODEL_DIR" ] || { echo "prefix-cache.sh: pass --model-dir DIR or set MODEL_DIR" >&2; exit 2; }
OUT=$(realpath -m "$OUT")
mkdir -p "$OUT"
DOCS=${DOCS:-4} QUESTIONS=${QUESTIONS:-16} DOC_LEN=${DOC_LEN:-2048}
QUESTION_LEN=${QUESTION_LEN:-32} OUTPUT_LEN=${OUTPUT_LEN:-32} BUDGET=${BUDGET:-128}
export KV_MEMORY_BYTES=${KV_MEMORY_BYTES:-2000000000}
REQUEST_RATE=${REQUEST_RATE:-inf} POLICIES=${POLICIES:-full lookahead}
if [ -z "${GLIMPSE:-}" ]; then
	cargo build --release --locked -p glimpse-server
	GLIMPSE=target/release/glimpse
fi
MODULE=${LOOKAHEAD_MODULE:-$OUT/lookahead.safetensors}
[ -n "${LOOKAHEAD_MODULE:-}" ] ||
	"$GLIMPSE" init-lookahead --model "$MODEL_DIR" --out "$MODULE" >"$OUT/init-lookahead.log" 2>&1
# shellcheck source=scripts/lib/glimpse-server.sh
. scripts/lib/glimpse-server.sh
trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT

for policy in $POLICIES; do
	for cache in true false; do
		run="$OUT/$policy-cache-$cache"
		start_glimpse "$GLIMPSE" "$run.server.log" --model "$MODEL_DIR" \
			--lookahead-module "$MODULE" --enable-prefix-caching "$cache"
		"$GLIMPSE" bench --endpoint "127.0.0.1:$PORT" --dataset doc-qa \
			--num-documents "$DOCS" --document-len "$DOC_LEN" --questions-per-document "$QUESTIONS" \
			--input-len "$QUESTION_LEN" --output-len "$OUTPUT_LEN" --request-rate "$REQUEST_RATE" \
			--seed 7 --temperature 0 --ignore-eos --policies "$policy" --budget "$BUDGET" \
			--metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
			--json "$run.json" --csv "$run.csv" --output-texts "$run.jsonl" >"$run.md" 2>"$run.bench.log"
		curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^glimpse_prefix_cache' >"$run.metrics"
		kill "$SERVER"
		wait "$SERVER" 2>/dev/null || true
	done
done

python3 - "$OUT" "$DOCS" "$POLICIES" <<'EOF' | tee "$OUT/summary.md"
import csv, json, statistics, sys
out, docs, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()

def load(policy, cache):
    run = f"{out}/{policy}-cache-{cache}"
    summary = json.load(open(f"{run}.json"))["policies"][0]
    assert summary["failed_requests"] == 0, f"{run}: failed requests"
    rows = list(csv.DictReader(open(f"{run}.csv")))
    # Request index q·docs + d is question q on document d: indices >= docs are non-first.
    later = [float(r["ttft_ms"]) for r in rows if int(r["index"]) >= docs]
    ids = {r["index"]: r["token_ids"] for r in map(json.loads, open(f"{run}.jsonl"))}
    counters = {line.split("{")[0]: float(line.split()[-1]) for line in open(f"{run}.metrics")}
    return summary, statistics.median(later), ids, counters

print("| policy | prefix cache | TTFT median, non-first questions (ms) | KV entries kept per request | output tok/s | cache hit rate (tokens) |")
print("|---|---|---|---|---|---|")
failed = False
for policy in policies:
    runs = {cache: load(policy, cache) for cache in ("true", "false")}
    for cache, (summary, ttft, _, counters) in runs.items():
        queries = counters["glimpse_prefix_cache_queries_total"]
        rate = counters["glimpse_prefix_cache_hits_total"] / queries if queries else 0.0
        kept = summary["mean_kv_entries_kept"]
        kept = "—" if kept is None else f"{kept:.0f}"
        print(f"| {policy} | {'on' if cache == 'true' else 'off'} | {ttft:.1f} | {kept} | "
              f"{summary['output_token_throughput']:.1f} | {rate:.3f} |")
    on, off = runs["true"], runs["false"]
    same = sum(on[2].get(i) == want for i, want in off[2].items())
    failed |= same != len(off[2])
    print(f"| {policy} | off / on | {off[1] / on[1]:.1f}× | | | answers identical: {same} of {len(off[2])} |")
sys.exit(1 if failed else 0)
EOF
