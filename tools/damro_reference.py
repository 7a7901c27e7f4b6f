"""A readable reference of DAMRO decoding (EMNLP 2024, arXiv 2410.04514), on top of HF transformers models.

Three parts:
  * `damro_generate`: the decoding loop (plain or DAMRO, greedy or sampled), two branches,
    each with its own KV cache and its own contiguous positions.
  * LLaVA-1.5 branch building: [CLS] scores from the full-width q/k of vision layer [-2],
    top-k outliers, the image placeholder replaced by 576 (full) or k (outlier) projected features.
  * InstructBLIP branch building: per-head [CLS] attention of vision layer [-2] (fused qkv),
    mean over heads, top-k; the k gathered image tokens go through the Q-Former
    (reference indexing `idx`, corrected `idx + 1`).
"""

from __future__ import annotations

import math

import torch
from transformers import DynamicCache

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
def damro_generate(
    lm,
    full_embeds: torch.Tensor,
    outlier_embeds: torch.Tensor | None,
    *,
    alpha: float,
    beta: float,
    max_new_tokens: int,
    eos_id: int,
    mode: str = "damro",
    sample: bool = False,
    trace: list | None = None,
) -> list[int]:
    """Generate new token ids (EOS included if produced).

    lm: a HF causal LM (e.g. LlamaForCausalLM) that accepts `inputs_embeds`.
    mode "plain": argmax / sample of the full branch's raw logits (no logits processors).
    mode "damro": cutoff = ln(beta) + max(l); s = (1+alpha) l - alpha l_o; s[l < cutoff] = -inf.
    sample: torch.multinomial(softmax(s), 1) with the global torch RNG; else argmax (ties: lowest id).
    trace: if a list is given, (l, l_o, s) of every step is appended to it.
    """
    embed_tokens = lm.get_input_embeddings()
    cache_full = DynamicCache(config=lm.config)
    cache_outlier = DynamicCache(config=lm.config)
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
        x_full = x_outlier = embed_tokens(torch.tensor([[token]]))
    return new_tokens


@torch.no_grad()
def contrast_generate(
    lm,
    full_embeds: torch.Tensor,
    second_embeds: torch.Tensor | None,
    *,
    alpha: float,
    beta: float,
    max_new_tokens: int,
    eos_id: int,
    sample: bool = False,
    trace: list | None = None,
) -> list[int]:
    """The same sampler as `damro_generate`, for any second branch (VCD's noised image, the
    prompt without image, ...), or for the cutoff alone.

    second_embeds given: cutoff = ln(beta) + max(l) (ln(beta) in f32); s = (1+alpha) l - alpha l2;
      s[l < cutoff] = -inf; the second branch has its own cache and its own positions.
    second_embeds None ("cutoff only"): s = l with l < cutoff removed; no second forward runs and
      alpha is not used.
    Greedy argmax (ties: lowest id) or torch.multinomial(softmax(s), 1) with the global RNG.
    trace: if a list is given, (l, l2 or None, s) of every step is appended to it.
    """
    embed_tokens = lm.get_input_embeddings()
    cache_full = DynamicCache(config=lm.config)
    cache_second = DynamicCache(config=lm.config)
    log_beta = torch.log(torch.tensor(beta, dtype=torch.float32))
    x_full, x_second = full_embeds, second_embeds
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        l = _next_logits(lm, x_full, cache_full)
        cutoff = log_beta + l.max()
        if second_embeds is None:
            l2, s = None, l
        else:
            l2 = _next_logits(lm, x_second, cache_second)
            s = (1 + alpha) * l - alpha * l2
        s = s.masked_fill(l < cutoff, float("-inf"))
        if sample:
            token = int(torch.multinomial(torch.softmax(s, dim=-1), num_samples=1))
        else:
            token = int(torch.argmax(s))
        if trace is not None:
            trace.append((l, l2, s))
        new_tokens.append(token)
        if token == eos_id:
            break
        x_full = x_second = embed_tokens(torch.tensor([[token]]))
    return new_tokens


# ------------------------------------------------------------------------------------------
# LLaVA-1.5


@torch.no_grad()
def llava_vision(model, pixel_values: torch.Tensor):
    """Returns (cls_scores [1, 576], hidden [1, 577, D]) for a LlavaForConditionalGeneration.

    cls_scores: softmax(q_cls . K^T / sqrt(D)) over all 577 tokens of encoder layers[-2], with
    x = layer_norm1(input of that layer), q = q_proj(x), k = k_proj(x) (full width, biases
    included, no heads), column 0 ([CLS]) dropped.
    hidden: hidden_states[vision_feature_layer = -2] (the output of layers[-2]), [CLS] included.
    """
    tower = model.model.vision_tower
    hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
    layer = tower.encoder.layers[-2]
    x = layer.layer_norm1(hidden_states[-3])  # hidden_states[i] is the input of layers[i]
    q = layer.self_attn.q_proj(x[:, :1])
    k = layer.self_attn.k_proj(x)
    width = q.shape[-1]
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(width), dim=-1)  # [1, 1, 577]
    return attn[:, 0, 1:], hidden_states[-2]


@torch.no_grad()
def llava_branches(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, k: int):
    """Full and outlier input embeddings for a prompt holding one image placeholder id.

    Returns dict with full_embeds, outlier_embeds, outlier_indices (topk order), cls_scores,
    hidden, projected (all 576 features through the projector).
    """
    cls_scores, hidden = llava_vision(model, pixel_values)
    features = hidden[:, 1:]  # strategy "default": drop [CLS]
    outlier_indices = torch.topk(cls_scores[0], k).indices  # descending score
    projector = model.model.multi_modal_projector
    projected = projector(features)
    projected_outliers = projector(features[:, outlier_indices])

    embeds = model.get_input_embeddings()(input_ids)
    (pos,) = (input_ids[0] == model.config.image_token_index).nonzero()[:, 0].tolist()
    before, after = embeds[:, :pos], embeds[:, pos + 1 :]
    return {
        "full_embeds": torch.cat([before, projected, after], dim=1),
        "outlier_embeds": torch.cat([before, projected_outliers, after], dim=1),
        "outlier_indices": outlier_indices,
        "cls_scores": cls_scores,
        "hidden": hidden,
        "projected": projected,
    }


# ------------------------------------------------------------------------------------------
# InstructBLIP


@torch.no_grad()
def instructblip_vision(model, pixel_values: torch.Tensor):
    """Returns (cls_scores [1, 256], image_embeds [1, 257, D]).

    cls_scores: per-head softmax(q k^T / sqrt(head_dim)) of vision layers[-2] from its fused qkv
    (bias = q_bias, 0, v_bias), mean over heads, [CLS] row, column 0 dropped.
    image_embeds: the vision model's final (post-LayerNorm) output.
    """
    vision = model.vision_model
    out = vision(pixel_values, output_hidden_states=True)
    layer = vision.encoder.layers[-2]
    x = layer.layer_norm1(out.hidden_states[-3])  # the input of layers[-2]
    batch, n, width = x.shape
    heads = layer.self_attn.num_heads
    qkv = layer.self_attn.qkv(x).reshape(batch, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # [1, heads, n, head_dim]
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
    return attn.mean(dim=1)[:, 0, 1:], out.last_hidden_state


@torch.no_grad()
def instructblip_prefix(model, image_embeds: torch.Tensor, qformer_ids: torch.Tensor):
    """Q-Former over `image_embeds` (all-ones mask) with the query tokens and the Q-Former text.

    Returns (language_projection(query outputs) [1, nq, H], query outputs [1, nq, Dq]).
    """
    queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    nq = queries.shape[1]
    attention_mask = torch.ones(1, nq + qformer_ids.shape[1], dtype=torch.long)
    out = model.qformer(
        input_ids=qformer_ids,
        attention_mask=attention_mask,
        query_embeds=queries,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
    )
    query_output = out.last_hidden_state[:, :nq]
    return model.language_projection(query_output), query_output


@torch.no_grad()
def instructblip_branches(
    model, llm_ids: torch.Tensor, qformer_ids: torch.Tensor, pixel_values: torch.Tensor, k: int, indexing: str
):
    """indexing "reference": image_embeds[:, idx] (one before each outlier patch; 0 is [CLS]);
    "corrected": image_embeds[:, idx + 1]."""
    cls_scores, image_embeds = instructblip_vision(model, pixel_values)
    outlier_indices = torch.topk(cls_scores[0], k).indices
    rows = outlier_indices if indexing == "reference" else outlier_indices + 1
    prefix_full, query_full = instructblip_prefix(model, image_embeds, qformer_ids)
    prefix_outlier, _ = instructblip_prefix(model, image_embeds[:, rows], qformer_ids)
    text = model.get_input_embeddings()(llm_ids)
    return {
        "full_embeds": torch.cat([prefix_full, text], dim=1),
        "outlier_embeds": torch.cat([prefix_outlier, text], dim=1),
        "outlier_indices": outlier_indices,
        "cls_scores": cls_scores,
        "image_embeds": image_embeds,
        "projected": prefix_full,
        "qformer": query_full,
    }


def instructblip_bos_for_decode(text_config) -> int:
    """The BOS id the reference prepends before decoding (HF 4.x InstructBLIP generate)."""
    if (text_config.architectures or [""])[0] == "LLaMAForCausalLM":
        return 2
    return text_config.bos_token_id


# ------------------------------------------------------------------------------------------
# VCD (Leng et al., CVPR 2024): the second branch's pixels noised by a diffusion forward step


def vcd_schedule(steps: int = 1000) -> torch.Tensor:
    """abar = cumprod(1 - betas), betas = sigmoid(linspace(-6, 6, steps)) * (5e-3 - 1e-5) + 1e-5 (f32)."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps)) * (0.5e-2 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def vcd_noise(pixels: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """x_t = sqrt(abar[t]) x + sqrt(1 - abar[t]) n, n = randn_like(x) drawn right after
    torch.manual_seed(seed), all f32 on the CPU."""
    x = pixels.float().cpu()
    abar = vcd_schedule()
    torch.manual_seed(seed)
    noise = torch.randn_like(x)
    return torch.sqrt(abar[step]) * x + torch.sqrt(1 - abar[step]) * noise
