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
# Plain vs DAMRO per token on a LLaVA-1.5-7B-shaped random model in f16
# (the bench writes ~13.5 GB of weights to a temp dir first).
DAMRO_BENCH_DEVICE=cuda DAMRO_BENCH_MODEL=llava7b DAMRO_BENCH_DTYPE=f16 DAMRO_BENCH_ROUNDS=3 \
    cargo bench -j"$jobs" --bench generation
# Batched evaluation: questions per second at batch 1, 4 and 8 (48 POPE
# questions on the tiny model, greedy, DAMRO), and the same answers.
q=$(mktemp -d)
python3 - "$q/q.jsonl" <<'PY'
import json, sys
objs = ["dog", "car", "cat", "person", "umbrella", "clock", "bird", "chair"]
imgs = ["wide_rgb.png", "small_grey.png", "tall_rgba.png"]
with open(sys.argv[1], "w") as f:
    for i in range(48):
        f.write(json.dumps({"question_id": i + 1, "image": imgs[i % 3],
                            "text": f"Is there a {objs[i % 8]} in the image?",
                            "label": "yes" if i % 2 else "no"}) + "\n")
PY
for b in 1 4 8; do
    start=$(date +%s.%N)
    target/debug/examples/eval pope-run --model tests/fixtures/llava/models/hub --device cuda \
        --greedy --max-new-tokens 8 --batch-size "$b" --questions "$q/q.jsonl" \
        --images tests/fixtures/images --answers "$q/a$b.jsonl" > /dev/null
    end=$(date +%s.%N)
    echo "cuda-check: batch $b: $(python3 -c "print(f'{48 / ($end - $start):.2f}')") questions/s"
done
for b in 4 8; do
    python3 - "$q/a1.jsonl" "$q/a$b.jsonl" <<'PY'
import json, sys
load = lambda p: {r["question_id"]: r["output"] for r in map(json.loads, open(p))}
assert load(sys.argv[1]) == load(sys.argv[2]), "batched answers differ from batch 1"
PY
done
