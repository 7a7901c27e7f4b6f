"""Tiny InstructBLIP-Vicuna fixtures: models (hub sharded fp32, hub fp16), tokenizers, reference outputs."""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import AutoImageProcessor, AutoTokenizer, InstructBlipConfig, InstructBlipForConditionalGeneration

import damro_reference as ref
import fixture_runner as runner
from fixtures_common import (
    CORPUS_LINES,
    OUTLIER_K_CHECK,
    REL_SCORE_MARGIN,
    MarginError,
    build_bert_wordpiece,
    build_llama_tokenizer,
    outlier_margin,
    round_through,
    save_single,
    save_tokenizer_json,
    save_two_shards,
    scaled_init_,
    write_json,
    write_text,
)

FAMILY = "instructblip"
N_MERGES = 211
NUM_QUERY_TOKENS = 8
PROMPTS = {
    "pope_dog": "Is there a dog in the image? Please answer this question with one word.",
    "describe": "Describe this image in detail.",
}
K = 4

# (name, image, prompt, mode, alpha, beta, k, indexing, sample)
CASES = [
    ("hub_plain_pope_dog_wide", "wide_rgb", "pope_dog", "plain", None, None, None, None, False),
    ("hub_damro_pope_dog_wide", "wide_rgb", "pope_dog", "damro", 0.5, 0.1, 4, "reference", False),
    ("hub_damro_a15_k4_corrected_pope_dog_wide", "wide_rgb", "pope_dog", "damro", 1.5, 0.1, 4, "corrected", False),
    ("hub_plain_describe_grey", "small_grey", "describe", "plain", None, None, None, None, False),
    ("hub_damro_describe_grey", "small_grey", "describe", "damro", 0.5, 0.1, 4, "reference", False),
    ("hub_damro_a15_k4_corrected_describe_grey", "small_grey", "describe", "damro", 1.5, 0.1, 4, "corrected", False),
    ("hub_sample_damro_describe_tall", "tall_rgba", "describe", "damro", 0.5, 0.1, 4, "reference", True),
]


# --------------------------------------------------------------------------------------
# files


def _added(content, normalized=False):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": True}


def llm_tokenizer_config(pad_id: int) -> dict:
    """Shaped like Salesforce/instructblip-vicuna-7b's: bos/eos/unk all `</s>` (as LAVIS set them),
    `[PAD]` appended, truncation on the left."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {"0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>"),
                                 str(pad_id): _added("[PAD]")},
        "bos_token": "</s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "[PAD]",
        "padding_side": "right",
        "processor_class": "InstructBlipProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "truncation_side": "left",
        "unk_token": "</s>",
    }


LLM_SPECIAL_TOKENS_MAP = {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "[PAD]", "unk_token": "</s>"}

QFORMER_TOKENIZER_CONFIG = {
    "bos_token": "[DEC]",
    "clean_up_tokenization_spaces": True,
    "cls_token": "[CLS]",
    "do_basic_tokenize": True,
    "do_lower_case": True,
    "mask_token": "[MASK]",
    "model_max_length": 512,
    "never_split": None,
    "pad_token": "[PAD]",
    "processor_class": "InstructBlipProcessor",
    "sep_token": "[SEP]",
    "strip_accents": None,
    "tokenize_chinese_chars": True,
    "tokenizer_class": "BertTokenizer",
    "truncation_side": "left",
    "unk_token": "[UNK]",
}
QFORMER_SPECIAL_TOKENS_MAP = {"bos_token": "[DEC]", "cls_token": "[CLS]", "mask_token": "[MASK]",
                              "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}

PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "BlipImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "InstructBlipProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}


def model_config(vocab: int, qformer_vocab: int, dtype: str) -> dict:
    """config.json like Salesforce/instructblip-vicuna-7b's (HF defaults left out), tiny widths.

    text_config keeps the hub checkpoint's quirks: architectures "LLaMAForCausalLM" (old
    spelling), bos 0 / eos 1 / pad -1 from decapoda-research/llama-7b-hf (the tokenizer says
    bos = eos = `</s>` = 2), max_sequence_length, torch_dtype float16.
    """
    return {
        "architectures": ["InstructBlipForConditionalGeneration"],
        "model_type": "instructblip",
        "num_query_tokens": NUM_QUERY_TOKENS,
        "qformer_config": {
            "encoder_hidden_size": 48,
            "hidden_size": 32,
            "intermediate_size": 64,
            "model_type": "instructblip_qformer",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
            "vocab_size": qformer_vocab,
        },
        "text_config": {
            "architectures": ["LLaMAForCausalLM"],
            "bos_token_id": 0,
            "eos_token_id": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "max_sequence_length": 2048,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "pad_token_id": -1,
            "torch_dtype": "float16",
            "vocab_size": vocab,
        },
        "torch_dtype": dtype,
        "use_decoder_only_language_model": True,
        "vision_config": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "model_type": "instructblip_vision_model",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
        },
    }


def weight_overrides(candidates, eos_id):
    head = runner.lm_head_override("language_model.lm_head.weight", candidates, eos_id)

    def override(name, val, gen):
        if name.endswith("self_attn.qkv.bias"):  # (q_bias, 0, v_bias) as the module builds it
            third = val.shape[0] // 3
            val = val.clone()
            val[third : 2 * third] = 0.0
        return head(name, val, gen)

    return override


def build_model(cfg: dict, seed: int, eos_id: int, candidates: list[int]):
    config = InstructBlipConfig.from_dict(cfg)
    model = InstructBlipForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    scaled_init_(model, seed, overrides=weight_overrides(candidates, eos_id))
    return model


def state_for_file(model) -> dict[str, torch.Tensor]:
    """Hub keys equal the in-memory names (checked against save_pretrained in verify())."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------
# main


def make(root: str, images: dict[str, str], versions: dict, seeds: dict) -> dict:
    fam = os.path.join(root, FAMILY)
    models_dir = os.path.join(fam, "models")
    if os.path.isdir(fam):
        shutil.rmtree(fam)
    tok_dir = os.path.join(fam, "_tok")
    os.makedirs(os.path.join(tok_dir, "qformer_tokenizer"))

    tok = build_llama_tokenizer(N_MERGES, bos="</s>", appended_specials=("[PAD]",))
    vocab = tok.get_vocab_size()
    pad_id, eos_id = tok.token_to_id("[PAD]"), tok.token_to_id("</s>")
    bos_id = eos_id  # the tokenizer's bos is `</s>`
    assert pad_id == vocab - 1
    save_tokenizer_json(tok, os.path.join(tok_dir, "tokenizer.json"))
    write_json(os.path.join(tok_dir, "tokenizer_config.json"), llm_tokenizer_config(pad_id))
    write_json(os.path.join(tok_dir, "special_tokens_map.json"), LLM_SPECIAL_TOKENS_MAP)
    write_json(os.path.join(tok_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
    qtok, qvocab_lines = build_bert_wordpiece(CORPUS_LINES)
    qvocab = qtok.get_vocab_size()
    qdir = os.path.join(tok_dir, "qformer_tokenizer")
    save_tokenizer_json(qtok, os.path.join(qdir, "tokenizer.json"))
    write_text(os.path.join(qdir, "vocab.txt"), "".join(t + "\n" for t in qvocab_lines))
    write_json(os.path.join(qdir, "added_tokens.json"), {"[DEC]": qtok.token_to_id("[DEC]")})
    write_json(os.path.join(qdir, "tokenizer_config.json"), QFORMER_TOKENIZER_CONFIG)
    write_json(os.path.join(qdir, "special_tokens_map.json"), QFORMER_SPECIAL_TOKENS_MAP)
    candidates = runner.candidate_tokens(tok, eos_id)

    tok_written = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    qtok_written = Tokenizer.from_file(os.path.join(qdir, "tokenizer.json"))
    tok_tf5 = AutoTokenizer.from_pretrained(tok_dir)
    qtok_tf5 = AutoTokenizer.from_pretrained(qdir)
    prompts = {}
    for name, q in PROMPTS.items():
        prompts[name] = {
            "question": q,
            "template": "raw question",
            "text": q,
            "ids_as_written": tok_written.encode(q).ids,
            "ids_transformers5": tok_tf5(q)["input_ids"],
            "qformer_ids_as_written": qtok_written.encode(q).ids,
            "qformer_ids_transformers5": qtok_tf5(q)["input_ids"],
        }

    tensors: dict[str, torch.Tensor] = {}
    pixel = {}
    for backend in ["pil", "torchvision"]:
        proc = AutoImageProcessor.from_pretrained(tok_dir, backend=backend)
        for stem, path in images.items():
            pv = proc(images=Image.open(path), return_tensors="pt")["pixel_values"].float()
            tensors[f"pixel_values/{backend}/{stem}"] = pv
            if backend == "pil":
                pixel[stem] = pv

    cfg = model_config(vocab, qvocab, "float32")
    seed = seeds["hub"]
    while True:
        model = build_model(cfg, seed, eos_id, candidates)
        try:
            result = run_variant(model, pixel, prompts, eos_id, tok_written)
            break
        except MarginError as e:
            print(f"  instructblip hub seed {seed}: rejected ({e})")
            seed += 1
    print(f"  instructblip hub: seed {seed} accepted")

    state = state_for_file(model)
    for variant, dtype_name in [("hub", "float32"), ("hub-f16", "float16")]:
        d = os.path.join(models_dir, variant)
        os.makedirs(d)
        write_json(os.path.join(d, "config.json"), model_config(vocab, qvocab, dtype_name))
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]:
            shutil.copyfile(os.path.join(tok_dir, f), os.path.join(d, f))
        shutil.copytree(qdir, os.path.join(d, "qformer_tokenizer"))
    save_two_shards(state, os.path.join(models_dir, "hub"))
    save_single(state, os.path.join(models_dir, "hub-f16", "model.safetensors"), dtype=torch.float16)

    rounded = InstructBlipForConditionalGeneration._from_config(model.config, attn_implementation="eager").eval()
    rounded.load_state_dict(round_through(model.state_dict(), torch.float16))
    verification = verify(model, rounded, models_dir, pixel, prompts, pad_id, eos_id, result["cases"])

    # fp16 variant: outputs in fp32 from the rounded weights
    pre = "variant/hub-f16"
    f16_outliers = {}
    qids = torch.tensor([prompts["pope_dog"]["qformer_ids_as_written"]])
    for stem, pv in pixel.items():
        cls_scores, image_embeds = ref.instructblip_vision(rounded, pv)
        prefix, query = ref.instructblip_prefix(rounded, image_embeds, qids)
        tensors[f"{pre}/vision/hidden/{stem}"] = image_embeds
        tensors[f"{pre}/vision/cls_attention/{stem}"] = cls_scores
        tensors[f"{pre}/qformer/{stem}"] = query
        tensors[f"{pre}/projector/{stem}"] = prefix
        f16_outliers[stem] = runner.outlier_record(cls_scores, K)
    first = CASES[1]
    br = ref.instructblip_branches(rounded, torch.tensor([prompts[first[2]]["ids_as_written"]]),
                                   torch.tensor([prompts[first[2]]["qformer_ids_as_written"]]),
                                   pixel[first[1]], K, first[7])
    trace = []
    ref.damro_generate(rounded.language_model, br["full_embeds"], br["outlier_embeds"], alpha=first[4],
                       beta=first[5], max_new_tokens=1, eos_id=eos_id, trace=trace)
    tensors[f"{pre}/cases/{first[0]}/logits_full_step0"] = trace[0][0]
    tensors[f"{pre}/cases/{first[0]}/logits_outlier_step0"] = trace[0][1]

    tensors.update(result["tensors"])
    images_json = {}
    for stem, path in images.items():
        im = Image.open(path)
        images_json[stem] = {
            "file": f"../images/{os.path.basename(path)}",
            "size_wh": list(im.size),
            "mode": im.mode,
            "outliers": {"hub": result["outliers"][stem], "hub-f16": f16_outliers[stem]},
        }
    runner.save_reference(os.path.join(fam, "reference.safetensors"), tensors)
    shutil.rmtree(tok_dir)
    hub_keys = runner.safetensors_keys(os.path.join(models_dir, "hub"))
    doc = {
        "family": FAMILY,
        "generator": "tools/make_fixtures.py",
        "versions": versions,
        "tokens": {"pad": pad_id, "bos": bos_id, "eos": eos_id, "unk_token": "</s>", "vocab_size": vocab,
                   "image": None, "config_text_bos_token_id": 0, "config_text_eos_token_id": 1,
                   "config_text_pad_token_id": -1, "decode_bos": ref.instructblip_bos_for_decode(model.config.text_config),
                   "qformer": {"vocab_size": qvocab, "pad": 0, "unk": qtok.token_to_id("[UNK]"),
                               "cls": qtok.token_to_id("[CLS]"), "sep": qtok.token_to_id("[SEP]"),
                               "mask": qtok.token_to_id("[MASK]"), "dec": qtok.token_to_id("[DEC]")}},
        "models": {
            "hub": {"dir": "models/hub", "seed": seed, "dtype": "float32", "layout": "hub (= transformers 5.23)",
                    "files": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                              "model.safetensors.index.json"]},
            "hub-f16": {"dir": "models/hub-f16", "same_weights_as": "hub (rounded to fp16)", "dtype": "float16",
                        "layout": "hub", "files": ["model.safetensors"]},
        },
        "hub_key_prefixes": runner.key_prefixes(hub_keys),
        "dims": {"vision_hidden": 48, "vision_layers": 4, "vision_heads": 4, "vision_intermediate": 96,
                 "image_size": 224, "patch_size": 14, "num_patches": 256, "qformer_hidden": 32,
                 "qformer_layers": 4, "qformer_heads": 4, "qformer_intermediate": 64,
                 "qformer_cross_attention_layers": [0, 2], "num_query_tokens": NUM_QUERY_TOKENS,
                 "text_hidden": 64, "text_layers": 2, "text_heads": 4, "text_intermediate": 128},
        "cls_score_layer": "vision encoder layers[-2] (index 2 of 4)",
        "qformer_reference_prompt": "pope_dog",
        "images": images_json,
        "prompts": prompts,
        "cases": result["cases"],
        "thresholds": {"rel_logit_margin": runner.REL_LOGIT_MARGIN, "rel_score_margin": REL_SCORE_MARGIN},
        "verification": verification,
    }
    write_json(os.path.join(fam, "reference.json"), doc)
    return doc


def run_variant(model, pixel, prompts, eos_id, tok_written) -> dict:
    tensors, outliers = {}, {}
    qids = torch.tensor([prompts["pope_dog"]["qformer_ids_as_written"]])
    for stem, pv in pixel.items():
        cls_scores, image_embeds = ref.instructblip_vision(model, pv)
        m = outlier_margin(cls_scores, OUTLIER_K_CHECK["instructblip"])
        if m <= REL_SCORE_MARGIN:
            raise MarginError(f"outlier score gap {m:.2e} on {stem}")
        print(f"    hub {stem}: outlier score gap (top {OUTLIER_K_CHECK['instructblip'] + 1}) {m:.2e}")
        prefix, query = ref.instructblip_prefix(model, image_embeds, qids)
        tensors[f"vision/hidden/{stem}"] = image_embeds
        tensors[f"vision/cls_attention/{stem}"] = cls_scores
        tensors[f"qformer/{stem}"] = query
        tensors[f"projector/{stem}"] = prefix
        outliers[stem] = runner.outlier_record(cls_scores, K)

    decode_bos = ref.instructblip_bos_for_decode(model.config.text_config)
    cases = []
    for name, stem, prompt, mode, alpha, beta, k, indexing, sample in CASES:
        p = prompts[prompt]
        br = ref.instructblip_branches(model, torch.tensor([p["ids_as_written"]]),
                                       torch.tensor([p["qformer_ids_as_written"]]), pixel[stem], k or K,
                                       indexing or "reference")
        case = runner.run_case(
            model.language_model, br, name=name, mode=mode, alpha=alpha, beta=beta, sample=sample, eos_id=eos_id,
            decode=lambda new: tok_written.decode([decode_bos] + new, skip_special_tokens=True).strip(),
        )
        tensors[f"cases/{name}/logits_full_step0"] = case.pop("_logits_full_step0")
        if mode == "damro":
            tensors[f"cases/{name}/logits_outlier_step0"] = case.pop("_logits_outlier_step0")
            rows = br["outlier_indices"] + (1 if indexing == "corrected" else 0)
            tensors[f"cases/{name}/prefix_outlier"] = ref.instructblip_prefix(
                model, br["image_embeds"][:, rows], torch.tensor([p["qformer_ids_as_written"]]))[0]
        case.update({"variant": "hub", "image": stem, "prompt": prompt, "template": "raw question",
                     "question": p["question"], "prompt_text": p["text"], "prompt_ids": p["ids_as_written"],
                     "prompt_ids_source": "as_written", "qformer_ids": p["qformer_ids_as_written"],
                     "k": k, "indexing": indexing,
                     "outlier_indices": br["outlier_indices"].tolist() if mode == "damro" else None,
                     "gathered_rows": (br["outlier_indices"] + (1 if indexing == "corrected" else 0)).tolist()
                     if mode == "damro" else None,
                     "decode_ids": [decode_bos] + case["generated_ids"],
                     "full_len": int(br["full_embeds"].shape[1]),
                     "outlier_len": int(br["outlier_embeds"].shape[1]) if mode == "damro" else None})
        cases.append(case)
    runner.check_case_mix(cases, "hub")
    return {"tensors": tensors, "outliers": outliers, "cases": cases}


# --------------------------------------------------------------------------------------
# verification


def verify(model, rounded, models_dir, pixel, prompts, pad_id, eos_id, cases) -> dict:
    report = {}
    p = prompts["pope_dog"]
    llm_ids, qids = p["ids_as_written"], p["qformer_ids_as_written"]
    pv = pixel["wide_rgb"]

    def hf_forward(m, ids, q, pixels):
        # 5.23 scatters the Q-Former outputs into placeholder ids: use [PAD] as the placeholder
        # (the 4.x-style files have no `<image>` token)
        m.config.image_token_index = pad_id
        ex = torch.tensor([[pad_id] * NUM_QUERY_TOKENS + ids])
        with torch.no_grad():
            out = m(pixel_values=pixels, qformer_input_ids=torch.tensor([q]), input_ids=ex)
        m.config.image_token_index = None
        return out.logits[0, -1].float()

    for variant, src in [("hub", model), ("hub-f16", rounded)]:
        loaded = InstructBlipForConditionalGeneration.from_pretrained(
            os.path.join(models_dir, variant), attn_implementation="eager", dtype=torch.float32
        ).eval()
        same = runner.same_state(loaded, src)
        diff = runner.max_abs_diff(hf_forward(loaded, llm_ids, qids, pv), hf_forward(src, llm_ids, qids, pv))
        if not same or diff != 0.0:
            raise RuntimeError(f"layout {variant}: weights equal {same}, logits diff {diff}")
        report[f"load_{variant}"] = "from_pretrained: all weights bit-identical to the source model; logits identical"

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        written = runner.safetensors_keys(tmp)
    hub_keys = runner.safetensors_keys(os.path.join(models_dir, "hub"))
    if written != hub_keys:
        raise RuntimeError("transformers 5.23 save_pretrained writes other keys than the hub layout")
    report["save_pretrained_keys"] = "transformers 5.23 save_pretrained writes exactly the hub key set"

    br = ref.instructblip_branches(model, torch.tensor([llm_ids]), torch.tensor([qids]), pv, K, "reference")
    trace = []
    ref.damro_generate(model.language_model, br["full_embeds"], None, alpha=0.0, beta=1.0, max_new_tokens=1,
                       eos_id=eos_id, mode="plain", trace=trace)
    d = runner.max_abs_diff(trace[0][0], hf_forward(model, llm_ids, qids, pv))
    if d > 1e-5:
        raise RuntimeError(f"full branch vs HF forward: {d}")
    report["full_branch_vs_hf_forward"] = {"max_abs_diff": d, "prompt": "pope_dog", "image": "wide_rgb"}

    gen = {}
    for c in cases:
        if c["mode"] != "plain":
            continue
        ids = [pad_id] * NUM_QUERY_TOKENS + c["prompt_ids"]
        model.config.image_token_index = pad_id
        with torch.no_grad():
            out = model.generate(pixel_values=pixel[c["image"]], qformer_input_ids=torch.tensor([c["qformer_ids"]]),
                                 input_ids=torch.tensor([ids]), do_sample=False,
                                 max_new_tokens=runner.MAX_NEW_TOKENS, eos_token_id=eos_id, pad_token_id=eos_id,
                                 bos_token_id=eos_id, min_new_tokens=0)
        model.config.image_token_index = None
        new = out[0, len(ids):].tolist()
        if new != c["generated_ids"]:
            raise RuntimeError(f"{c['name']}: HF generate {new} != reference {c['generated_ids']}")
        gen[c["name"]] = "equal"
    report["plain_greedy_vs_hf_generate"] = gen
    return report
