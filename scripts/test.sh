#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: formatting, lints, and every crate's tests.
# CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite builds each crate once, from scratch on a fresh clone: incremental compilation's
# bookkeeping would only cost time there.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "committed model weights match their recorded SHA-256 (models are never retrained in CI)"
for sums in models/*/SHA256SUMS; do
  (cd "$(dirname "$sums")" && sha256sum --check --strict SHA256SUMS)
done

step "tests"
cargo test --workspace --locked

step "CUDA kernels: NVRTC (from PyPI) compiles each for sm_80 and sm_90, no spills; registers per kernel"
scripts/cuda-nvrtc-check.sh

step "CUDA backend: NVRTC (from PyPI) through the Rust code path compiles every kernel; disk cache hit and repair"
scripts/cuda-kernel-cache-check.sh

step "CUDA kernels' shim tests under ASan and TSan (~2 min); TSan reports a planted missing __syncthreads"
scripts/cuda-shim-sanitizers.sh

step "soak: 1,000 mixed requests at 64 concurrency with hostile clients against a baseline (prints its numbers)"
# --workspace: the same feature resolution as the test step above, so nothing is rebuilt.
cargo test --workspace --locked --test soak -- --ignored --nocapture

step "deployment files (Prometheus rules, dashboard, Kubernetes manifests, Dockerfiles)"
scripts/deploy-checks.sh

step "live metrics: real server + real Prometheus + glimpse bench; every dashboard panel returns data"
scripts/live-metrics-check.sh

step "the Python client package (clients/python, stubs up to date with the .proto) streams requests"
scripts/grpc-python-check.sh

step "the official openai Python package and curl -N against the OpenAI-compatible HTTP API"
scripts/openai-check.sh

step "grpcurl (a registry package) lists and calls the service through reflection"
scripts/grpcurl-check.sh
