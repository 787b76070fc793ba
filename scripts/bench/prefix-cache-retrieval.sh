#!/usr/bin/env bash
# Prefix caching on the retrieval task (docs/design.md §7): exact-answer accuracy with the cache on
# equals off. The bundled retrieval model answers the 2,048-token prompts of
# data/retrieval-eval/retrieval-2048.jsonl through the real server, greedy, under the full cache
# and LookaheadKV (its trained module) at budget BUDGET. With the cache on, the prompts are sent
# twice: the second pass finds every prompt cached but its last token, so its answers come from
# cached KV plus a one-token prefill (and, under LookaheadKV, a selection scored over cached keys
# into fresh blocks). Prints accuracy per pass and how many answers equal the cache-off run's.
#
#   scripts/bench/prefix-cache-retrieval.sh [--out OUT]
#
# Environment knobs (defaults): PROMPTS 100, BUDGET 128, GLIMPSE (a prebuilt binary; otherwise a
# release build is made).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=bench-out/prefix-cache-retrieval
while [ $# -gt 0 ]; do
	case "$1" in
	--out) OUT=$2 && shift 2 ;;
	*) echo "prefix-cache-retrieval.sh: unknown argument $1 (usage: [--out OUT])" >&2 && exit 2 ;;
	esac
done
OUT=$(realpath -m "$OUT")
mkdir -p "$OUT"
PROMPTS=${PROMPTS:-100} BUDGET=${BUDGET:-128}
export KV_MEMORY_BYTES=${KV_MEMORY_BYTES:-2000000000}
if [ -z "${GLIMPSE:-}" ]; then
	cargo build --release --locked -p glimpse-server
	GLIMPSE=target/release/glimpse
fi
MODEL=models/retrieval-byte-6l
# shellcheck source=scripts/lib/glimpse-server.sh
. scripts/lib/glimpse-server.sh
trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT

for policy in full lookahead; do
	for cache in true false; do
		start_glimpse "$GLIMPSE" "$OUT/$policy-cache-$cache.server.log" --model "$MODEL" \
			--lookahead-module models/retrieval-byte-6l-lookahead/lookahead.safetensors --enable-prefix-caching "$cache"
		passes=1
		[ "$cache" = true ] && passes=2
		for pass in $(seq 1 "$passes"); do
			run="$OUT/$policy-cache-$cache-pass-$pass"
			"$GLIMPSE" bench --endpoint "127.0.0.1:$PORT" --dataset jsonl \
				--dataset-path data/retrieval-eval/retrieval-2048.jsonl --num-prompts "$PROMPTS" \
				--temperature 0 --policies "$policy" --budget "$BUDGET" --max-concurrency 8 \
				--json "$run.json" --output-texts "$run.jsonl" >"$run.md" 2>"$run.bench.log"
		done
		curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^glimpse_prefix_cache' \
			>"$OUT/$policy-cache-$cache.metrics"
		kill "$SERVER"
		wait "$SERVER" 2>/dev/null || true
	done
done

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, sys
out = sys.argv[1]

def load(run):
    summary = json.load(open(f"{out}/{run}.json"))["policies"][0]
    assert summary["failed_requests"] == 0, f"{run}: failed requests"
    ids = {r["index"]: r["token_ids"] for r in map(json.loads, open(f"{out}/{run}.jsonl"))}
    return summary["answer_accuracy"], ids

print("| policy | run | exact-answer accuracy | answers identical to cache off |")
print("|---|---|---:|---:|")
failed = False
for policy in ("full", "lookahead"):
    off_accuracy, off_ids = load(f"{policy}-cache-false-pass-1")
    print(f"| {policy} | cache off | {off_accuracy:.2f} | — |")
    for pass_, label in ((1, "cache on, cold"), (2, "cache on, every prompt cached")):
        accuracy, ids = load(f"{policy}-cache-true-pass-{pass_}")
        same = sum(ids.get(i) == want for i, want in off_ids.items())
        failed |= accuracy != off_accuracy or same != len(off_ids)
        print(f"| {policy} | {label} | {accuracy:.2f} | {same} of {len(off_ids)} |")
    hits = {line.split("{")[0]: float(line.split()[-1]) for line in open(f"{out}/{policy}-cache-true.metrics")}
    print(f"| {policy} | hit rate over both passes | "
          f"{hits['glimpse_prefix_cache_hits_total'] / hits['glimpse_prefix_cache_queries_total']:.3f} | |")
sys.exit(1 if failed else 0)
EOF
