"""Reference decoder attention for the analysis (attention capture) tests.

Runs the tiny LLaVA-1.5 and InstructBLIP fixture models in HF transformers
5.23 with `attn_implementation="eager"` and `output_attentions=True` on one
recorded case each (plain greedy, first steps), and records, for the
prefill and for each of the next decode steps:

- `attn/<family>/step<t>/mean`: the last query's attention over all tokens
  so far, averaged over every head and layer, `[tokens]` (what the Rust
  capture with the default selection returns for the full branch);
- `attn/<family>/step<t>/layer1_head0`: the same for layer 1, head 0 only.

Generation is greedy from the full branch (plain decoding), so the token
sequence is HF's own. Run from the repository root with the fixtures venv:

    python tools/make_attention_fixture.py

Writes tests/fixtures/attention/reference.safetensors and reference.json.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import InstructBlipForConditionalGeneration, LlavaForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "attention")
STEPS = 4


def case(family: str, name: str) -> dict:
    with open(os.path.join(FIX, family, "reference.json")) as f:
        ref = json.load(f)
    return next(c for c in ref["cases"] if c["name"] == name)


def record(attentions, tag: str, out: dict, step: int) -> None:
    # attentions: tuple over layers of [1, heads, q, keys]
    stacked = torch.stack([a[0, :, -1, :] for a in attentions])  # [layers, heads, keys]
    out[f"attn/{tag}/step{step}/mean"] = stacked.float().mean(dim=(0, 1)).contiguous()
    out[f"attn/{tag}/step{step}/layer1_head0"] = stacked[1, 0].float().contiguous()


@torch.no_grad()
def run(model, inputs: dict, tag: str, out: dict) -> list[int]:
    """Greedy plain decoding for STEPS tokens, recording attention each step."""
    res = model(**inputs, output_attentions=True, use_cache=True)
    record(res.attentions, tag, out, 0)
    tokens = []
    past = res.past_key_values
    logits = res.logits[:, -1, :]
    for step in range(1, STEPS + 1):
        nxt = int(logits.argmax(-1))
        tokens.append(nxt)
        if step == STEPS:
            break
        ids = torch.tensor([[nxt]])
        res = model(input_ids=ids, past_key_values=past, output_attentions=True, use_cache=True)
        record(res.attentions, tag, out, step)
        past = res.past_key_values
        logits = res.logits[:, -1, :]
    return tokens


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"steps": STEPS, "cases": {}}

    llava_case = case("llava", "hub_plain_pope_dog_wide")
    llava_ref = load_file(os.path.join(FIX, "llava", "reference.safetensors"))
    model = LlavaForConditionalGeneration.from_pretrained(
        os.path.join(FIX, "llava", "models", "hub"), attn_implementation="eager", dtype=torch.float32
    ).eval()
    pixels = llava_ref[f"pixel_values/pil/{llava_case['image']}"]
    # transformers 5 expects the placeholder expanded to one id per patch.
    image_id = model.config.image_token_id
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    expanded = []
    for i in llava_case["prompt_ids"]:
        expanded.extend([i] * patches if i == image_id else [i])
    ids = torch.tensor([expanded])
    toks = run(model, {"input_ids": ids, "pixel_values": pixels}, "llava", tensors)
    assert toks == llava_case["generated_ids"][:STEPS], (toks, llava_case["generated_ids"])
    meta["cases"]["llava"] = {"case": llava_case["name"], "tokens": toks, "prompt_ids": llava_case["prompt_ids"],
                              "image": llava_case["image"], "question": llava_case["question"]}

    ib_case = case("instructblip", "hub_plain_pope_dog_wide")
    ib_ref = load_file(os.path.join(FIX, "instructblip", "reference.safetensors"))
    model = InstructBlipForConditionalGeneration.from_pretrained(
        os.path.join(FIX, "instructblip", "models", "hub"), attn_implementation="eager", dtype=torch.float32
    ).eval()
    pixels = ib_ref[f"pixel_values/pil/{ib_case['image']}"]
    # InstructBLIP's language model runs on [query embeds; prompt embeds]: the
    # same inputs the Rust adapter builds, taken from HF's own forward.
    q_ids = torch.tensor([ib_case["qformer_ids"]])
    ids = torch.tensor([ib_case["prompt_ids"]])
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixels).last_hidden_state
        query = model.query_tokens.expand(1, -1, -1)
        q_out = model.qformer(input_ids=q_ids, attention_mask=torch.ones_like(q_ids), query_embeds=query,
                              encoder_hidden_states=vision,
                              encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long)).last_hidden_state
        prefix = model.language_projection(q_out[:, : query.shape[1], :])
        embeds = torch.cat([prefix, model.get_input_embeddings()(ids)], dim=1)
    lm = model.language_model
    res_toks = []
    with torch.no_grad():
        res = lm(inputs_embeds=embeds, output_attentions=True, use_cache=True)
        record(res.attentions, "instructblip", tensors, 0)
        past, logits = res.past_key_values, res.logits[:, -1, :]
        for step in range(1, STEPS + 1):
            nxt = int(logits.argmax(-1))
            res_toks.append(nxt)
            if step == STEPS:
                break
            res = lm(input_ids=torch.tensor([[nxt]]), past_key_values=past, output_attentions=True, use_cache=True)
            record(res.attentions, "instructblip", tensors, step)
            past, logits = res.past_key_values, res.logits[:, -1, :]
    n = min(STEPS, len(ib_case["generated_ids"]))
    assert res_toks[:n] == ib_case["generated_ids"][:n], (res_toks, ib_case["generated_ids"])
    meta["cases"]["instructblip"] = {"case": ib_case["name"], "tokens": res_toks, "prompt_ids": ib_case["prompt_ids"],
                                     "image": ib_case["image"], "question": ib_case["question"],
                                     "query_tokens": int(model.query_tokens.shape[1])}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(meta["cases"], indent=1)[:2000])


if __name__ == "__main__":
    main()
