#!/usr/bin/env bash
# Runs every test of the workspace (README command 2) with 2 and with 1
# libtorch threads, then checks that the
# built binaries keep libtorch_cuda.so (scripts/check-cuda-link.sh).
# libtorch is provisioned by scripts/libtorch-env.sh on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
jobs="${CARGO_BUILD_JOBS:-2}"
# Every test with two libtorch threads, then again with one: the parity
# bounds must hold whatever order the kernels sum in.
# The examples as a user runs them (target/debug/examples/NAME): the
# command-line tests invoke these binaries.
cargo build --workspace --examples -j"$jobs"
OMP_NUM_THREADS=2 cargo test --workspace --all-targets -j"$jobs"
OMP_NUM_THREADS=1 cargo test --workspace --all-targets -j"$jobs"
# The decoder and the end-to-end parity tests again on pinned kernels (no
# calibration): every decode step then attends with damro's own decode
# kernel wherever the CPU offers it, which a calibrated run may not pick.
DAMRO_LINEAR_KERNEL=linear cargo test -j"$jobs" -p damro-llm --test decoder --test fixtures_parity
DAMRO_LINEAR_KERNEL=linear cargo test -j"$jobs" --test e2e_fixtures --test e2e_llava_next
cargo test --workspace --doc -j"$jobs"
bash scripts/check-cuda-link.sh
