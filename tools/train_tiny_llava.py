"""Trains the tiny LLaVA-1.5-shaped model shipped in tests/fixtures/trained (CPU, from a seed).

The model reads 42x42 synthetic scenes (tools/scenes.py) through a CLIP-style ViT with [CLS]
(hidden 128, 4 layers, patch 14: 9 patch tokens, one per cell of the scenes' 3x3 grid), a
two-layer GELU projector and a two-layer LLaMA (hidden 128), with a word-level LLaMA-shaped
tokenizer (tokenizer.json: BPE with byte fallback whose merges run until every corpus word is
one token; tools/tiny_llava_files.py). It is trained with HF transformers'
LlavaForConditionalGeneration from random init on two tasks, both in the llava_v1 template:
- captions: "Describe this image briefly." -> "a red circle above a blue square"
- POPE-style yes/no: "Is there a star in the image? Please answer this question with one
  word." -> "Yes" / "No" (half the questions about a present shape, half about an absent one)
with training-only auxiliary targets from the generator's ground truth (PatchProbe; not saved),
without which the yes/no answers stayed at chance within this budget.

Then it measures greedy answers on held-out scenes (another seed), saves the model with
`save_pretrained` in f16 plus the llava-hf tokenizer/processor files, re-measures the saved
(f16-rounded) weights, and writes the held-out scenes, their ground truth and synthetic POPE
question files (random / popular / adversarial) next to it.

    /work/venv-train/bin/python tools/train_tiny_llava.py --out tests/fixtures/trained
    # a timing run without writing anything:  --bench

Everything is seeded (torch, numpy, data order); one process, one torch thread by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes as sc  # noqa: E402
from fixtures_common import SPIECE, write_json  # noqa: E402
from tiny_llava_files import (  # noqa: E402
    CLIP_MEAN, CLIP_STD, IMAGE_SIZE, NUM_PATCHES, PATCH, build_tokenizer, llava_v1, model_config, pope_prompt,
    tokenizer_files,
)

TRAIN_SEED, HELDOUT_SEED, POPE_SEED = 1, 2, 3
CAPTION_FRACTION = 0.35  # share of training samples that are captions (the rest: yes/no)
MAX_NEW_TOKENS = 24


# --------------------------------------------------------------------------------------
# data


def preprocess(img: Image.Image) -> np.ndarray:
    """The authors' CLIPImageProcessor on a square image: bicubic resize (PIL) to 42x42 (the
    centre crop is then a no-op); returns uint8 HWC (rescale and normalise come later)."""
    return np.asarray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


def to_pixels(batch_u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(batch_u8).float().permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_labels(scene: sc.Scene) -> np.ndarray:
    """(2, patches): per ViT patch, the shape and the colour (1-based indices into sc.SHAPES /
    sc.COLORS) of the object covering most of it, 0 where objects cover under a tenth."""
    grid = IMAGE_SIZE // PATCH
    side = sc.CANVAS // grid
    out = np.zeros((2, grid * grid), np.int64)
    masks = sc.object_masks(scene)
    if not len(masks):
        return out
    per_patch = masks.reshape(len(masks), grid, side, grid, side).mean(axis=(2, 4)).reshape(len(masks), -1)
    best = per_patch.argmax(axis=0)
    for p in range(grid * grid):
        if per_patch[best[p], p] >= 0.1:
            o = scene.objects[int(best[p])]
            out[:, p] = (sc.SHAPES.index(o.shape) + 1, list(sc.COLORS).index(o.color) + 1)
    return out


def make_split(seed: int, n: int, labels: bool = False):
    """Scenes, their preprocessed uint8 pixels, PNG images and (with `labels`) patch labels."""
    scenes, pixels, images = [], np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), []
    lab = np.zeros((n, 2, NUM_PATCHES), np.int64) if labels else None
    for i in range(n):
        scene, img = sc.scene_image(seed, i)
        scenes.append(scene)
        pixels[i] = preprocess(img)
        images.append(img)
        if labels:
            lab[i] = patch_labels(scene)
    return scenes, pixels, images, lab


class Encoder:
    """Prompt/answer ids with the image placeholder expanded to the patch count."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.image_id = tok.token_to_id("<image>")
        self.pad_id = tok.token_to_id("<pad>")
        self.eos_id = tok.token_to_id("</s>")
        self._cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self.shape_ids = [tok.token_to_id(SPIECE + s) for s in sc.SHAPES]
        assert None not in self.shape_ids

    def prompt_ids(self, question: str) -> list[int]:
        ids = self.tok.encode(llava_v1(question)).ids
        assert ids.count(self.image_id) == 1
        i = ids.index(self.image_id)
        return ids[:i] + [self.image_id] * NUM_PATCHES + ids[i + 1:]

    def pair(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        key = (question, answer)
        if key not in self._cache:
            prompt = self.tok.encode(llava_v1(question)).ids
            full = self.tok.encode(llava_v1(question) + " " + answer).ids
            assert full[: len(prompt)] == prompt, (question, answer)
            ans = full[len(prompt):] + [self.eos_id]
            unk = [t for t in ans if t < 259 and t != self.eos_id]
            assert not unk, f"answer {answer!r} falls back to bytes/unk: {unk}"
            self._cache[key] = (self.prompt_ids(question), ans)
        return self._cache[key]


def sample_task(scene: sc.Scene, rng: np.random.Generator,
                caption_fraction: float = CAPTION_FRACTION) -> tuple[str, str]:
    """A training (question, answer) for a scene: a caption, or a yes/no question about a present
    or an absent shape (even odds)."""
    if rng.random() < caption_fraction:
        return sc.CAPTION_QUESTION, scene.caption()
    present = rng.random() < 0.5
    pool = scene.shapes if present else [s for s in sc.SHAPES if s not in scene.shapes]
    return pope_prompt(pool[int(rng.integers(len(pool)))]), sc.answer_word(present)


def split_prefix(enc: Encoder) -> int:
    """Length of the part of every prompt that precedes the question (system line, `USER:`,
    the expanded image and the newline): the same ids for every sample."""
    a, b = enc.prompt_ids("Describe"), enc.prompt_ids("Is")
    n = 0
    while a[n] == b[n]:
        n += 1
    return n


def collate_suffix(enc: Encoder, prefix_len: int, pairs: list[tuple[str, str]]):
    """The per-question part (question, `ASSISTANT:`, answer, EOS), right-padded, with the
    targets: `targets[r, j]` is the token that position j of row r predicts (-100: none), and
    for yes/no rows (row, position of the asked shape's word, position of the last prompt token,
    index of the asked shape in sc.SHAPES, 1.0 if the answer is Yes)."""
    seqs, probe = [], []
    for r, (q, a) in enumerate(pairs):
        p, ans = enc.pair(q, a)
        seqs.append((p[prefix_len:], ans))
        if a in ("Yes", "No"):
            at = [j for j, t in enumerate(seqs[-1][0]) if t in enc.shape_ids]
            assert len(at) == 1, q
            asked = enc.shape_ids.index(seqs[-1][0][at[0]])
            probe.append((r, at[0], len(seqs[-1][0]) - 1, asked, float(a == "Yes")))
    length = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), length), enc.pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), length), -100, dtype=torch.long)
    for r, (p, a) in enumerate(seqs):
        n = len(p) + len(a)
        ids[r, :n] = torch.tensor(p + a)
        targets[r, len(p) - 1:n - 1] = torch.tensor(a)
    return ids, targets, probe


def staged_loss(model, enc: Encoder, prefix_len: int, pixels: torch.Tensor, pairs: list[tuple[str, str]],
                per_image: int, aux=None, labels: torch.Tensor | None = None):
    """Mean cross-entropy over answer tokens, computed as LlavaForConditionalGeneration computes
    it but cheaper: the shared prefix (system line + image) runs once per image, its KV cache is
    repeated for the `per_image` questions of that image (rows image-major), and the LM head
    runs only where there is a target. Causal attention makes this equal to the full forward
    (checked by `check_staged`); right padding needs no mask."""
    from transformers import DynamicCache

    prefix = torch.tensor([enc.prompt_ids("Is")[:prefix_len]] * pixels.shape[0])
    cache = DynamicCache(config=model.config.text_config)
    image = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                           vision_feature_select_strategy="default", return_dict=True)
    model.model(input_ids=prefix, mm_encoder_outputs={"image": image}, past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(per_image)
    ids, targets, probe = collate_suffix(enc, prefix_len, pairs)
    pos = torch.arange(prefix_len, prefix_len + ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    first: dict[str, torch.Tensor] = {}
    hook = model.model.language_model.layers[0].register_forward_hook(
        lambda _m, _i, out: first.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        out = model.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True,
                          output_attentions=aux is not None)
    finally:
        hook.remove()
    hidden = out.last_hidden_state
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep])
    if aux is None:
        return loss
    aux_loss = aux(image.hidden_states[-2][:, 1:], labels)
    if probe:
        rows, word, last, asked, present = (torch.tensor(v) for v in zip(*probe))
        aux_loss = aux_loss + aux.question_loss(first["h"][rows, word], first["h"][rows, last], asked, present)
        img0 = enc.prompt_ids("Is").index(enc.image_id)
        # the last layer's head 0 at the answer position, over the image tokens
        attn = out.attentions[-1][rows, 0, last, img0:img0 + NUM_PATCHES]
        target = labels[rows // per_image, 0] == (asked + 1).unsqueeze(1)
        aux_loss = aux_loss + aux.attention_loss(attn, target, present)
    return loss, aux_loss


class PatchProbe(torch.nn.Module):
    """Training-only auxiliary heads (not saved; the shipped model is a plain LLaVA).

    On the vision features the projector reads, per patch: the shape and the colour covering
    the patch, and which shapes are anywhere in the image (multi-hot). On the first LLaMA
    layer's output of a yes/no question: at the asked shape's word, whether it is in the image;
    at the last prompt token (where the answer is predicted), which shape was asked.

    Why: with the language loss alone the two-layer LLaMA learned captions but stayed at chance
    on yes/no for thousands of steps (the answer position never learned to combine the asked
    word with the image). These targets give each step of that computation its own gradient.
    """

    def __init__(self, width: int, text_width: int):
        super().__init__()
        self.shape = torch.nn.Linear(width, len(sc.SHAPES) + 1)
        self.color = torch.nn.Linear(width, len(sc.COLORS) + 1)
        self.shapes_in_image = torch.nn.Linear(width, len(sc.SHAPES))
        self.present = torch.nn.Linear(text_width, 1)
        self.asked = torch.nn.Linear(text_width, len(sc.SHAPES))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`labels`: (batch, 2, patches) from `patch_labels`."""
        ce = torch.nn.functional.cross_entropy
        shape_ids = labels[:, 0]
        multi_hot = torch.zeros(feats.shape[0], len(sc.SHAPES) + 1).scatter_(1, shape_ids, 1.0)[:, 1:]
        per_patch = multi_hot.unsqueeze(1).expand(-1, feats.shape[1], -1)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        parts = {"patch_shape": ce(self.shape(feats).flatten(0, 1), shape_ids.flatten()),
                 "patch_color": ce(self.color(feats).flatten(0, 1), labels[:, 1].flatten()),
                 "shapes_in_image": bce(self.shapes_in_image(feats), per_patch)}
        self.last = {k: float(v.detach()) for k, v in parts.items()}
        return sum(parts.values())

    def attention_loss(self, attn: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """One head of the last layer, at the answer position, should look at the patches of the
        asked shape when it is there and away from the image when it is not. `attn`: (rows,
        patches) attention weights; `target`: (rows, patches) bool; `present`: (rows,)."""
        on_target = (attn * target).sum(-1)
        on_image = attn.sum(-1)
        loss = torch.where(present > 0, -torch.log(on_target + 1e-6), -torch.log1p(-on_image.clamp(max=1 - 1e-6)))
        self.last["attention"] = float(loss.mean().detach())
        return loss.mean()

    def question_loss(self, at_word: torch.Tensor, at_last: torch.Tensor, asked: torch.Tensor,
                      present: torch.Tensor) -> torch.Tensor:
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        parts = {"present_at_word": bce(self.present(at_word).squeeze(-1), present),
                 "asked_at_answer": torch.nn.functional.cross_entropy(self.asked(at_last), asked)}
        self.last.update({k: float(v.detach()) for k, v in parts.items()})
        return sum(parts.values())


def full_loss(model, enc: Encoder, pixels: torch.Tensor, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """The plain LlavaForConditionalGeneration loss on whole right-padded sequences (one image
    per row), for checking `staged_loss`."""
    seqs = [enc.pair(q, a) for q, a in pairs]
    length = max(len(p) + len(a) for p, a in seqs)
    ids = torch.full((len(seqs), length), enc.pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), length), -100, dtype=torch.long)
    for r, (p, a) in enumerate(seqs):
        ids[r, :len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p):len(p) + len(a)] = torch.tensor(a)
    return model(input_ids=ids, pixel_values=pixels, labels=labels).loss


def check_staged(model, enc: Encoder, prefix_len: int, scenes, pixels_u8, rng) -> float:
    """|staged_loss - full_loss| on a small batch (must be float noise)."""
    idx = rng.integers(0, len(scenes), size=3)
    pairs = [sample_task(scenes[int(i)], rng) for i in idx for _ in range(2)]
    with torch.no_grad():
        a = staged_loss(model, enc, prefix_len, to_pixels(pixels_u8[idx]), pairs, 2)
        b = full_loss(model, enc, to_pixels(pixels_u8[np.repeat(idx, 2)]), pairs)
    return abs(float(a) - float(b))


# --------------------------------------------------------------------------------------
# model, training, evaluation


def build_model(cfg: dict, seed: int):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    # eager: the training loss reads attention weights (PatchProbe.attention_loss)
    model = LlavaForConditionalGeneration._from_config(LlavaConfig.from_dict(cfg), attn_implementation="eager")
    return model.float()


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def yes_no_accuracy(model, enc: Encoder, questions: list[dict], pixels_u8: np.ndarray, batch: int = 64) -> float:
    """Share of POPE questions whose next token after the prompt is `▁Yes` for "yes" labels
    and `▁No` for "no" (comparing those two logits; a quick check during training)."""
    yes, no = enc.tok.token_to_id(SPIECE + "Yes"), enc.tok.token_to_id(SPIECE + "No")
    was_training = model.training
    model.eval()
    right = 0
    for s in range(0, len(questions), batch):
        qs = questions[s:s + batch]
        ids = [enc.prompt_ids(q["text"] + sc.POPE_SUFFIX) for q in qs]
        assert len({len(i) for i in ids}) == 1, "yes/no prompts of one length"
        rows = [int(q["image"][len("heldout_"):-len(".png")]) for q in qs]
        logits = model(input_ids=torch.tensor(ids), pixel_values=to_pixels(pixels_u8[rows])).logits[:, -1]
        said_yes = (logits[:, yes] > logits[:, no]).tolist()
        right += sum(y == (q["label"] == "yes") for y, q in zip(said_yes, qs))
    model.train(was_training)
    return right / len(questions)


def train(model, enc: Encoder, scenes, pixels, labels, args, check=None) -> list[dict]:
    """AdamW with warm-up and cosine decay; `check()` (a held-out accuracy) is logged every
    `args.eval_every` steps."""
    rng = np.random.default_rng([args.seed, 1])
    prefix_len = split_prefix(enc)
    diff = check_staged(model.eval(), enc, prefix_len, scenes, pixels, rng)
    print(f"staged vs full loss: |diff| = {diff:.2e}", flush=True)
    assert diff < 1e-4, diff
    aux = PatchProbe(model.config.vision_config.hidden_size, model.config.text_config.hidden_size)
    vision = list(model.model.vision_tower.parameters())
    seen = {id(p) for p in vision}
    rest = [p for p in model.parameters() if id(p) not in seen] + list(aux.parameters())
    params = vision + rest
    groups = [{"params": vision, "scale": args.vision_lr_scale}, {"params": rest, "scale": 1.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    log, window, aux_window, t0 = [], [], [], time.time()
    model.train()
    for step in range(args.steps):
        idx = rng.integers(0, len(scenes), size=args.batch)
        pairs = [sample_task(scenes[int(i)], rng, args.caption_fraction)
                 for i in idx for _ in range(args.per_image)]
        for g in opt.param_groups:
            g["lr"] = g["scale"] * lr_at(step, args.steps, args.lr, args.warmup)
        loss, aux_loss = staged_loss(model, enc, prefix_len, to_pixels(pixels[idx]), pairs, args.per_image,
                                     aux, torch.from_numpy(labels[idx]))
        opt.zero_grad(set_to_none=True)
        (loss + args.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(float(loss.detach()))
        aux_window.append(float(aux_loss.detach()))
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            rec = {"step": step + 1, "loss": round(float(np.mean(window)), 4),
                   "aux_loss": round(float(np.mean(aux_window)), 4),
                   "aux_last_step": {k: round(v, 3) for k, v in aux.last.items()},
                   **({"heldout_yes_no": round(check(), 4)}
                      if check is not None and (step + 1) % args.eval_every == 0 else {}),
                   "lr": round(lr_at(step, args.steps, args.lr, args.warmup), 6),
                   "elapsed_s": round(time.time() - t0, 1)}
            log.append(rec)
            print(json.dumps(rec), flush=True)
            window, aux_window = [], []
    model.eval()
    return log


@torch.no_grad()
def greedy(model, enc: Encoder, questions: list[str], pixels_u8: np.ndarray, batch: int = 64) -> list[str]:
    """Greedy answers (plain decoding), left-padded batches, stopping at EOS."""
    out: list[str] = []
    for s in range(0, len(questions), batch):
        qs, px = questions[s:s + batch], to_pixels(pixels_u8[s:s + batch])
        prompts = [enc.prompt_ids(q) for q in qs]
        length = max(map(len, prompts))
        ids = torch.full((len(qs), length), enc.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, length - len(p):] = torch.tensor(p)
            mask[r, length - len(p):] = 1
        gen = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, do_sample=False,
                             max_new_tokens=MAX_NEW_TOKENS, eos_token_id=enc.eos_id, pad_token_id=enc.pad_id)
        for row in gen[:, length:].tolist():
            out.append(enc.tok.decode(row, skip_special_tokens=True).strip())
    return out


def evaluate(model, enc: Encoder, scenes, pixels, pope: dict[str, list[dict]]) -> dict:
    """Caption exact match and object-set match; yes/no accuracy per POPE split (labels from the
    generator) with precision/recall/F1/yes-ratio, all greedy."""
    caps = greedy(model, enc, [sc.CAPTION_QUESTION] * len(scenes), pixels)
    exact = sum(c == s.caption() for c, s in zip(caps, scenes))
    objects_ok = sum(sorted(_phrases(c)) == sorted(sc.phrase(o) for o in s.objects) for c, s in zip(caps, scenes))
    res = {"scenes": len(scenes), "caption_exact": exact / len(scenes), "caption_objects": objects_ok / len(scenes),
           "caption_examples": [{"truth": s.caption(), "model": c} for c, s in list(zip(caps, scenes))[:8]]}
    for split, qs in pope.items():
        index = {f"heldout_{i:03d}.png": i for i in range(len(scenes))}
        rows = [index[q["image"]] for q in qs]
        answers = greedy(model, enc, [q["text"] + sc.POPE_SUFFIX for q in qs], pixels[rows])
        res[f"pope_{split}"] = pope_metrics([q["label"] for q in qs], answers)
    return res


def _phrases(caption: str) -> list[str]:
    parts = caption.replace(" above ", "|").replace(" to the left of ", "|").replace(", ", "|").replace(" and ", "|")
    return [p.strip() for p in parts.split("|") if p.strip()]


def pope_metrics(labels: list[str], answers: list[str]) -> dict:
    """The common POPE rule: an answer counts as "yes" when its first word is yes."""
    pred = ["yes" if a.lower().split(" ")[0].strip(".,") == "yes" else "no" for a in answers]
    tp = sum(p == "yes" and l == "yes" for p, l in zip(pred, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(pred, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(pred, labels))
    acc = sum(p == l for p, l in zip(pred, labels)) / len(labels)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    exact = sum(a in ("Yes", "No") for a in answers) / len(answers)
    return {"questions": len(labels), "accuracy": round(acc, 4), "precision": round(prec, 4),
            "recall": round(rec, 4), "f1": round(f1, 4), "yes_ratio": round(pred.count("yes") / len(pred), 4),
            "answers_exactly_yes_or_no": round(exact, 4)}


# --------------------------------------------------------------------------------------
# files


def write_model(model, tok: Tokenizer, cfg: dict, folder: str) -> None:
    """save_pretrained in f16 (transformers 5.23 key layout) plus the llava-hf tokenizer and
    processor files."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    half = build_model(cfg, 0)
    half.load_state_dict(model.state_dict())
    half.half().save_pretrained(folder)
    write_json(os.path.join(folder, "tokenizer.json"), json.loads(tok.to_str()))
    for name, obj in tokenizer_files(cfg["image_token_index"], cfg["pad_token_id"]).items():
        write_json(os.path.join(folder, name), obj)


def load_saved(folder: str):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                         attn_implementation="sdpa").eval()


def write_heldout(out: str, scenes, images, pope: dict[str, list[dict]]) -> None:
    folder = os.path.join(out, "scenes")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    truth = []
    for i, (s, img) in enumerate(zip(scenes, images)):
        name = f"heldout_{i:03d}.png"
        img.save(os.path.join(folder, name), optimize=True)
        truth.append({"image": name, **s.to_json()})
    write_json(os.path.join(folder, "ground_truth.json"), truth)
    for split, qs in pope.items():
        path = os.path.join(out, "pope", f"{split}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for q in qs:
                f.write(json.dumps(q) + "\n")


def versions() -> dict:
    import PIL
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/trained")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=24, help="images per step")
    ap.add_argument("--per-image", type=int, default=4, help="questions per image and step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vision-lr-scale", type=float, default=0.5, help="the vision tower's share of --lr")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--caption-fraction", type=float, default=CAPTION_FRACTION)
    ap.add_argument("--aux-weight", type=float, default=1.0, help="weight of the patch probe's loss")
    ap.add_argument("--train-scenes", type=int, default=12000)
    ap.add_argument("--heldout-scenes", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250, help="held-out yes/no check (a multiple of --log-every)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a loaded 2-core machine at nice 19, two OpenMP threads "
                         "spin-waiting on each other ran 5-17x slower than one)")
    ap.add_argument("--bench", action="store_true", help="time 20 steps, write nothing")
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--vision-hidden", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    tok = build_tokenizer()
    enc = Encoder(tok)
    vocab = tok.get_vocab_size()
    cfg = model_config(vocab, enc.image_id, enc.pad_id, args.text_layers, args.vision_hidden)
    n_train = 300 if args.bench else args.train_scenes
    train_scenes, train_px, _, train_labels = make_split(TRAIN_SEED, n_train, labels=True)
    held_scenes, held_px, held_images, _ = make_split(HELDOUT_SEED, args.heldout_scenes)
    print(f"vocab {vocab}; scenes: {n_train} train, {len(held_scenes)} held out "
          f"({time.time() - t_start:.0f} s)", flush=True)
    freq, co = sc.shape_stats(train_scenes)
    names = [f"heldout_{i:03d}.png" for i in range(len(held_scenes))]
    pope = {split: sc.pope_questions(held_scenes, names, split, freq, co, POPE_SEED)
            for split in ("random", "popular", "adversarial")}

    model = build_model(cfg, args.seed)
    if args.bench:
        args.steps, args.log_every = 20, 5
        train(model, enc, train_scenes, train_px, train_labels, args)
        return 0

    def check() -> float:
        return yes_no_accuracy(model, enc, pope["random"], held_px)

    log = train(model, enc, train_scenes, train_px, train_labels, args, check)
    t_train = time.time() - t_start
    res_f32 = evaluate(model, enc, held_scenes, held_px, pope)
    print(json.dumps(res_f32, indent=1), flush=True)

    folder = os.path.join(args.out, "llava")
    write_model(model, tok, cfg, folder)
    res_f16 = evaluate(load_saved(folder), enc, held_scenes, held_px, pope)
    print(json.dumps(res_f16, indent=1), flush=True)
    write_heldout(args.out, held_scenes, held_images, pope)
    co_rate = {a: round(co[a][b] / max(1, freq[a]), 4) for a, b in sc.CO_OCCURRENCE.items()}
    write_json(os.path.join(args.out, "training.json"), {
        "generator": "tools/train_tiny_llava.py", "versions": versions(), "args": vars(args),
        "seeds": {"train_scenes": TRAIN_SEED, "heldout_scenes": HELDOUT_SEED, "pope": POPE_SEED},
        "vocab_size": vocab, "tokens": {"image": enc.image_id, "pad": enc.pad_id, "eos": enc.eos_id, "bos": 1},
        "train_shape_frequency": freq, "train_co_occurrence_rate": co_rate,
        "train_seconds": round(t_train, 1), "loss_log": log,
        "heldout_f32": res_f32, "heldout_saved_f16": res_f16,
    })
    print(f"done in {time.time() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
