"""The tiny trained LLaVA's files: tokenizer, config.json, tokenizer/processor configs, prompts.

Used by tools/train_tiny_llava.py (see there). The model reads 42x42 images through a CLIP-style
ViT with patch 14, so its 3x3 patch tokens line up with the cells of tools/scenes.py's grid.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

import scenes as sc
from fixtures_common import SPIECE, learn_bpe

IMAGE_SIZE, PATCH = 42, 14  # 3x3 patches: one per cell of the scenes' object grid
NUM_PATCHES = (IMAGE_SIZE // PATCH) ** 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def llava_v1(question: str) -> str:
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


def pope_prompt(shape: str) -> str:
    return sc.yes_no_question(shape) + sc.POPE_SUFFIX


# --------------------------------------------------------------------------------------
# tokenizer and config files


def build_tokenizer() -> Tokenizer:
    """LLaMA-shaped tokenizer.json (as tools/fixtures_common.build_llama_tokenizer builds it),
    word-level on the scene corpus: ids 0 <unk>, 1 <s>, 2 </s>, 3..258 bytes, the alphabet,
    the merges, then <image> and <pad>."""
    lines = sc.corpus_lines()
    alphabet, merges = learn_bpe(lines, 100_000)  # stops when every word is one symbol
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE), normalizers.Replace(" ", SPIECE)])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    for t in ("<image>", "<pad>"):
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    return tok


def tokenizer_files(image_id: int, pad_id: int) -> dict[str, dict]:
    def added(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True}

    special = {name: {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False}
               for name, tok in [("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"),
                                 ("unk_token", "<unk>")]}
    return {
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False,
            "added_tokens_decoder": {"0": added("<unk>"), "1": added("<s>"), "2": added("</s>"),
                                     str(image_id): added("<image>"), str(pad_id): added("<pad>")},
            "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
            "legacy": False, "model_max_length": 4096, "pad_token": "<pad>", "padding_side": "left",
            "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>", "use_default_system_prompt": False,
        },
        "special_tokens_map.json": special,
        "preprocessor_config.json": {
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD,
            "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": IMAGE_SIZE},
        },
        "processor_config.json": {
            "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": PATCH,
            "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default",
        },
    }


def model_config(vocab: int, image_id: int, pad_id: int, text_layers: int = 2, vision_hidden: int = 64) -> dict:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": image_id,
        "image_seq_length": NUM_PATCHES,
        "model_type": "llava",
        "pad_token_id": pad_id,
        "projector_hidden_act": "gelu",
        "text_config": {
            "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 384,
            "max_position_embeddings": 512, "model_type": "llama", "num_attention_heads": 4,
            "num_hidden_layers": text_layers, "rms_norm_eps": 1e-05, "vocab_size": vocab,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": pad_id,
        },
        "tie_word_embeddings": False,
        "vision_config": {
            "hidden_size": vision_hidden, "image_size": IMAGE_SIZE, "intermediate_size": 4 * vision_hidden,
            "model_type": "clip_vision_model", "num_attention_heads": 4, "num_hidden_layers": 4,
            "patch_size": PATCH, "projection_dim": vision_hidden,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
    }


