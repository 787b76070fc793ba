# shellcheck shell=bash
# Sourced by the check scripts. `start_glimpse GLIMPSE LOG [FLAGS...]` starts `GLIMPSE serve` on free
# loopback ports (gRPC in $PORT, OpenAI HTTP in $HTTP_PORT, metrics in $METRICS_PORT) with a small
# KV pool (KV_MEMORY_BYTES, default 20 MB) and FLAGS, logging to LOG, and returns once `glimpse
# health` reports SERVING (open ports are not readiness: health turns SERVING only after the warm-up
# generation); it fails with the log's tail if that takes longer than 60 s or the server exits. $SERVER holds the server's pid;
# the caller kills it.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_glimpse() {
	local glimpse="$1" log="$2"
	shift 2
	PORT="$(free_port)"
	HTTP_PORT="$(free_port)"
	METRICS_PORT="$(free_port)"
	"$glimpse" serve --port "$PORT" --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT" \
		--kv-memory-bytes "${KV_MEMORY_BYTES:-20000000}" "$@" \
		>"$log" 2>&1 &
	SERVER=$!
	local deadline=$((SECONDS + 60))
	until "$glimpse" health --endpoint "http://127.0.0.1:$PORT" >/dev/null 2>&1; do
		if ! kill -0 "$SERVER" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
			echo "glimpse serve did not report SERVING within 60 s; its log ($log):" >&2
			tail -n 20 "$log" >&2
			return 1
		fi
		sleep 0.2
	done
}
