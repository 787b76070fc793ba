#!/usr/bin/env bash
# The same prompts through Glimpse's two wires, one server: `glimpse bench` over gRPC and
# `glimpse bench --backend openai` over the OpenAI-compatible HTTP API, alternating REPS times
# (gRPC first, then HTTP, so drift hits both). Greedy with --ignore-eos, so the two must agree
# token for token; the TTFT medians are compared as the median over repeats of each run's median.
# Results (JSON per run, generated ids, a summary) land in OUT (default bench-out/http-vs-grpc).
#
#   scripts/bench/http-vs-grpc.sh [OUT] [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-bench-out/http-vs-grpc}")
REPS=${2:-5}
mkdir -p "$OUT"
cargo build --release --locked -p glimpse-server
GLIMPSE=target/release/glimpse
# shellcheck source=scripts/lib/glimpse-server.sh
. scripts/lib/glimpse-server.sh
trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start_glimpse "$GLIMPSE" "$OUT/server.log"

WORKLOAD=(--num-prompts 64 --input-len 256 --output-len 64 --max-concurrency 8 --seed 7
	--temperature 0 --ignore-eos --num-warmups 2)
for rep in $(seq 1 "$REPS"); do
	"$GLIMPSE" bench --endpoint "127.0.0.1:$PORT" "${WORKLOAD[@]}" \
		--json "$OUT/grpc-$rep.json" --output-texts "$OUT/grpc-$rep.jsonl" >/dev/null
	"$GLIMPSE" bench --backend openai --endpoint "127.0.0.1:$HTTP_PORT" \
		--model-dir models/stories260K "${WORKLOAD[@]}" \
		--json "$OUT/http-$rep.json" --output-texts "$OUT/http-$rep.jsonl" >/dev/null
done

python3 - "$OUT" "$REPS" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])

def run(wire, rep):
    policy = json.load(open(f"{out}/{wire}-{rep}.json"))["policies"][0]
    ids = [json.loads(line) for line in open(f"{out}/{wire}-{rep}.jsonl")]
    return policy, {r["index"]: r["token_ids"] for r in ids}

medians = {"grpc": [], "http": []}
same = total = 0
for rep in range(1, reps + 1):
    (grpc, grpc_ids), (http, http_ids) = run("grpc", rep), run("http", rep)
    assert grpc["failed_requests"] == 0 and http["failed_requests"] == 0, "failed requests"
    for index, ids in grpc_ids.items():
        total += 1
        same += ids is not None and http_ids.get(index) == ids
    medians["grpc"].append(grpc["ttft"]["median_ms"])
    medians["http"].append(http["ttft"]["median_ms"])
g, h = statistics.median(medians["grpc"]), statistics.median(medians["http"])
print(f"| wire | TTFT median of {reps} run medians (ms) | run medians (ms) |")
print("|---|---|---|")
for wire, value in (("gRPC", g), ("HTTP (OpenAI)", h)):
    runs = ", ".join(f"{m:.2f}" for m in medians["grpc" if wire == "gRPC" else "http"])
    print(f"| {wire} | {value:.2f} | {runs} |")
print(f"\nHTTP / gRPC TTFT median: {h / g:.3f}; token-for-token identical: {same} of {total} requests")
sys.exit(0 if same == total else 1)
EOF
