#!/usr/bin/env bash
# README command 1: the main job. Builds the examples, prints the device and
# versions, then runs the tiny trained LLaVA-1.5 (tests/fixtures/trained, see
# tests/fixtures/README.md) on three held-out synthetic scenes: for each one
# its ground-truth caption, then the model's caption and its one-word answers
# to yes/no questions, plain greedy decoding and DAMRO side by side (alpha 2,
# beta 0.1 as the authors' LLaVA preset; k 2, since this model sees 3x3 = 9
# image tokens where LLaVA-1.5 sees 576), and the outlier heatmap of the last
# scene in target/demo/outliers.png. Look at the images to check the answers:
# tests/fixtures/trained/scenes/heldout_00{0,2,4}.png.
#
# The questions ask about a shape in the scene and about one that is not:
# a frequent shape (POPE's "popular" kind), or the shape that the training
# scenes showed together with one in this scene most of the time (the
# "adversarial" kind: a heart came with a star, a cross with a circle).
#
# `scripts/demo.sh --random` runs the mechanics demo on the random-weight
# parity fixtures instead (LLaVA-1.5 and InstructBLIP; meaningless words).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/libtorch-env.sh
cargo build --quiet -j"${CARGO_BUILD_JOBS:-2}" --examples
bin=target/debug/examples
fixtures=tests/fixtures
suffix=" Please answer this question with one word."
mkdir -p target/demo

"$bin/info"
echo

if [[ "${1:-}" == "--random" ]]; then
    image=$fixtures/images/wide_rgb.png
    echo "== LLaVA-1.5 (tiny random weights), llava_v1 template, DAMRO alpha 2 beta 0.1 k 10"
    "$bin/generate" --model $fixtures/llava/models/hub --image "$image" \
        --prompt "Is there a dog in the image?$suffix" --mode both --max-new-tokens 16
    echo
    echo "== InstructBLIP (tiny random weights), DAMRO alpha 0.5 beta 0.1 k 4"
    "$bin/generate" --model $fixtures/instructblip/models/hub --image $fixtures/images/small_grey.png \
        --prompt "Describe this image in detail." --mode both --max-new-tokens 16
    echo
    "$bin/outliers" --model $fixtures/llava/models/hub --image "$image" --out target/demo/outliers.png
    exit 0
fi

trained=$fixtures/trained
model=$trained/llava
# scene: a shape in it, a shape not in it
demo_scenes=(
    "heldout_000 square circle"
    "heldout_002 heart star"
    "heldout_004 cross circle"
)
for entry in "${demo_scenes[@]}"; do
    read -r scene present absent <<<"$entry"
    image=$trained/scenes/$scene.png
    truth=$(python3 -c 'import json, sys
print(next(s["caption"] for s in json.load(open(sys.argv[1])) if s["image"] == sys.argv[2]))' \
        "$trained/scenes/ground_truth.json" "$scene.png")
    echo "== $image (84x84; the model sees it at 42x42, one token per cell of a 3x3 grid)"
    echo "ground truth: $truth"
    echo
    "$bin/generate" --model "$model" --image "$image" --prompt "Describe this image briefly." \
        --mode both --top-k 2 --max-new-tokens 24
    for shape in "$present" "$absent"; do
        echo
        echo "Is there a $shape in the image? (truth: $([[ $shape == "$present" ]] && echo Yes || echo No))"
        "$bin/generate" --model "$model" --image "$image" --prompt "Is there a $shape in the image?$suffix" \
            --mode both --top-k 2 --max-new-tokens 4
    done
    echo
done
"$bin/outliers" --model "$model" --image "$image" --top-k 2 --out target/demo/outliers.png
