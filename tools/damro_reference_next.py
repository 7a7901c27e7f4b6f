"""A readable reference of DAMRO's LLaVA-NeXT branch (EMNLP 2024, arXiv 2410.04514).

The DAMRO authors run LLaVA-NeXT (llava-hf/llava-v1.6-vicuna-7b-hf) as HF transformers 4.43's
`LlavaNextForConditionalGeneration` plus their DAMRO additions. This file spells out what that
computes, on top of a 4.43 model object (see /work/shared/DAMRO.md, "LLaVA-NeXT"):

  * `vision`: every tile of the anyres input through the CLIP tower as ONE batch; per tile the
    features of `vision_feature_layer` (-2) without [CLS], and the DAMRO [CLS] scores of encoder
    layers[-2] (single head over the full hidden width, as for LLaVA-1.5).
  * `pack_full`: the full branch's image tokens: the base tile's 576 tokens first (no newline),
    then the grid feature map un-padded back to the image's aspect ratio (4.43's float32
    arithmetic) with `image_newline` after every row. Transformers 4.43 lays non-square grids out
    with rows and columns swapped (`layout="transformers_4_43"`, the default); 4.44 fixed it
    (`layout="corrected"`).
  * `contrast_tokens`: the outlier branch's image tokens: top-k of the BASE tile's [CLS] scores,
    those k features in top-k order, projected, then one `image_newline` (k + 1 tokens).
  * `damro_generate`: the decoding loop (plain or DAMRO, greedy or sampled) with two KV caches;
    a generated `<image>` id is embedded as id 0 on the next step, as 4.43's LLaVA-NeXT forward
    does (`for_inputs_embeds_ids[input_ids == image_token_index] = 0`).

Written for transformers 4.43 (`DynamicCache()` without arguments). The preprocessing reference
is 4.43's own `LlavaNextImageProcessor` (PIL backend), which the authors ran.
"""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache
from transformers.image_processing_utils import select_best_resolution

LAYOUTS = ("transformers_4_43", "corrected")

# ------------------------------------------------------------------------------------------
# vision


@torch.no_grad()
def vision(model, pixel_values: torch.Tensor):
    """All tiles in one batch. Returns (cls_scores [T, 576], features [T, 576, D]).

    pixel_values: [T, 3, 336, 336], the base tile first (as the processor returns them for one image).
    cls_scores: softmax(q_cls . K^T / sqrt(D)) over all 577 tokens of encoder layers[-2], with
    x = layer_norm1(input of that layer), q = q_proj(x), k = k_proj(x) (full width, biases,
    no heads), column 0 ([CLS]) dropped; one row per tile.
    features: hidden_states[vision_feature_layer] without [CLS] (strategy "default").
    """
    tower = model.vision_tower
    hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
    layer = tower.vision_model.encoder.layers[-2]
    x = layer.layer_norm1(hidden_states[-3])  # hidden_states[i] is the input of layers[i]
    q = layer.self_attn.q_proj(x[:, :1])
    k = layer.self_attn.k_proj(x)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # [T, 1, 577]
    features = hidden_states[model.config.vision_feature_layer][:, 1:]
    return attn[:, 0, 1:], features


# ------------------------------------------------------------------------------------------
# full branch


def grid_shape(image_size_hw, pinpoints, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles for an image of (height, width): the pinpoint the processor picked."""
    height, width = select_best_resolution(tuple(int(v) for v in image_size_hw), pinpoints)
    return height // tile, width // tile


def unpad(feature: torch.Tensor, image_size_hw: torch.Tensor) -> torch.Tensor:
    """Crop the feature map [D, H, W] back to the image's aspect ratio, in 4.43's arithmetic.

    `image_size_hw` is a row of the processor's int64 `image_sizes`, so the ratios are float32
    tensors: the comparison runs in float32, `new = int(f32(orig) * f32(cur) / f32(orig_other))`
    truncates, and the symmetric crop `[pad : cur - pad]` with `pad = (cur - new) // 2` keeps one
    extra row (column) when `cur - new` is odd.
    """
    orig_h, orig_w = image_size_hw  # 0-dim int64 tensors
    cur_h, cur_w = feature.shape[1:]
    if orig_w / orig_h > cur_w / cur_h:  # f32 tensor against a Python float: compared in f32
        new_h = int(orig_h * (cur_w / orig_w))
        pad = (cur_h - new_h) // 2
        return feature[:, pad : cur_h - pad, :]
    new_w = int(orig_w * (cur_h / orig_h))
    pad = (cur_w - new_w) // 2
    return feature[:, :, pad : cur_w - pad]


def pack_full(tiles: torch.Tensor, image_size_hw: torch.Tensor, newline: torch.Tensor, pinpoints,
              tile: int, layout: str = "transformers_4_43") -> torch.Tensor:
    """The full branch's image tokens [N, H] from per-tile tokens [T, 576, H] (base tile first).

    The grid tiles come in raster order (row by row). With R rows and C columns of tiles,
    4.43 reshapes them as if there were C rows of R tiles (`view(C, R, 24, 24, H)`); the corrected
    layout uses `view(R, C, 24, 24, H)`. The feature map is un-padded, `newline` is appended as an
    extra column, and the map is read row by row.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    base, grid = tiles[0], tiles[1:]
    side = math.isqrt(base.shape[0])
    rows, cols = grid_shape(image_size_hw.tolist(), pinpoints, tile)
    map_rows, map_cols = (cols, rows) if layout == "transformers_4_43" else (rows, cols)
    feature = grid.reshape(map_rows, map_cols, side, side, -1)
    feature = feature.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # [H, map_rows*24, map_cols*24]
    feature = unpad(feature, image_size_hw)
    column = newline[:, None, None].expand(*feature.shape[:-1], 1).to(feature.dtype)
    feature = torch.cat([feature, column], dim=-1).flatten(1, 2).transpose(0, 1)
    return torch.cat([base, feature], dim=0)


def pack_index(num_tiles: int, patches: int, image_size_hw: torch.Tensor, pinpoints, tile: int,
               layout: str) -> torch.Tensor:
    """`pack_full` applied to token numbers: entry i is `t * patches + p` for the token of tile t
    (0 = base), patch p, or -1 for `image_newline` (int64 [N])."""
    numbers = torch.arange(num_tiles * patches, dtype=torch.float64).reshape(num_tiles, patches, 1)
    packed = pack_full(numbers, image_size_hw, torch.tensor([-1.0], dtype=torch.float64), pinpoints,
                       tile, layout)
    return packed[:, 0].to(torch.int64)


# ------------------------------------------------------------------------------------------
# branches


@torch.no_grad()
def contrast_tokens(model, features: torch.Tensor, cls_scores: torch.Tensor, k: int):
    """The outlier branch's image tokens [k + 1, H] and the base tile's top-k indices.

    Scores and top-k exist for every tile, but only the base tile's (row 0) k features are kept,
    in top-k order (descending score); they go through the projector and one `image_newline`
    follows. No un-padding, `image_sizes` is not used.
    """
    indices = torch.topk(cls_scores[0], k).indices
    projected = model.multi_modal_projector(features[0, indices])
    return torch.cat([projected, model.image_newline[None].to(projected.dtype)], dim=0), indices


@torch.no_grad()
def branches(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_size_hw: torch.Tensor,
             k: int, layout: str = "transformers_4_43"):
    """Full and outlier input embeddings for a prompt holding one `<image>` id (batch 1)."""
    cls_scores, features = vision(model, pixel_values)
    projected = model.multi_modal_projector(features)
    cfg = model.config
    full_tokens = pack_full(projected, image_size_hw, model.image_newline, cfg.image_grid_pinpoints,
                            cfg.vision_config.image_size, layout)
    outlier_tokens, outlier_indices = contrast_tokens(model, features, cls_scores, k)
    embeds = model.get_input_embeddings()(input_ids)
    (pos,) = (input_ids[0] == cfg.image_token_index).nonzero()[:, 0].tolist()
    before, after = embeds[:, :pos], embeds[:, pos + 1 :]
    return {
        "full_embeds": torch.cat([before, full_tokens[None], after], dim=1),
        "outlier_embeds": torch.cat([before, outlier_tokens[None], after], dim=1),
        "full_tokens": full_tokens,
        "outlier_tokens": outlier_tokens,
        "outlier_indices": outlier_indices,
        "cls_scores": cls_scores,
        "features": features,
    }


# ------------------------------------------------------------------------------------------
# decoding


@torch.no_grad()
def _next_logits(lm, embeds: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Feed `embeds` [1, n, H] after what `cache` holds; positions continue from the cache length."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + embeds.shape[1]).unsqueeze(0)
    out = lm(inputs_embeds=embeds, past_key_values=cache, position_ids=positions, use_cache=True)
    return out.logits[0, -1].float()


@torch.no_grad()
def damro_generate(model, full_embeds: torch.Tensor, outlier_embeds: torch.Tensor | None, *,
                   alpha: float, beta: float, max_new_tokens: int, eos_id: int, mode: str = "damro",
                   sample: bool = False, trace: list | None = None) -> list[int]:
    """New token ids (EOS included if produced) of a LlavaNextForConditionalGeneration (4.43).

    mode "plain": argmax / sample of the full branch's raw logits (no logits processors).
    mode "damro": cutoff = ln(beta) + max(l) (f32); s = (1+alpha) l - alpha l_o; s[l < cutoff] = -inf.
    sample: torch.multinomial(softmax(s), 1) with the global torch RNG; else argmax (ties: lowest id).
    The chosen token is fed to both branches; `<image>` is embedded as id 0.
    trace: if a list is given, (l, l_o, s) of every step is appended to it.
    """
    lm = model.language_model
    embed_tokens = model.get_input_embeddings()
    image_id = model.config.image_token_index
    cache_full, cache_outlier = DynamicCache(), DynamicCache()
    log_beta = torch.log(torch.tensor(beta, dtype=torch.float32))
    x_full, x_outlier = full_embeds, outlier_embeds
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        l = _next_logits(lm, x_full, cache_full)
        if mode == "plain":
            l_o, s = None, l
        else:
            l_o = _next_logits(lm, x_outlier, cache_outlier)
            cutoff = log_beta + l.max()
            s = (1 + alpha) * l - alpha * l_o
            s = s.masked_fill(l < cutoff, float("-inf"))
        if sample:
            token = int(torch.multinomial(torch.softmax(s, dim=-1), num_samples=1))
        else:
            token = int(torch.argmax(s))
        if trace is not None:
            trace.append((l, l_o, s))
        new_tokens.append(token)
        if token == eos_id:
            break
        x_full = x_outlier = embed_tokens(torch.tensor([[0 if token == image_id else token]]))
    return new_tokens
