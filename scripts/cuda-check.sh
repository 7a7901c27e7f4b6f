#!/usr/bin/env bash
# The checks that need a GPU, in one short script for a machine that has
# one: the info example must see CUDA, the token-exact end-to-end tests must
# pass on the GPU (f32), and the generation benchmark runs there.
# Usage: scripts/cuda-check.sh   (about 5 minutes after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
jobs="${CARGO_BUILD_JOBS:-8}"
cargo build -j"$jobs" --examples
target/debug/examples/info | tee /dev/stderr | grep -q "cuda available: true" || {
    echo "cuda-check: CUDA is not available to the binaries" >&2
    exit 1
}
DAMRO_TEST_DEVICE=cuda cargo test -j"$jobs" --test e2e_fixtures -- --test-threads 1
target/debug/examples/generate --model tests/fixtures/llava/models/hub \
    --image tests/fixtures/images/wide_rgb.png --prompt "Describe this image in detail." \
    --mode both --device cuda --dtype f16 --max-new-tokens 16
DAMRO_BENCH_DEVICE=cuda DAMRO_BENCH_ROUNDS=3 cargo bench -j"$jobs" --bench generation
