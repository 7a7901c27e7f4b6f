#!/usr/bin/env bash
# README command 1: the main job. Builds the examples, prints the device and
# versions, then runs plain decoding and DAMRO side by side on the tiny
# LLaVA-1.5 and InstructBLIP test models and an image from the repository,
# and writes the outlier heatmap to target/demo/outliers.png.
#
# The tiny models have random weights: their words are meaningless. The
# point is the mechanics (two branches, the contrast, the outliers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
cargo build --quiet -j"${CARGO_BUILD_JOBS:-2}" --examples
bin=target/debug/examples
fixtures=tests/fixtures
image=$fixtures/images/wide_rgb.png
question="Is there a dog in the image? Please answer this question with one word."
mkdir -p target/demo

"$bin/info"
echo
echo "== LLaVA-1.5 (tiny random weights), llava_v1 template, DAMRO alpha 2 beta 0.1 k 10"
"$bin/generate" --model $fixtures/llava/models/hub --image "$image" --prompt "$question" \
    --mode both --max-new-tokens 16
echo
echo "== InstructBLIP (tiny random weights), DAMRO alpha 0.5 beta 0.1 k 4"
"$bin/generate" --model $fixtures/instructblip/models/hub --image $fixtures/images/small_grey.png \
    --prompt "Describe this image in detail." --mode both --max-new-tokens 16
echo
"$bin/outliers" --model $fixtures/llava/models/hub --image "$image" --out target/demo/outliers.png
