"""Tiny LLaVA-1.5 fixtures: models in every key layout, tokenizer, reference outputs, cases."""

from __future__ import annotations

import os
import shutil

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration
from tokenizers import Tokenizer

import damro_reference as ref
from fixtures_common import (
    OUTLIER_K_CHECK,
    MarginError,
    REL_SCORE_MARGIN,
    build_llama_tokenizer,
    outlier_margin,
    round_through,
    save_single,
    save_tokenizer_json,
    save_two_shards,
    scaled_init_,
    write_json,
)
import fixture_runner as runner

FAMILY = "llava"
N_MERGES = 233
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROMPTS = {
    "pope_dog": "Is there a dog in the image? Please answer this question with one word.",
    "describe": "Describe this image in detail.",
    "pope_umbrella": "Is there an umbrella in the image? Please answer this question with one word.",
}


def llava_v1(question: str) -> str:
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


# cases: (name, model variant, image, prompt, mode, alpha, beta, k, sample)
CASES = [
    ("hub_plain_pope_dog_wide", "hub", "wide_rgb", "pope_dog", "plain", None, None, None, False),
    ("hub_damro_pope_dog_wide", "hub", "wide_rgb", "pope_dog", "damro", 2.0, 0.1, 10, False),
    ("hub_damro_a1_b05_k5_pope_dog_wide", "hub", "wide_rgb", "pope_dog", "damro", 1.0, 0.5, 5, False),
    ("hub_plain_describe_grey", "hub", "small_grey", "describe", "plain", None, None, None, False),
    ("hub_damro_describe_grey", "hub", "small_grey", "describe", "damro", 2.0, 0.1, 10, False),
    ("hub_damro_a1_b05_k5_describe_grey", "hub", "small_grey", "describe", "damro", 1.0, 0.5, 5, False),
    ("hub_sample_damro_describe_tall", "hub", "tall_rgba", "describe", "damro", 2.0, 0.1, 10, True),
    ("gqa_plain_pope_umbrella_tall", "gqa", "tall_rgba", "pope_umbrella", "plain", None, None, None, False),
    ("gqa_damro_pope_umbrella_tall", "gqa", "tall_rgba", "pope_umbrella", "damro", 2.0, 0.1, 10, False),
]
K_MAIN = 10


# --------------------------------------------------------------------------------------
# files


def tokenizer_config(image_id: int, pad_id: int) -> dict:
    def added(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True}

    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            "0": added("<unk>"), "1": added("<s>"), "2": added("</s>"),
            str(image_id): added("<image>"), str(pad_id): added("<pad>"),
        },
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    "unk_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
}

PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}

PROCESSOR_CONFIG = {
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}


def model_config(vocab: int, image_id: int, pad_id: int, gqa: bool, dtype: str) -> dict:
    """config.json like llava-hf/llava-1.5-7b-hf's, tiny widths, HF defaults left out."""
    text = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-05,
        "torch_dtype": dtype,
        "vocab_size": vocab,
    }
    if gqa:
        text["num_key_value_heads"] = 2
        text = dict(sorted(text.items()))
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": image_id,
        "model_type": "llava",
        "pad_token_id": pad_id,
        "projector_hidden_act": "gelu",
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "vision_config": {
            "hidden_size": 32,
            "image_size": 336,
            "intermediate_size": 64,
            "model_type": "clip_vision_model",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
            "patch_size": 14,
            "projection_dim": 768,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
    }


def hub_state(model) -> dict[str, torch.Tensor]:
    """In-memory (5.23) names -> llava-hf hub names."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("model.language_model."):
            new = "language_model.model." + name[len("model.language_model."):]
        elif name == "lm_head.weight":
            new = "language_model.lm_head.weight"
        elif name.startswith("model.vision_tower."):
            new = "vision_tower.vision_model." + name[len("model.vision_tower."):]
        elif name.startswith("model.multi_modal_projector."):
            new = name[len("model."):]
        else:
            raise KeyError(name)
        out[new] = t.detach().clone()
    return out


def write_common_files(folder: str, cfg: dict, tok_dir: str) -> None:
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "config.json"), cfg)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "preprocessor_config.json", "processor_config.json"]:
        shutil.copyfile(os.path.join(tok_dir, f), os.path.join(folder, f))


def build_model(cfg: dict, seed: int, eos_id: int, candidates: list[int]):
    config = LlavaConfig.from_dict(cfg)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    scaled_init_(model, seed, overrides=runner.lm_head_override("lm_head.weight", candidates, eos_id))
    return model


# --------------------------------------------------------------------------------------
# main


def make(root: str, images: dict[str, str], versions: dict, seeds: dict) -> dict:
    fam = os.path.join(root, FAMILY)
    models_dir = os.path.join(fam, "models")
    if os.path.isdir(fam):
        shutil.rmtree(fam)
    tok_dir = os.path.join(fam, "_tok")  # staging, removed at the end
    os.makedirs(tok_dir)

    tok = build_llama_tokenizer(N_MERGES, bos="<s>", appended_specials=("<image>", "<pad>"))
    vocab = tok.get_vocab_size()
    image_id, pad_id = tok.token_to_id("<image>"), tok.token_to_id("<pad>")
    assert (image_id, pad_id) == (vocab - 2, vocab - 1)
    bos_id, eos_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    save_tokenizer_json(tok, os.path.join(tok_dir, "tokenizer.json"))
    write_json(os.path.join(tok_dir, "tokenizer_config.json"), tokenizer_config(image_id, pad_id))
    write_json(os.path.join(tok_dir, "special_tokens_map.json"), SPECIAL_TOKENS_MAP)
    write_json(os.path.join(tok_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
    write_json(os.path.join(tok_dir, "processor_config.json"), PROCESSOR_CONFIG)
    candidates = runner.candidate_tokens(tok, eos_id)

    # prompts in both tokenizer behaviours
    tok_written = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    tok_tf5 = AutoTokenizer.from_pretrained(tok_dir)
    prompts = {}
    for name, q in PROMPTS.items():
        text = llava_v1(q)
        prompts[name] = {
            "question": q,
            "template": "llava_v1",
            "text": text,
            "ids_as_written": tok_written.encode(text).ids,
            "ids_transformers5": tok_tf5(text)["input_ids"],
        }

    # pixel values, both backends
    tensors: dict[str, torch.Tensor] = {}
    pixel = {}
    for backend in ["pil", "torchvision"]:
        proc = AutoImageProcessor.from_pretrained(tok_dir, backend=backend)
        for stem, path in images.items():
            pv = proc(images=Image.open(path), return_tensors="pt")["pixel_values"].float()
            tensors[f"pixel_values/{backend}/{stem}"] = pv
            if backend == "pil":
                pixel[stem] = pv

    # models: search seeds until every margin holds
    hub_cfg = model_config(vocab, image_id, pad_id, gqa=False, dtype="float32")
    gqa_cfg = model_config(vocab, image_id, pad_id, gqa=True, dtype="float32")
    variants_models = {}
    seed_used = {}
    for variant, cfg in [("hub", hub_cfg), ("gqa", gqa_cfg)]:
        seed = seeds[variant]
        while True:
            model = build_model(cfg, seed, eos_id, candidates)
            try:
                result = run_variant(model, variant, pixel, prompts, eos_id, bos_id, tok_written)
                break
            except MarginError as e:
                print(f"  llava {variant} seed {seed}: rejected ({e})")
                seed += 1
        print(f"  llava {variant}: seed {seed} accepted")
        seed_used[variant] = seed
        variants_models[variant] = (model, result)

    # write the model folders
    hub_model, hub_result = variants_models["hub"]
    gqa_model, gqa_result = variants_models["gqa"]
    state = hub_state(hub_model)
    d = os.path.join(models_dir, "hub")
    write_common_files(d, hub_cfg, tok_dir)
    save_single(state, os.path.join(d, "model.safetensors"))

    d = os.path.join(models_dir, "gqa")
    write_common_files(d, gqa_cfg, tok_dir)
    save_single(hub_state(gqa_model), os.path.join(d, "model.safetensors"))

    d = os.path.join(models_dir, "hub-sharded-bf16")
    write_common_files(d, model_config(vocab, image_id, pad_id, gqa=False, dtype="bfloat16"), tok_dir)
    save_two_shards(state, d, dtype=torch.bfloat16)

    d = os.path.join(models_dir, "tf5")
    hub_model.save_pretrained(d)
    AutoProcessor.from_pretrained(tok_dir).save_pretrained(d)
    tok_tf5_file = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for p in prompts.values():
        p["ids_tf5_tokenizer_json"] = tok_tf5_file.encode(p["text"]).ids
        assert p["ids_tf5_tokenizer_json"] == p["ids_transformers5"]

    # verification: every layout loads and matches the model it was written from
    verification = verify(hub_model, gqa_model, models_dir=models_dir, pixel=pixel,
                          prompts=prompts, image_id=image_id, pad_id=pad_id, eos_id=eos_id,
                          cases=hub_result["cases"] + gqa_result["cases"])
    tf5_keys = runner.safetensors_keys(os.path.join(models_dir, "tf5"))
    hub_keys = runner.safetensors_keys(os.path.join(models_dir, "hub"))

    # bf16 variant: outputs in fp32 from the rounded weights
    bf16_model = build_like(hub_model)
    bf16_model.load_state_dict(round_through(hub_model.state_dict(), torch.bfloat16))
    bf16_vision = {}
    for stem, pv in pixel.items():
        cls_scores, hidden = ref.llava_vision(bf16_model, pv)
        pre = "variant/hub-sharded-bf16"
        tensors[f"{pre}/vision/hidden/{stem}"] = hidden
        tensors[f"{pre}/vision/cls_attention/{stem}"] = cls_scores
        tensors[f"{pre}/projector/{stem}"] = bf16_model.model.multi_modal_projector(hidden[:, 1:])
        bf16_vision[stem] = runner.outlier_record(cls_scores, K_MAIN)
    first = CASES[1]
    br = ref.llava_branches(bf16_model, torch.tensor([prompts[first[3]]["ids_as_written"]]), pixel[first[2]], first[7])
    trace = []
    ref.damro_generate(bf16_model, br["full_embeds"], br["outlier_embeds"], alpha=first[5], beta=first[6],
                       max_new_tokens=1, eos_id=eos_id, trace=trace)
    tensors[f"variant/hub-sharded-bf16/cases/{first[0]}/logits_full_step0"] = trace[0][0]
    tensors[f"variant/hub-sharded-bf16/cases/{first[0]}/logits_outlier_step0"] = trace[0][1]

    # reference tensors and json
    for variant, res in [("hub", hub_result), ("gqa", gqa_result)]:
        pre = "" if variant == "hub" else f"variant/{variant}/"
        for name, t in res["tensors"].items():
            if variant == "hub" or not name.startswith("cases/"):
                tensors[pre + name] = t
            else:
                tensors[name] = t
    images_json = {}
    for stem, path in images.items():
        im = Image.open(path)
        images_json[stem] = {
            "file": f"../images/{os.path.basename(path)}",
            "size_wh": list(im.size),
            "mode": im.mode,
            "outliers": {
                "hub": hub_result["outliers"][stem],
                "gqa": gqa_result["outliers"][stem],
                "hub-sharded-bf16": bf16_vision[stem],
            },
        }
    cases = hub_result["cases"] + gqa_result["cases"]
    cases.sort(key=lambda c: [x[0] for x in CASES].index(c["name"]))

    runner.save_reference(os.path.join(fam, "reference.safetensors"), tensors)
    shutil.rmtree(tok_dir)
    doc = {
        "family": FAMILY,
        "generator": "tools/make_fixtures.py",
        "versions": versions,
        "tokens": {"image": image_id, "pad": pad_id, "bos": bos_id, "eos": eos_id, "unk": 0, "vocab_size": vocab},
        "models": {
            "hub": {"dir": "models/hub", "seed": seed_used["hub"], "dtype": "float32", "layout": "hub",
                    "files": ["model.safetensors"]},
            "tf5": {"dir": "models/tf5", "same_weights_as": "hub", "dtype": "float32",
                    "layout": "transformers 5.23 save_pretrained", "files": ["model.safetensors"],
                    "key_prefixes": runner.key_prefixes(tf5_keys)},
            "hub-sharded-bf16": {"dir": "models/hub-sharded-bf16", "same_weights_as": "hub (rounded to bf16)",
                                 "dtype": "bfloat16", "layout": "hub",
                                 "files": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "model.safetensors.index.json"]},
            "gqa": {"dir": "models/gqa", "seed": seed_used["gqa"], "dtype": "float32", "layout": "hub",
                    "files": ["model.safetensors"], "num_key_value_heads": 2},
        },
        "hub_key_prefixes": runner.key_prefixes(hub_keys),
        "dims": {"vision_hidden": 32, "vision_layers": 4, "vision_heads": 4, "vision_intermediate": 64,
                 "image_size": 336, "patch_size": 14, "num_patches": 576, "text_hidden": 64,
                 "text_layers": 2, "text_heads": 4, "text_intermediate": 128, "gqa_kv_heads": 2},
        "vision_feature_layer": -2,
        "cls_score_layer": "vision encoder layers[-2] (index 2 of 4)",
        "images": images_json,
        "prompts": prompts,
        "cases": cases,
        "thresholds": {"rel_logit_margin": runner.REL_LOGIT_MARGIN, "rel_score_margin": REL_SCORE_MARGIN},
        "verification": verification,
    }
    write_json(os.path.join(fam, "reference.json"), doc)
    return doc


def run_variant(model, variant, pixel, prompts, eos_id, bos_id, tok_written) -> dict:
    """Vision outputs for every image, then every case of this variant; raises MarginError."""
    tensors = {}
    outliers = {}
    for stem, pv in pixel.items():
        cls_scores, hidden = ref.llava_vision(model, pv)
        m = outlier_margin(cls_scores, OUTLIER_K_CHECK["llava"])
        if m <= REL_SCORE_MARGIN:
            raise MarginError(f"outlier score gap {m:.2e} on {stem}")
        print(f"    {variant} {stem}: outlier score gap (top {OUTLIER_K_CHECK['llava'] + 1}) {m:.2e}")
        tensors[f"vision/hidden/{stem}"] = hidden
        tensors[f"vision/cls_attention/{stem}"] = cls_scores
        tensors[f"projector/{stem}"] = model.model.multi_modal_projector(hidden[:, 1:])
        outliers[stem] = runner.outlier_record(cls_scores, K_MAIN)

    cases = []
    lm = model  # LlavaForConditionalGeneration accepts inputs_embeds directly
    for name, var, stem, prompt, mode, alpha, beta, k, sample in CASES:
        if var != variant:
            continue
        ids = torch.tensor([prompts[prompt]["ids_as_written"]])
        br = ref.llava_branches(model, ids, pixel[stem], k or K_MAIN)
        pos = prompts[prompt]["ids_as_written"].index(model.config.image_token_index)
        case = runner.run_case(
            lm, br, name=name, mode=mode, alpha=alpha, beta=beta, sample=sample, eos_id=eos_id,
            decode=lambda new: tok_written.decode(new, skip_special_tokens=True).strip(),
        )
        tensors[f"cases/{name}/logits_full_step0"] = case.pop("_logits_full_step0")
        if "_logits_outlier_step0" in case:
            tensors[f"cases/{name}/logits_outlier_step0"] = case.pop("_logits_outlier_step0")
            tensors[f"cases/{name}/projector_outlier"] = br["outlier_embeds"][:, pos : pos + k]
        case.update({"variant": variant, "image": stem, "prompt": prompt, "template": "llava_v1",
                     "question": prompts[prompt]["question"], "prompt_text": prompts[prompt]["text"],
                     "prompt_ids": prompts[prompt]["ids_as_written"], "prompt_ids_source": "as_written",
                     "k": k, "outlier_indices": br["outlier_indices"].tolist() if mode == "damro" else None,
                     "full_len": int(br["full_embeds"].shape[1]),
                     "outlier_len": int(br["outlier_embeds"].shape[1]) if mode == "damro" else None})
        cases.append(case)
    runner.check_case_mix(cases, variant)
    return {"tensors": tensors, "outliers": outliers, "cases": cases}


# --------------------------------------------------------------------------------------
# verification


def verify(hub_model, gqa_model, models_dir, pixel, prompts, image_id, pad_id, eos_id, cases) -> dict:
    """Every layout loads with transformers and matches its source model; the reference
    branch building matches LlavaForConditionalGeneration's own forward; plain greedy
    matches HF generate."""
    report = {}
    ids = prompts["pope_dog"]["ids_as_written"]
    expanded = torch.tensor([runner.expand_placeholder(ids, image_id, 576)])
    pv = pixel["wide_rgb"]

    def hf_last_logits(model):
        with torch.no_grad():
            return model(input_ids=expanded, pixel_values=pv).logits[0, -1].float()

    rounded = build_like(hub_model)
    rounded.load_state_dict(round_through(hub_model.state_dict(), torch.bfloat16))
    sources = {"hub": hub_model, "tf5": hub_model, "gqa": gqa_model, "hub-sharded-bf16": rounded}
    for variant, src in sources.items():
        loaded = LlavaForConditionalGeneration.from_pretrained(
            os.path.join(models_dir, variant), attn_implementation="eager", dtype=torch.float32
        ).eval()
        same = runner.same_state(loaded, src)
        diff = runner.max_abs_diff(hf_last_logits(loaded), hf_last_logits(src))
        if not same or diff != 0.0:
            raise RuntimeError(f"layout {variant}: weights equal {same}, logits diff {diff}")
        report[f"load_{variant}"] = "from_pretrained: all weights bit-identical to the source model; logits identical"

    br = ref.llava_branches(hub_model, torch.tensor([ids]), pv, K_MAIN)
    trace = []
    ref.damro_generate(hub_model, br["full_embeds"], None, alpha=0.0, beta=1.0, max_new_tokens=1,
                       eos_id=eos_id, mode="plain", trace=trace)
    d = runner.max_abs_diff(trace[0][0], hf_last_logits(hub_model))
    if d > 1e-5:
        raise RuntimeError(f"full branch vs HF forward: {d}")
    report["full_branch_vs_hf_forward"] = {"max_abs_diff": d, "prompt": "pope_dog", "image": "wide_rgb"}

    gen = {}
    for c in cases:
        if c["mode"] != "plain":
            continue
        model = hub_model if c["variant"] == "hub" else gqa_model
        ex = torch.tensor([runner.expand_placeholder(c["prompt_ids"], image_id, 576)])
        with torch.no_grad():
            out = model.generate(input_ids=ex, pixel_values=pixel[c["image"]], do_sample=False,
                                 max_new_tokens=runner.MAX_NEW_TOKENS, eos_token_id=eos_id,
                                 pad_token_id=pad_id, min_new_tokens=0)
        new = out[0, ex.shape[1]:].tolist()
        if new != c["generated_ids"]:
            raise RuntimeError(f"{c['name']}: HF generate {new} != reference {c['generated_ids']}")
        gen[c["name"]] = "equal"
    report["plain_greedy_vs_hf_generate"] = gen
    return report


def build_like(model):
    return LlavaForConditionalGeneration._from_config(model.config, attn_implementation="eager").eval()
