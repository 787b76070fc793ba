#!/usr/bin/env bash
# How fast a prompt past --max-prompt-bytes is refused, and whether health probes stall while it
# is: REPS times, a BYTES-byte text prompt is POSTed to /v1/completions (timed from the first byte
# sent to the whole answer read) while a second connection GETs /health back to back; prints the
# median and the worst of each, against the 100 ms target of each (k8s probes time out at 3 s;
# a refused request should cost the server no tokenizing at all). The refusal must be a 400
# naming --max-prompt-bytes, and glimpse_tokenizer_jobs_total must not move. Exits non-zero when
# a worst case misses its target.
#
#   scripts/bench/big-prompt-latency.sh [BYTES] [REPS]
#
# Builds and runs the release binary; GLIMPSE=path/to/glimpse runs another build instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
BYTES=${1:-4000000}
REPS=${2:-10}
if [ -z "${GLIMPSE:-}" ]; then
	cargo build --release --locked -p glimpse-server
	GLIMPSE=target/release/glimpse
fi
LOG=$(mktemp)
# shellcheck source=scripts/lib/glimpse-server.sh
. scripts/lib/glimpse-server.sh
trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$LOG"' EXIT
start_glimpse "$GLIMPSE" "$LOG"

python3 - "$HTTP_PORT" "$METRICS_PORT" "$BYTES" "$REPS" <<'EOF'
import http.client, json, statistics, sys, threading, time

http_port, metrics_port, size, reps = (int(a) for a in sys.argv[1:])
TARGET_MS = 100.0

def tokenizer_jobs():
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("glimpse_tokenizer_jobs_total"))

def timed(method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
    conn.connect()
    started = time.perf_counter()
    headers = {"Content-Type": "application/json"} if body else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    return response.status, answer, elapsed

stop = threading.Event()
health_ms = []
def probe():
    while not stop.is_set():
        status, _, ms = timed("GET", "/health")
        assert status == 200, f"/health answered {status}"
        health_ms.append(ms)

body = json.dumps({"prompt": "a" * size, "max_tokens": 4}).encode()
jobs_before = tokenizer_jobs()
prober = threading.Thread(target=probe)
prober.start()
refusal_ms = []
try:
    for _ in range(reps):
        status, answer, ms = timed("POST", "/v1/completions", body)
        message = json.loads(answer)["error"]["message"]
        assert status == 400 and "--max-prompt-bytes" in message, (status, message)
        refusal_ms.append(ms)
finally:
    stop.set()
    prober.join()
assert tokenizer_jobs() == jobs_before, "a refused prompt reached the tokenizer pool"

def line(name, values):
    worst = max(values)
    verdict = "ok" if worst < TARGET_MS else "MISSED"
    print(f"| {name} | {len(values)} | {statistics.median(values):.1f} | {worst:.1f} | "
          f"< {TARGET_MS:.0f} ms: {verdict} |")
    return worst < TARGET_MS

print(f"{size}-byte prompt refused by --max-prompt-bytes while /health is probed back to back")
print("| request | count | median (ms) | worst (ms) | target |")
print("|---|---|---|---|---|")
ok = line(f"POST /v1/completions ({size} bytes), refused", refusal_ms)
ok &= line("GET /health, concurrent", health_ms)
sys.exit(0 if ok else 1)
EOF
