#!/usr/bin/env bash
# Runs every test of the workspace (README command 2), then checks that the
# built binaries keep libtorch_cuda.so (scripts/check-cuda-link.sh).
# libtorch is provisioned by scripts/libtorch-env.sh on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
jobs="${CARGO_BUILD_JOBS:-2}"
cargo test --workspace --all-targets -j"$jobs"
cargo test --workspace --doc -j"$jobs"
bash scripts/check-cuda-link.sh
