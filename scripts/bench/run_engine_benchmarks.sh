#!/usr/bin/env bash
# Engine benchmarks against Hugging Face transformers (f32 and bf16) and llama.cpp (GGUF bf16 and
# Q8_0) on the same weights, in one run:
#   1. writes a random Llama with SmolLM-135M's shape and the GPT-2 vocabulary (50257 tokens, the
#      tokenizer in scripts/bench/tokenizers/gpt2, which llama.cpp's converter needs); never
#      committed, ~560 MB,
#   2. converts it to GGUF bf16 and Q8_0 with convert_hf_to_gguf.py from the source package of the
#      pinned llama-cpp-python (its sha256 checked against the package index),
#   3. forward pass — prefill 512/4096 tokens, decode at batch 1 (and 16 where the peer batches),
#      copy bandwidth: Glimpse f32 and bf16 (weights and KV cache alike), transformers f32 and
#      bf16, llama.cpp bf16 and Q8_0 (its KV cache in f16, its default),
#   4. offline throughput: 64 requests, 256-token prompts, 128 output tokens — Glimpse's engine loop
#      in f32 and bf16 (batched and one at a time) and transformers' static-batch generate() in f32
#      and bf16.
# Results land in OUT (default bench-out/) as JSON; scripts/bench/engine_table.py OUT prints the
# tables docs/benchmarks.md quotes. Run it on an otherwise idle machine: llama.cpp's OpenMP threads
# spin at barriers and collapse under contention.
#
#   scripts/bench/run_engine_benchmarks.sh [OUT]
#     PYTHON (default python3) needs: pip install -r scripts/bench/requirements-peers.txt
#     llama.cpp is installed into a venv under target/ (the first install compiles it, ~30 min on
#     2 cores; later runs reuse it).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib/python-venv.sh
source scripts/lib/python-venv.sh
OUT=$(realpath -m "${1:-bench-out}")
PYTHON=${PYTHON:-python3}
REPEATS=${REPEATS:-3}
MODEL="$OUT/smollm135m-gpt2"
LLAMA_VENV="target/bench-openai/venv"
LLAMA_REQS="scripts/bench/openai-llamacpp/requirements.txt"
mkdir -p "$OUT"

[ -f "$MODEL/model.safetensors" ] ||
	"$PYTHON" scripts/bench/peer_transformers.py make-model "$MODEL" --tokenizer scripts/bench/tokenizers/gpt2

python_venv "$LLAMA_VENV" "$LLAMA_REQS"
LLAMA_VERSION=$("$LLAMA_VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')
SDIST="target/bench-llamacpp/llama_cpp_python-$LLAMA_VERSION"
if [ ! -f "$SDIST/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
	# The converter ships in the source package only; pip would build it to download it, so fetch
	# the file the index lists and check the sha256 the index gives for it.
	INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}
	LINK=$(curl -sSf "$INDEX/llama-cpp-python/" |
		grep -o "href=\"[^\"]*/llama_cpp_python-$LLAMA_VERSION\.tar\.gz#sha256=[0-9a-f]*\"" | head -1)
	[ -n "$LINK" ] || { echo "no source package of llama-cpp-python $LLAMA_VERSION at $INDEX" >&2; exit 1; }
	URL=${LINK#href=\"}
	URL=${URL%\"}
	mkdir -p target/bench-llamacpp
	curl -sSfL "${URL%%#*}" -o "$SDIST.tar.gz"
	echo "${URL##*sha256=}  $SDIST.tar.gz" | sha256sum -c --quiet
	tar xzf "$SDIST.tar.gz" -C target/bench-llamacpp
fi
for TYPE in bf16 q8_0; do
	[ -f "$OUT/smollm135m-gpt2-$TYPE.gguf" ] ||
		PYTHONPATH="$SDIST/vendor/llama.cpp/gguf-py" "$PYTHON" "$SDIST/vendor/llama.cpp/convert_hf_to_gguf.py" \
			"$MODEL" --outtype "$TYPE" --outfile "$OUT/smollm135m-gpt2-$TYPE.gguf"
done

for DTYPE in f32 bf16; do
	cargo bench -p glimpse-engine --bench forward -- --model "$MODEL" --dtype "$DTYPE" \
		--kv-cache-dtype "$DTYPE" --repeats "$REPEATS" --json "$OUT/glimpse-forward-$DTYPE.json"
done
# Q8_0 weights against llama.cpp's Q8_0 file; a bf16 KV cache, as llama.cpp's is f16.
cargo bench -p glimpse-engine --bench forward -- --model "$MODEL" --quantize int8 \
	--kv-cache-dtype bf16 --repeats "$REPEATS" --json "$OUT/glimpse-forward-int8.json"
for DTYPE in float32 bfloat16; do
	"$PYTHON" scripts/bench/peer_transformers.py run "$MODEL" --dtype "$DTYPE" --repeats "$REPEATS" \
		--json "$OUT/transformers-forward-$DTYPE.json"
done
for TYPE in bf16 q8_0; do
	"$LLAMA_VENV/bin/python" scripts/bench/peer_llamacpp.py "$OUT/smollm135m-gpt2-$TYPE.gguf" \
		--repeats "$REPEATS" --json "$OUT/llamacpp-forward-$TYPE.json"
done

for DTYPE in f32 bf16; do
	cargo bench -p glimpse-server --bench offline_throughput -- --model "$MODEL" --dtype "$DTYPE" \
		--kv-cache-dtype "$DTYPE" --tokenizer "$MODEL" --requests 64 --prompt-len 256 --output-len 128 --alone 4 \
		--json "$OUT/glimpse-offline-$DTYPE.json"
done
for DTYPE in float32 bfloat16; do
	"$PYTHON" scripts/bench/peer_transformers.py offline-throughput "$MODEL" --dtype "$DTYPE" \
		--requests 64 --prompt-len 256 --output-len 128 --json "$OUT/transformers-offline-$DTYPE.json"
done
"$PYTHON" scripts/bench/engine_table.py "$OUT"
