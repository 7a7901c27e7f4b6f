"""Shared helpers for tools/make_fixtures.py: images, tokenizers, weights, files.

Everything here is deterministic: fixed seeds, sorted iteration, stable JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

# --------------------------------------------------------------------------------------
# files


def write_json(path: str, obj, sort_keys: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def save_single(state: dict[str, torch.Tensor], path: str, dtype: torch.dtype | None = None) -> None:
    """One safetensors file, every floating tensor cast to `dtype` (None: keep)."""
    out = {}
    for name in sorted(state):
        t = state[name].detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path, metadata={"format": "pt"})


def save_two_shards(state: dict[str, torch.Tensor], folder: str, dtype: torch.dtype | None = None) -> None:
    """`model-00001-of-00002.safetensors`, `model-00002-of-00002.safetensors` and the index.

    Tensors are taken in sorted name order and split where the running byte count
    passes half the total, like HF's shard writer does by size.
    """
    names = sorted(state)
    tensors = {}
    for n in names:
        t = state[n].detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[n] = t.contiguous()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    running = 0
    for n in names:
        nbytes = tensors[n].numel() * tensors[n].element_size()
        idx = 0 if running < total / 2 else 1
        shards[idx][n] = tensors[n]
        running += nbytes
    assert shards[0] and shards[1]
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(shard, os.path.join(folder, fname), metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(os.path.join(folder, "model.safetensors.index.json"), index)


# --------------------------------------------------------------------------------------
# images


def _grid(h: int, w: int):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return y / (h - 1), x / (w - 1)


def make_images(folder: str) -> dict[str, str]:
    """Three PNGs of different sizes, aspect ratios and modes. Returns stem -> path."""
    rng = np.random.default_rng(20241007)
    os.makedirs(folder, exist_ok=True)
    out = {}

    # wide RGB 500x333: diagonal gradients, two soft discs, a stripe band, noise
    h, w = 333, 500
    y, x = _grid(h, w)
    r = 0.25 + 0.6 * x * (1 - 0.3 * y)
    g = 0.2 + 0.5 * y + 0.2 * np.sin(6.0 * x)
    b = 0.7 - 0.5 * x * y
    for cy, cx, rad, col in [(0.35, 0.3, 0.18, (0.95, 0.8, 0.1)), (0.7, 0.75, 0.22, (0.1, 0.3, 0.9))]:
        d = np.sqrt(((y - cy) * h / w) ** 2 + (x - cx) ** 2)
        m = np.clip((rad - d) / 0.02, 0.0, 1.0)
        r, g, b = (r * (1 - m) + col[0] * m, g * (1 - m) + col[1] * m, b * (1 - m) + col[2] * m)
    band = (np.sin(40.0 * x + 10.0 * y) > 0.6) & (y > 0.8)
    r = np.where(band, 0.05, r)
    img = np.stack([r, g, b], axis=-1) * 255.0 + rng.normal(0.0, 9.0, size=(h, w, 3))
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out["wide_rgb"] = os.path.join(folder, "wide_rgb.png")
    Image.fromarray(arr, mode="RGB").save(out["wide_rgb"], optimize=False)

    # tall RGBA 240x400: radial gradient, a rectangle, alpha ramps from 0 to 255 plus a hole
    h, w = 400, 240
    y, x = _grid(h, w)
    d = np.sqrt((x - 0.5) ** 2 + ((y - 0.4) * h / w) ** 2)
    r = 0.9 - 0.8 * d
    g = 0.3 + 0.4 * np.cos(5.0 * y)
    b = 0.2 + 0.7 * x
    rect = (x > 0.15) & (x < 0.55) & (y > 0.6) & (y < 0.85)
    g = np.where(rect, 0.85, g)
    a = 0.15 + 0.85 * y
    a = np.where(d < 0.12, 0.0, a)
    img = np.stack([r, g, b, a], axis=-1) * 255.0
    img[..., :3] += rng.normal(0.0, 12.0, size=(h, w, 3))
    img[..., 3] += rng.normal(0.0, 4.0, size=(h, w))
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out["tall_rgba"] = os.path.join(folder, "tall_rgba.png")
    Image.fromarray(arr, mode="RGBA").save(out["tall_rgba"], optimize=False)

    # small greyscale 200x150: checker of soft blobs + gradient + noise (the demo image)
    h, w = 150, 200
    y, x = _grid(h, w)
    v = 0.3 + 0.4 * x + 0.25 * np.sin(9.0 * x) * np.cos(7.0 * y)
    d = np.sqrt((x - 0.62) ** 2 + ((y - 0.45) * h / w) ** 2)
    v = np.where(d < 0.17, 0.95 - 2.0 * d, v)
    img = v * 255.0 + rng.normal(0.0, 7.0, size=(h, w))
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    out["small_grey"] = os.path.join(folder, "small_grey.png")
    Image.fromarray(arr, mode="L").save(out["small_grey"], optimize=False)
    return out


# --------------------------------------------------------------------------------------
# tokenizers

SPIECE = "\u2581"  # ▁

# A small English corpus: POPE questions, object names, the llava_v1 system line.
OBJECTS = [
    "dog", "cat", "car", "person", "table", "umbrella", "chair", "bus", "bird", "bottle",
    "cup", "horse", "train", "boat", "bicycle", "clock", "tree", "sky", "book", "phone",
]
CORPUS_LINES = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT:",
    "Please answer this question with one word.",
    "Describe this image in detail.",
    "What is in the image? What is the color of the car? Where is the dog?",
    "How many people are there? Which object is on the table? Who is holding the umbrella?",
    "Yes, there is. No, there is not. yes no Yes No",
    "The image shows a dog, a cat and a person near a red car under a blue sky.",
    "There is a table with a cup and a bottle. A man is sitting on a chair.",
    "It is a photo of a street with a bus, a train and a bicycle.",
    "The picture has a green tree, a white bird and a brown horse.",
] + [f"Is there a {o} in the image?" for o in OBJECTS] + [" ".join(OBJECTS)]


def _words(lines: list[str]) -> Counter:
    c: Counter = Counter()
    for line in lines:
        for wd in line.split(" "):
            if wd:
                c[SPIECE + wd] += 1
    return c


def learn_bpe(lines: list[str], n_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Plain BPE on ▁-prefixed words; ties broken by the pair's string order.

    Returns (alphabet in sorted order, merges in learned order).
    """
    words = {w: list(w) for w in _words(lines)}
    counts = _words(lines)
    alphabet = sorted({ch for w in words for ch in w})
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += counts[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == best[0] and syms[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return alphabet, merges


def build_llama_tokenizer(
    n_merges: int,
    bos: str = "<s>",
    appended_specials: tuple[str, ...] = ("<image>", "<pad>"),
) -> Tokenizer:
    """LLaMA/sentencepiece-shaped tokenizer.json, as in llava-hf/llava-1.5-7b-hf.

    ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, the alphabet, learned merges,
    then `appended_specials` as special added tokens with the last ids.
    `bos` names the token the post-processor prepends (Vicuna InstructBLIP: "</s>").
    """
    alphabet, merges = learn_bpe(CORPUS_LINES, n_merges)
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in alphabet:
        if ch not in vocab:
            vocab[ch] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE), normalizers.Replace(" ", SPIECE)])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")]
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, vocab[bos])],
    )
    for t in appended_specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    return tok


def save_tokenizer_json(tok: Tokenizer, path: str) -> None:
    """tokenizer.json with a stable layout (2-space indent like the hub files)."""
    obj = json.loads(tok.to_str())
    write_json(path, obj)


def build_bert_wordpiece(lines: list[str]) -> tuple[Tokenizer, list[str]]:
    """Small uncased BERT WordPiece tokenizer ([PAD]=0) plus `[DEC]` appended as InstructBLIP's bos.

    Returns (tokenizer, vocab.txt lines without [DEC]).
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = " ".join(lines).lower()
    chars = sorted({c for c in text if not c.isspace()})
    words = Counter(w for w in _bert_split(text))
    whole = sorted(w for w, n in words.items() if len(w) > 1 and n >= 1)
    suffixes = set()
    for w in whole:
        if len(w) > 4:
            suffixes.add("##" + w[-3:])
            suffixes.add("##" + w[-2:])
    cont_chars = ["##" + c for c in chars if c.isalnum()]
    vocab_list = specials + chars + cont_chars + whole + sorted(suffixes)
    seen, uniq = set(), []
    for v in vocab_list:
        if v not in seen:
            seen.add(v)
            uniq.append(v)
    vocab = {v: i for i, v in enumerate(uniq)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_special_tokens([AddedToken("[DEC]", special=True, normalized=False)])
    return tok, uniq


def _bert_split(text: str) -> list[str]:
    out, cur = [], ""
    for c in text:
        if c.isalnum():
            cur += c
        else:
            if cur:
                out.append(cur)
            cur = ""
            if not c.isspace():
                out.append(c)
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------
# weights


def scaled_init_(model: torch.nn.Module, seed: int, overrides=None) -> None:
    """Overwrite every parameter with large-ish random values (decisive margins).

    Linear/conv weights ~ N(0, (2/sqrt(fan_in))^2); biases ~ N(0, 0.1^2); LayerNorm/RMSNorm
    weights ~ 1 + N(0, 0.1^2), their biases ~ N(0, 0.1^2); embeddings and learned position
    embeddings / query tokens ~ N(0, 1). `overrides(name, tensor, gen)` may adjust a tensor.
    Parameters are visited in sorted name order with one torch.Generator.
    """
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name]
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        kind = type(owner).__name__ if owner is not None else ""
        shape = tuple(p.shape)
        if "Norm" in kind or "norm" in owner_name.split(".")[-1].lower():
            if leaf == "weight":
                val = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                val = 0.1 * torch.randn(shape, generator=gen)
        elif kind == "Embedding":
            val = torch.randn(shape, generator=gen)
        elif leaf == "weight" and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            val = torch.randn(shape, generator=gen) * (2.0 / math.sqrt(fan_in))
        elif leaf == "bias":
            val = 0.1 * torch.randn(shape, generator=gen)
        else:  # class/position embeddings, query tokens and other free parameters
            val = torch.randn(shape, generator=gen)
        if overrides is not None:
            val = overrides(name, val, gen)
        with torch.no_grad():
            p.copy_(val.to(p.dtype))


def round_through(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Round floating tensors to `dtype` and back to fp32 (the values a reduced-precision file holds)."""
    return {k: (v.to(dtype).to(torch.float32) if v.is_floating_point() else v) for k, v in state.items()}


# --------------------------------------------------------------------------------------
# margins

REL_LOGIT_MARGIN = 1e-3  # greedy gaps and distances to the plausibility cutoff, relative to max|logit|
REL_SCORE_MARGIN = 1e-4  # consecutive outlier-score gaps among the top k+1, relative to the larger score


class MarginError(Exception):
    pass


def outlier_margin(scores: torch.Tensor, k: int) -> float:
    """Smallest relative gap between consecutive scores among the top k+1 (so both the set
    and the topk order are decided far above float noise)."""
    top = torch.sort(scores.flatten().double(), descending=True).values[: k + 1]
    return float(((top[:-1] - top[1:]) / top[:-1]).min())


def step_margins(trace, mode: str, beta: float | None, sample_q: list | None = None) -> list[dict]:
    """Relative margins of every decision taken, one dict per generation step.

    greedy_gap: (best - second best) of the decision scores (plain: raw logits l; damro: s over
      the kept tokens), divided by max|.| of those scores; None when only one token is kept.
    cutoff_gap (damro): min over all tokens of |l - cutoff|, divided by max|l|.
    sample_gap (sampling): torch.multinomial(p, 1) is argmax(p / q) with q ~ Exp(1) drawn from
      the global generator; (best - second best) of p / q divided by the best.
    """
    out = []
    for i, (l, l_o, s) in enumerate(trace):
        l64 = l.double()
        scale = float(l64.abs().max())
        rec: dict = {"logit_scale": scale}
        finite = s[torch.isfinite(s)].double()
        rec["kept"] = int(finite.numel())
        if finite.numel() >= 2:
            top2 = torch.topk(finite, 2).values
            rec["greedy_gap"] = float(top2[0] - top2[1]) / float(finite.abs().max())
        else:
            rec["greedy_gap"] = None
        if mode == "damro":
            cutoff = torch.log(torch.tensor(beta, dtype=torch.float32)) + l.max()
            rec["cutoff_gap"] = float((l64 - cutoff.double()).abs().min()) / scale
        if sample_q is not None:
            p = torch.softmax(s, dim=-1).double()
            ratio = p / sample_q[i].double()
            top2 = torch.topk(ratio, 2).values
            rec["sample_gap"] = float((top2[0] - top2[1]) / top2[0])
        out.append(rec)
    return out


def min_margins(steps: list[dict], sample: bool) -> dict:
    """The smallest margin of each kind that decided a token (greedy_gap only when not sampling)."""
    res: dict = {}
    keys = ["cutoff_gap"] + (["sample_gap"] if sample else ["greedy_gap"])
    for key in keys:
        vals = [st[key] for st in steps if st.get(key) is not None]
        if vals:
            res[key] = min(vals)
    return res


def check_margins(name: str, mins: dict) -> None:
    for key, val in mins.items():
        if val <= REL_LOGIT_MARGIN:
            raise MarginError(f"{name}: {key} = {val:.3e} <= {REL_LOGIT_MARGIN:g}")


# top-k whose set and order must be decided far above float noise, per family
OUTLIER_K_CHECK = {"llava": 10, "instructblip": 4}
