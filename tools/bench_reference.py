"""Times Python references on the generation bench's model, for side-by-side figures.

`cargo bench --bench generation` with `DAMRO_BENCH_MODEL_DIR=DIR` writes its random
LLaVA-1.5-shaped model (68.7M parameters) to DIR and the 64 greedy tokens it generated for
request 0 (the bench's wide image, "Describe this image in detail.", llava_v1) to
DIR/bench_tokens.json with its prompt ids. This script runs the same request on the same model with:

  * `plain`: transformers' own `generate()` (greedy, 64 new tokens);
  * `damro` (transformers 4.x only): DAMRO the way the authors' code runs it on transformers
    4.43 (github.com/coder-gx/DAMRO, `sample_method/sample.py` and their LLaVA forward, read
    for this; none of it is copied): a second branch whose image is the top-k outlier tokens,
    each branch a whole model call per step with its own cache, one after the other (the
    vision tower runs once per branch on the first step), then the contrast
    `(1 + alpha) l - alpha l_o` under the cutoff `ln(beta) + max(l)` and argmax (alpha 2,
    beta 0.1, k 10, as the bench).

It reports first-token and per-token times (medians over rounds, interleaved) and whether the
tokens equal the Rust bench's. Run it once per transformers version (4.43 is what the DAMRO
authors' code runs on; 5.23 is the fixtures' version):

    DAMRO_BENCH_MODEL_DIR=/tmp/m scripts/libtorch-env.sh cargo bench --bench generation
    python tools/bench_reference.py /tmp/m --rounds 5 --threads 2

Nothing here is the authors' code; the loop reproduces the work their code does per step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, LlavaForConditionalGeneration

IMAGE = Path(__file__).resolve().parent.parent / "tests/fixtures/images/wide_rgb.png"
TOKENS = 64
ALPHA, BETA, K = 2.0, 0.1, 10


def parts(model):
    """(vision tower, projector) in transformers 4.43 and 5.x layouts."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "vision_tower"):
        return inner.vision_tower, inner.multi_modal_projector
    return model.vision_tower, model.multi_modal_projector


@torch.no_grad()
def branch_embeds(model, input_ids, pixel_values):
    """Full and outlier-branch input embeddings (DAMRO.md: [CLS] scores of vision layer -2
    from full-width q/k, top-k in descending order, projected, spliced at the placeholder)."""
    tower, projector = parts(model)
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    layer = encoder.layers[-2]
    x = layer.layer_norm1(hidden[-3])
    q = layer.self_attn.q_proj(x[:, :1])
    k = layer.self_attn.k_proj(x)
    scores = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)[0, 0, 1:]
    top = torch.topk(scores, K).indices
    features = hidden[-2][:, 1:]
    embeds = model.get_input_embeddings()(input_ids)
    (pos,) = (input_ids[0] == model.config.image_token_index).nonzero()[:, 0].tolist()
    before, after = embeds[:, :pos], embeds[:, pos + 1 :]
    full = torch.cat([before, projector(features), after], dim=1)
    outlier = torch.cat([before, projector(features[:, top]), after], dim=1)
    return full, outlier


@torch.no_grad()
def damro(model, input_ids, pixel_values):
    """DAMRO the way the authors' code runs on transformers 4.43 (their `_sample` and LLaVA
    forward): every step each branch is a whole `LlavaForConditionalGeneration` call with the
    pixel values and the growing attention mask, one branch after the other; on the first
    step the full branch runs the vision tower inside the model and the outlier branch runs it
    again to pick its top-k tokens, and both first calls compute logits at every prompt
    position. Returns (tokens, first-token seconds, per-token seconds)."""
    start = time.perf_counter()
    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask, use_cache=True)
    _, outlier = branch_embeds(model, input_ids, pixel_values)
    out_o = model(inputs_embeds=outlier, use_cache=True)
    log_beta = math.log(BETA)
    tokens, stamps = [], []
    while True:
        logits = out.logits[:, -1].float()
        logits_o = out_o.logits[:, -1].float()
        cutoff = log_beta + logits.max(dim=-1, keepdim=True).values
        scores = (1 + ALPHA) * logits - ALPHA * logits_o
        scores = scores.masked_fill(logits < cutoff, -float("inf"))
        token = scores.argmax(dim=-1, keepdim=True)
        tokens.append(int(token))
        stamps.append(time.perf_counter() - start)
        if len(tokens) == TOKENS:
            break
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        step = dict(input_ids=token, pixel_values=pixel_values, attention_mask=mask, use_cache=True)
        out = model(past_key_values=out.past_key_values, **step)
        out_o = model(past_key_values=out_o.past_key_values, **step)
    return tokens, stamps[0], (stamps[-1] - stamps[0]) / (TOKENS - 1)


@torch.no_grad()
def plain(model, input_ids, pixel_values):
    """transformers' `generate()`; first token = a 1-token run, per token from a 64-token run."""
    kwargs = dict(do_sample=False, num_beams=1, pad_token_id=0)
    start = time.perf_counter()
    model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=1, **kwargs)
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=TOKENS,
        min_new_tokens=TOKENS, **kwargs,
    )
    total = time.perf_counter() - start
    tokens = out[0, input_ids.shape[1]:].tolist()
    return tokens, first, (total - first) / (TOKENS - 1)


def load(model_dir: Path):
    """The model in f32. transformers 4.43 refuses safetensors without the `format` metadata
    (libtorch writes none), so there the state dict (hub key names, 4.43's own) is loaded
    into a model built from the config."""
    if not transformers.__version__.startswith("4."):
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    else:
        from safetensors.torch import load_file
        from transformers import LlavaConfig

        model = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(model_dir))
        model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=True)
        model = model.float()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load(args.model_dir)
    kwargs = {} if transformers.__version__.startswith("4.") else {"use_fast": False}
    processor = AutoImageProcessor.from_pretrained(args.model_dir, **kwargs)
    pixel_values = processor(Image.open(IMAGE).convert("RGB"), return_tensors="pt")["pixel_values"]
    expected = json.loads((args.model_dir / "bench_tokens.json").read_text())
    # The bench's prompt ids (its tokenizer.json needs a newer `tokenizers` than 4.43's).
    ids = expected["prompt_ids"]
    image_id = model.config.image_token_index
    input_ids = torch.tensor([ids])
    # transformers 5 expects the prompt expanded to one placeholder per image token; 4.43
    # expands a single placeholder itself.
    if not transformers.__version__.startswith("4."):
        expanded = []
        for t in ids:
            expanded.extend([t] * 576 if t == image_id else [t])
        gen_ids = torch.tensor([expanded])
    else:
        gen_ids = input_ids
    runs = {"plain": lambda: plain(model, gen_ids, pixel_values)}
    if transformers.__version__.startswith("4."):  # the authors' version
        runs["damro"] = lambda: damro(model, input_ids, pixel_values)
    for run in runs.values():  # warm-up
        run()
    firsts = {name: [] for name in runs}
    per = {name: [] for name in runs}
    same = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            tokens, first, per_token = run()
            firsts[name].append(first)
            per[name].append(per_token)
            rust = expected["plain" if name == "plain" else "damro-batched"]
            same[name] = tokens == rust
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds, {TOKENS} new tokens, fp32")
    print("| run | first token (s) | per token (ms) | tokens equal the Rust bench's |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {statistics.median(firsts[name]):.3f} | "
              f"{statistics.median(per[name]) * 1e3:.2f} | {same[name]} |")


if __name__ == "__main__":
    main()
