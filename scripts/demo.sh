#!/usr/bin/env bash
# README command 1: the main job. Builds the workspace and prints the device,
# the libtorch version and the crate versions (the generate demo replaces
# this once the model adapters exist).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
cargo run --quiet -j"${CARGO_BUILD_JOBS:-2}" --example info
