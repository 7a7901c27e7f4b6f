"""Tiny LLaVA-NeXT fixtures made with the DAMRO authors' stack (transformers 4.43, PIL processor).

Writes tests/fixtures/llava_next/ (see tests/fixtures/README.md, "LLaVA-NeXT"):
    python3.11 -m venv /work/venv-next
    /work/venv-next/bin/pip install -r tools/requirements-llava-next.txt
    /work/venv-next/bin/python tools/make_llava_next.py

A tiny random LlavaNextForConditionalGeneration in the llava-hf hub layout, its tokenizer and
processor files, three more PNGs (square, very tall, very wide) beside the shared ones, and
references: processor outputs (hashes), per-tile vision features and DAMRO [CLS] scores, the
packed full-branch tokens and their index maps in both grid layouts, the contrast branch's
k + 1 tokens, first-step logits and generation cases from tools/damro_reference_next.py,
checked against the 4.43 model's own forward and generate. Deterministic: fixed seeds, one
thread, eager attention.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors  # noqa: E402
from transformers import AutoImageProcessor, AutoTokenizer, LlavaNextConfig, LlavaNextForConditionalGeneration  # noqa: E402
from transformers.image_processing_utils import select_best_resolution  # noqa: E402
from transformers.image_utils import ChannelDimension  # noqa: E402
from transformers.models.llava_next import image_processing_llava_next as hf_proc  # noqa: E402
from transformers.models.llava_next import modeling_llava_next as hf_model  # noqa: E402

import damro_reference_next as ref  # noqa: E402
import fixture_runner as runner  # noqa: E402
from fixtures_common import (  # noqa: E402
    REL_SCORE_MARGIN,
    CORPUS_LINES,
    SPIECE,
    MarginError,
    learn_bpe,
    check_margins,
    min_margins,
    save_single,
    save_tokenizer_json,
    scaled_init_,
    step_margins,
    write_json,
)
from make_llava import PROMPTS, SPECIAL_TOKENS_MAP, llava_v1, tokenizer_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(HERE), "tests", "fixtures")
FAMILY = "llava_next"
FIRST_SEED = 4000
N_MERGES = 233
K_MAIN = 10
TILE = 336
PATCHES = 576
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SHARED_IMAGES = ["wide_rgb", "tall_rgba", "small_grey"]  # tests/fixtures/images
NEW_IMAGES = {"square_rgb": (339, 357), "very_tall": (680, 150), "very_wide": (150, 686)}  # (h, w)
LAYOUTS = ref.LAYOUTS

# (name, image, prompt, mode, alpha, beta, k, sample, layout)
CASES = [
    ("plain_pope_dog_wide", "wide_rgb", "pope_dog", "plain", None, None, None, False, "transformers_4_43"),
    ("damro_pope_dog_wide", "wide_rgb", "pope_dog", "damro", 2.0, 0.1, 10, False, "transformers_4_43"),
    ("damro_a1_b05_k5_pope_dog_wide", "wide_rgb", "pope_dog", "damro", 1.0, 0.5, 5, False, "transformers_4_43"),
    ("plain_describe_square", "square_rgb", "describe", "plain", None, None, None, False, "transformers_4_43"),
    ("damro_describe_square", "square_rgb", "describe", "damro", 2.0, 0.1, 10, False, "transformers_4_43"),
    ("sample_damro_describe_tall", "tall_rgba", "describe", "damro", 2.0, 0.1, 10, True, "transformers_4_43"),
    ("sample_plain_describe_tall", "tall_rgba", "describe", "plain", None, None, None, True, "transformers_4_43"),
    ("damro_pope_umbrella_very_tall", "very_tall", "pope_umbrella", "damro", 2.0, 0.1, 10, False,
     "transformers_4_43"),
    ("plain_pope_umbrella_very_wide", "very_wide", "pope_umbrella", "plain", None, None, None, False,
     "transformers_4_43"),
    ("damro_a1_b05_k5_describe_grey", "small_grey", "describe", "damro", 1.0, 0.5, 5, False, "transformers_4_43"),
    ("corrected_plain_pope_dog_wide", "wide_rgb", "pope_dog", "plain", None, None, None, False, "corrected"),
    ("corrected_damro_describe_very_wide", "very_wide", "describe", "damro", 2.0, 0.1, 10, False, "corrected"),
]

PREPROCESSOR_CONFIG = {
    "aspect_ratio_setting": "anyres",
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": PINPOINTS,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "LlavaNextImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaNextProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}


def model_config(vocab: int, image_id: int, pad_id: int) -> dict:
    """config.json like llava-hf/llava-v1.6-vicuna-7b-hf's, tiny widths, HF defaults left out."""
    return {
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": PINPOINTS,
        "image_token_index": image_id,
        "model_type": "llava_next",
        "pad_token_id": pad_id,
        "projector_hidden_act": "gelu",
        "text_config": {
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 4,
            "num_hidden_layers": 2, "rms_norm_eps": 1e-05, "torch_dtype": "float32", "vocab_size": vocab,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_image_newline_parameter": True,
        "vision_config": {
            "hidden_size": 32, "image_size": 336, "intermediate_size": 64, "model_type": "clip_vision_model",
            "num_attention_heads": 4, "num_hidden_layers": 4, "patch_size": 14, "projection_dim": 768,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
    }


# --------------------------------------------------------------------------------------
# images and preprocessing


def make_new_images(folder: str) -> dict[str, str]:
    """Square-ish, very tall and very wide RGB PNGs: gradients, discs, a stripe band, mild noise."""
    rng = np.random.default_rng(20260616)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for i, (stem, (h, w)) in enumerate(NEW_IMAGES.items()):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        y, x = y / (h - 1), x / (w - 1)
        r = 0.2 + 0.6 * x + 0.1 * np.sin(7.0 * y + i)
        g = 0.25 + 0.5 * y * (1 - 0.4 * x)
        b = 0.8 - 0.5 * (x + y) / 2 + 0.1 * np.cos(11.0 * x)
        for cy, cx, rad, col in [(0.3, 0.35, 0.15, (0.9, 0.85, 0.2)), (0.7, 0.6, 0.2, (0.15, 0.25, 0.85))]:
            d = np.sqrt(((y - cy) * h / max(h, w)) ** 2 + ((x - cx) * w / max(h, w)) ** 2)
            m = np.clip((rad - d) / 0.02, 0.0, 1.0)
            r, g, b = (r * (1 - m) + col[0] * m, g * (1 - m) + col[1] * m, b * (1 - m) + col[2] * m)
        band = (np.sin(30.0 * x + 20.0 * y) > 0.7) & (y > 0.85)
        g = np.where(band, 0.05, g)
        img = np.stack([r, g, b], axis=-1) * 255.0 + rng.normal(0.0, 4.0, size=(h, w, 3))
        path = os.path.join(folder, f"{stem}.png")
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB").save(path, optimize=False)
        out[stem] = path
    return out


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def pixel_record(pv: torch.Tensor) -> dict:
    """Per tile: FNV-1a 64 of the f32 little-endian bytes, the f64 sum and the first values."""
    arr = np.ascontiguousarray(pv.numpy().astype("<f4"))
    tiles = [{"fnv1a64": fnv1a64(t.tobytes()), "sum": float(t.astype(np.float64).sum()),
              "first": [float(v) for v in t.reshape(-1)[:4]]} for t in arr]
    return {"shape": list(arr.shape), "tiles": tiles}


def geometry(h: int, w: int) -> dict:
    """The processor's and the packer's integer geometry for an image of (h, w), from 4.43's code."""
    best = select_best_resolution((h, w), PINPOINTS)
    dummy = np.empty((h, w, 1), dtype=np.uint8)  # only its shape is read
    nh, nw = hf_proc._get_patch_output_size(dummy, best, ChannelDimension.LAST)
    rows, cols = best[0] // TILE, best[1] // TILE
    out = {"size_hw": [h, w], "best_hw": list(best), "resized_hw": [nh, nw],
           "paste_yx": [(best[0] - nh) // 2, (best[1] - nw) // 2], "grid_rows_cols": [rows, cols],
           "num_tiles": hf_model.image_size_to_num_patches((h, w), PINPOINTS, TILE)}
    for layout in LAYOUTS:
        map_hw = (cols * 24, rows * 24) if layout == "transformers_4_43" else (rows * 24, cols * 24)
        kept = hf_model.unpad_image(torch.zeros(1, *map_hw), torch.tensor([h, w])).shape[1:]
        out[layout] = {"map_hw": list(map_hw), "kept_hw": list(kept),
                       "image_tokens": PATCHES + kept[0] * (kept[1] + 1)}
    return out


GEOMETRY_COLUMNS = ["h", "w", "best_h", "best_w", "resized_h", "resized_w", "paste_y", "paste_x", "grid_rows",
                    "grid_cols", "num_tiles", "kept_h_4_43", "kept_w_4_43", "image_tokens_4_43",
                    "kept_h_corrected", "kept_w_corrected", "image_tokens_corrected"]


def geometry_row(g: dict) -> list[int]:
    """One row of the `geometry/table` tensor, in GEOMETRY_COLUMNS order."""
    row = g["size_hw"] + g["best_hw"] + g["resized_hw"] + g["paste_yx"] + g["grid_rows_cols"] + [g["num_tiles"]]
    for layout in LAYOUTS:
        row += g[layout]["kept_hw"] + [g[layout]["image_tokens"]]
    return row


def geometry_sizes() -> list[tuple[int, int]]:
    sides = [1, 2, 7, 14, 100, 150, 199, 240, 333, 335, 336, 337, 400, 500, 503, 671, 672, 673, 700,
             1000, 1007, 1008, 1009, 1344, 2000, 4032]
    sizes = [(h, w) for h in sides for w in sides]
    # sizes whose aspect resize lands a hair above an integer in float64 (ceil rounds it up)
    sizes += [(101, 303), (102, 576), (119, 170), (144, 219), (150, 100), (150, 275), (155, 310), (152, 114)]
    # sizes whose un-pad differs when the scale is cur / orig instead of 4.43's reciprocal(orig) * cur
    sizes += [(630, 2160), (2160, 630), (2291, 3792), (440, 2112), (3736, 467), (1512, 231)]
    # COCO-like photos (640 on the long side), then random sizes
    sizes += [(h, 640) for h in range(300, 641)] + [(640, w) for w in range(300, 640)]
    rng = np.random.default_rng(12)
    sizes += [(int(h), int(w)) for h, w in rng.integers(1, 5000, size=(300, 2))]
    sizes += [tuple(v) for v in list(NEW_IMAGES.values()) + [(333, 500), (400, 240), (150, 200)]]
    return sorted(set(sizes))


# --------------------------------------------------------------------------------------
# model


def build_model(cfg: dict, seed: int, eos_id: int, image_id: int, candidates: list[int]):
    model = LlavaNextForConditionalGeneration._from_config(LlavaNextConfig.from_dict(cfg),
                                                           attn_implementation="eager").eval()
    # `<image>` competes like a word, so that a case generates it (the id-0 embedding rule)
    scaled_init_(model, seed, overrides=runner.lm_head_override(
        "language_model.lm_head.weight", sorted(set(candidates + [image_id])), eos_id))
    return model


def run_case(model, br: dict, *, name, mode, alpha, beta, sample, eos_id, decode) -> dict:
    """One generation case with the reference decoder; tokens, text and margins (as fixture_runner)."""
    trace: list = []
    if sample:
        torch.manual_seed(runner.SAMPLE_SEED)
    new = ref.damro_generate(model, br["full_embeds"], br["outlier_embeds"] if mode == "damro" else None,
                             alpha=alpha or 0.0, beta=beta or 1.0, max_new_tokens=runner.MAX_NEW_TOKENS,
                             eos_id=eos_id, mode=mode, sample=sample, trace=trace)
    q = None
    if sample:
        torch.manual_seed(runner.SAMPLE_SEED)
        q = [torch.empty_like(s).exponential_(1) for (_, _, s) in trace]
        for (_, _, s), qi, tok in zip(trace, q, new):
            if int(torch.argmax(torch.softmax(s, -1) / qi)) != tok:
                raise RuntimeError(f"{name}: multinomial replay does not match")
    steps = step_margins(trace, mode, beta, q)
    mins = min_margins(steps, sample)
    check_margins(name, mins)
    ended = bool(new and new[-1] == eos_id)
    print(f"    {name}: {len(new)} tokens{' (EOS)' if ended else ''}; min margins "
          + ", ".join(f"{k} {v:.2e}" for k, v in mins.items()))
    out = {"name": name, "mode": mode, "decoding": "sample" if sample else "greedy",
           "seed": runner.SAMPLE_SEED if sample else None, "alpha": alpha, "beta": beta,
           "max_new_tokens": runner.MAX_NEW_TOKENS, "generated_ids": new, "ended_on_eos": ended,
           "text": decode(new), "min_margins": mins, "step_margins": steps,
           "_logits_full_step0": trace[0][0].clone()}
    if mode == "damro":
        out["_logits_outlier_step0"] = trace[0][1].clone()
        out["steps_changed_by_contrast"] = [i for i, (l, _, s) in enumerate(trace)
                                            if int(torch.argmax(l)) != int(torch.argmax(s))]
    return out


def run_model(model, pixel, sizes, prompts, eos_id, image_id, tok_written) -> dict:
    """Vision outputs of every image, then every case; raises MarginError."""
    tensors, images = {}, {}
    for stem, pv in pixel.items():
        cls, feats = ref.vision(model, pv)
        records = [runner.outlier_record(cls[t : t + 1], K_MAIN) for t in range(cls.shape[0])]
        gaps = [r["min_rel_gap"] for r in records]
        if min(gaps) <= REL_SCORE_MARGIN:
            raise MarginError(f"outlier score gap {min(gaps):.2e} on {stem} tile {gaps.index(min(gaps))}")
        print(f"    {stem}: {cls.shape[0]} tiles, outlier gaps (top {K_MAIN + 1}) min {min(gaps):.2e}")
        projected = model.multi_modal_projector(feats)
        tensors[f"vision/tile_features/{stem}"] = feats
        tensors[f"vision/cls_attention/{stem}"] = cls
        tensors[f"full/packed/{stem}"] = ref.pack_full(projected, sizes[stem], model.image_newline, PINPOINTS, TILE)
        for layout in LAYOUTS:
            tensors[f"full/index/{layout}/{stem}"] = ref.pack_index(cls.shape[0], PATCHES, sizes[stem],
                                                                    PINPOINTS, TILE, layout)
        tensors[f"contrast/k{K_MAIN}/{stem}"], _ = ref.contrast_tokens(model, feats, cls, K_MAIN)
        images[stem] = {"tile_outliers": records}

    cases = []
    for name, stem, prompt, mode, alpha, beta, k, sample, layout in CASES:
        ids = torch.tensor([prompts[prompt]["ids_as_written"]])
        br = ref.branches(model, ids, pixel[stem], sizes[stem], k or K_MAIN, layout)
        case = run_case(model, br, name=name, mode=mode, alpha=alpha, beta=beta, sample=sample, eos_id=eos_id,
                        decode=lambda new: tok_written.decode(new, skip_special_tokens=True).strip())
        tensors[f"cases/{name}/logits_full_step0"] = case.pop("_logits_full_step0")
        if mode == "damro":
            tensors[f"cases/{name}/logits_outlier_step0"] = case.pop("_logits_outlier_step0")
            tensors[f"cases/{name}/contrast_tokens"] = br["outlier_tokens"]
        case.update({"image": stem, "prompt": prompt, "template": "llava_v1", "layout": layout,
                     "question": prompts[prompt]["question"], "prompt_text": prompts[prompt]["text"],
                     "prompt_ids": prompts[prompt]["ids_as_written"], "prompt_ids_source": "as_written", "k": k,
                     "outlier_indices": br["outlier_indices"].tolist() if mode == "damro" else None,
                     "full_len": int(br["full_embeds"].shape[1]),
                     "outlier_len": int(br["outlier_embeds"].shape[1]) if mode == "damro" else None})
        cases.append(case)
    runner.check_case_mix(cases, "hub")
    fed = [c["name"] for c in cases if image_id in c["generated_ids"][:-1]]
    if not fed:
        raise MarginError("no case generates <image> before its last step")
    return {"tensors": tensors, "images": images, "cases": cases, "image_token_cases": fed}


# --------------------------------------------------------------------------------------
# verification against the 4.43 model itself


class CorrectedLayout:
    """Within the block, 4.43's packer reads the grid shape the way 4.44 fixed it."""

    def __enter__(self):
        self.saved = hf_model.get_anyres_image_grid_shape
        hf_model.get_anyres_image_grid_shape = lambda *a: tuple(reversed(self.saved(*a)))

    def __exit__(self, *exc):
        hf_model.get_anyres_image_grid_shape = self.saved


def layout_ctx(layout: str):
    import contextlib

    return CorrectedLayout() if layout == "corrected" else contextlib.nullcontext()


@torch.no_grad()
def verify(model, model_dir, pixel, sizes, prompts, eos_id, pad_id, res) -> dict:
    report = {}
    loaded = LlavaNextForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager",
                                                               torch_dtype=torch.float32).eval()
    if not runner.same_state(loaded, model):
        raise RuntimeError("hub folder: weights differ from the source model")
    report["load_hub"] = "from_pretrained (4.43): all weights bit-identical to the source model"

    pack = {}
    for stem, pv in pixel.items():
        _, feats = ref.vision(model, pv)
        projected = model.multi_modal_projector(feats)
        for layout in LAYOUTS:
            with layout_ctx(layout):
                hf_packed, lens = model.pack_image_features([projected], sizes[stem][None], model.image_newline)
            ours = ref.pack_full(projected, sizes[stem], model.image_newline, PINPOINTS, TILE, layout)
            index = res["tensors"][f"full/index/{layout}/{stem}"]
            table = torch.cat([projected.reshape(-1, projected.shape[-1]), model.image_newline[None]])
            gathered = table[torch.where(index < 0, table.shape[0] - 1, index)]
            if not (torch.equal(hf_packed, ours) and torch.equal(hf_packed, gathered)):
                raise RuntimeError(f"{stem} {layout}: pack differs from 4.43 pack_image_features")
            pack[f"{stem}/{layout}"] = int(lens[0])
    report["pack_vs_hf_pack_image_features"] = {"equal": "bit-identical, both layouts, and gather(index map)",
                                                "image_tokens": pack}

    first, gen = {}, {}
    for c in res["cases"]:
        ids = torch.tensor([c["prompt_ids"]])
        with layout_ctx(c["layout"]):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel[c["image"]],
                        image_sizes=sizes[c["image"]][None])
            if out.logits.shape[1] != c["full_len"]:
                raise RuntimeError(f"{c['name']}: HF length {out.logits.shape[1]} != {c['full_len']}")
            d = runner.max_abs_diff(out.logits[0, -1].float(), res["tensors"][f"cases/{c['name']}/logits_full_step0"])
            if d > 1e-5:
                raise RuntimeError(f"{c['name']}: full branch vs HF forward {d}")
            first[c["name"]] = d
            if c["mode"] == "plain" and c["decoding"] == "greedy":
                hf = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel[c["image"]],
                                    image_sizes=sizes[c["image"]][None], do_sample=False,
                                    max_new_tokens=runner.MAX_NEW_TOKENS, eos_token_id=eos_id, pad_token_id=pad_id)
                new = hf[0, ids.shape[1]:].tolist()
                if new != c["generated_ids"]:
                    raise RuntimeError(f"{c['name']}: HF generate {new} != reference {c['generated_ids']}")
                gen[c["name"]] = "equal"
    report["full_branch_first_logits_vs_hf_forward_max_abs_diff"] = first
    report["plain_greedy_vs_hf_generate"] = gen
    return report


# --------------------------------------------------------------------------------------
# main


def write_model_dir(folder: str, cfg: dict, state: dict, tok_dir: str) -> None:
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), cfg)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]:
        shutil.copyfile(os.path.join(tok_dir, f), os.path.join(folder, f))
    save_single(state, os.path.join(folder, "model.safetensors"))


def save_reference(path: str, tensors: dict[str, torch.Tensor]) -> None:
    out = {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        out[name] = (t.float() if t.is_floating_point() else t).contiguous().clone()
    save_file(out, path, metadata={"format": "pt"})


def build_tokenizer() -> Tokenizer:
    """fixtures_common.build_llama_tokenizer(233, "<s>", ("<image>", "<pad>")) for tokenizers 0.19,
    which cannot set an absent pre-tokenizer to None: the same vocabulary, merges and pipeline."""
    alphabet, merges = learn_bpe(CORPUS_LINES, N_MERGES)
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE), normalizers.Replace(" ", SPIECE)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    for t in ("<image>", "<pad>"):
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    return tok


def prepare_tokenizer(tok_dir: str):
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    image_id, pad_id = tok.token_to_id("<image>"), tok.token_to_id("<pad>")
    save_tokenizer_json(tok, os.path.join(tok_dir, "tokenizer.json"))
    tcfg = tokenizer_config(image_id, pad_id)
    tcfg["processor_class"] = "LlavaNextProcessor"
    write_json(os.path.join(tok_dir, "tokenizer_config.json"), tcfg)
    write_json(os.path.join(tok_dir, "special_tokens_map.json"), SPECIAL_TOKENS_MAP)
    write_json(os.path.join(tok_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
    tok_written = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    tok_hf = AutoTokenizer.from_pretrained(tok_dir)
    prompts = {}
    for name, q in PROMPTS.items():
        text = llava_v1(q)
        ids = tok_written.encode(text).ids
        if tok_hf(text)["input_ids"] != ids:
            raise RuntimeError(f"{name}: 4.43 AutoTokenizer disagrees with tokenizer.json as written")
        prompts[name] = {"question": q, "template": "llava_v1", "text": text, "ids_as_written": ids,
                         "ids_transformers_4_43": "equal to ids_as_written"}
    llava = os.path.join(ROOT, "llava", "reference.json")
    if os.path.isfile(llava):  # the LLaVA-1.5 fixture's tokenizer, built by tokenizers 0.23
        with open(llava, encoding="utf-8") as f:
            theirs = json.load(f)["prompts"]
        if any(theirs[n]["ids_as_written"] != p["ids_as_written"] for n, p in prompts.items()):
            raise RuntimeError("prompt ids differ from tests/fixtures/llava's")
    tokens = {"image": image_id, "pad": pad_id, "bos": tok.token_to_id("<s>"), "eos": tok.token_to_id("</s>"),
              "unk": 0, "vocab_size": vocab}
    return tok, tok_written, prompts, tokens


def make() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    fam = os.path.join(ROOT, FAMILY)
    if os.path.isdir(fam):
        shutil.rmtree(fam)
    tok_dir = os.path.join(fam, "_tok")
    os.makedirs(tok_dir)
    tok, tok_written, prompts, tokens = prepare_tokenizer(tok_dir)

    paths = {s: os.path.join(ROOT, "images", f"{s}.png") for s in SHARED_IMAGES}
    paths.update(make_new_images(os.path.join(fam, "images")))
    proc = AutoImageProcessor.from_pretrained(tok_dir, use_fast=False)
    pixel, sizes, images = {}, {}, {}
    for stem, path in paths.items():
        im = Image.open(path)
        out = proc(images=im, return_tensors="pt")
        pixel[stem] = out["pixel_values"][0].float()  # [tiles, 3, 336, 336]
        sizes[stem] = out["image_sizes"][0]  # int64 (h, w)
        g = geometry(*sizes[stem].tolist())
        if g["num_tiles"] != pixel[stem].shape[0]:
            raise RuntimeError(f"{stem}: {pixel[stem].shape[0]} tiles, geometry says {g['num_tiles']}")
        images[stem] = {"file": os.path.relpath(path, fam), "size_wh": list(im.size), "mode": im.mode,
                        "image_sizes": sizes[stem].tolist(), "pixel_values": pixel_record(pixel[stem]),
                        "geometry": g}
        print(f"  {stem}: {im.size} {im.mode} -> best {g['best_hw']}, tiles {g['num_tiles']}, tokens "
              + ", ".join(f"{lay} {g[lay]['image_tokens']}" for lay in LAYOUTS))
    table = [geometry(h, w) for h, w in geometry_sizes()]
    for g in table:
        for layout in LAYOUTS:
            n = ref.pack_index(g["num_tiles"], PATCHES, torch.tensor(g["size_hw"]), PINPOINTS, TILE, layout)
            if n.numel() != g[layout]["image_tokens"]:
                raise RuntimeError(f"{g['size_hw']} {layout}: reference packs {n.numel()} tokens")
    geometry_rows = torch.tensor([geometry_row(g) for g in table], dtype=torch.int64)

    cfg = model_config(tokens["vocab_size"], tokens["image"], tokens["pad"])
    candidates = runner.candidate_tokens(tok, tokens["eos"])
    seed = FIRST_SEED
    while True:
        model = build_model(cfg, seed, tokens["eos"], tokens["image"], candidates)
        try:
            res = run_model(model, pixel, sizes, prompts, tokens["eos"], tokens["image"], tok_written)
            break
        except MarginError as e:
            print(f"  seed {seed}: rejected ({e})")
            seed += 1
    print(f"  seed {seed} accepted")
    model_dir = os.path.join(fam, "models", "hub")
    write_model_dir(model_dir, cfg, model.state_dict(), tok_dir)
    verification = verify(model, model_dir, pixel, sizes, prompts, tokens["eos"], tokens["pad"], res)
    shutil.rmtree(tok_dir)
    for stem in images:
        images[stem].update(res["images"][stem])
    save_reference(os.path.join(fam, "reference.safetensors"), {**res["tensors"], "geometry/table": geometry_rows})
    doc = {
        "family": FAMILY, "generator": "tools/make_llava_next.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "pillow": PIL.__version__, "numpy": np.__version__},
        "tokens": tokens,
        "models": {"hub": {"dir": "models/hub", "seed": seed, "dtype": "float32", "layout": "hub",
                           "files": ["model.safetensors"]}},
        "hub_key_prefixes": runner.key_prefixes(runner.safetensors_keys(model_dir)),
        "dims": {"vision_hidden": 32, "vision_layers": 4, "vision_heads": 4, "vision_intermediate": 64,
                 "image_size": TILE, "patch_size": 14, "num_patches": PATCHES, "text_hidden": 64,
                 "text_layers": 2, "text_heads": 4, "text_intermediate": 128},
        "image_grid_pinpoints": PINPOINTS, "vision_feature_layer": -2,
        "cls_score_layer": "vision encoder layers[-2] (index 2 of 4), per tile", "k_main": K_MAIN,
        "layouts": list(LAYOUTS), "images": images, "prompts": prompts, "cases": res["cases"],
        "image_token_cases": res["image_token_cases"],
        "geometry_table": {"tensor": "geometry/table", "rows": len(table), "columns": GEOMETRY_COLUMNS},
        "thresholds": {"rel_logit_margin": runner.REL_LOGIT_MARGIN, "rel_score_margin": REL_SCORE_MARGIN},
        "verification": verification,
    }
    write_json(os.path.join(fam, "reference.json"), doc)
    print("done")


if __name__ == "__main__":
    make()
