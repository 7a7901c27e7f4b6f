"""Running generation cases, checking margins and verifying saved layouts (both families)."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import damro_reference as ref
from fixtures_common import (
    REL_LOGIT_MARGIN,
    SPIECE,
    MarginError,
    check_margins,
    outlier_margin,
    min_margins,
    step_margins,
)

MAX_NEW_TOKENS = 16
SAMPLE_SEED = 42

# lm_head rows: "word" tokens get a wide logit spread, the rest a narrow one, so that only a few
# tokens are ever near the top or the plausibility cutoff (decisive margins).
CANDIDATE_SCALE = 3.0
OTHER_SCALE = 0.25
EOS_SCALE = 3.4


def candidate_tokens(tok, eos_id: int) -> list[int]:
    vocab = tok.get_vocab(with_added_tokens=False)
    ids = [i for t, i in vocab.items() if (t.startswith(SPIECE) and len(t) >= 3) or t in (".", ",")]
    return sorted(set(ids + [eos_id]))


def lm_head_override(param_name: str, candidates: list[int], eos_id: int):
    cand = torch.tensor(candidates)

    def override(name, val, gen):
        if name != param_name:
            return val
        scale = torch.full((val.shape[0], 1), OTHER_SCALE)
        scale[cand] = CANDIDATE_SCALE
        scale[eos_id] = EOS_SCALE
        return val * scale

    return override


def outlier_record(cls_scores: torch.Tensor, k: int) -> dict:
    top = torch.topk(cls_scores[0], k + 1)
    return {
        "k": k,
        "indices": top.indices[:k].tolist(),
        "scores": [float(x) for x in top.values[:k]],
        "next_index": int(top.indices[k]),
        "next_score": float(top.values[k]),
        "min_rel_gap": outlier_margin(cls_scores, k),
    }


def run_case(lm, br: dict, *, name, mode, alpha, beta, sample, eos_id, decode) -> dict:
    """Run one generation case with the reference decoder; record tokens, text and margins."""
    trace: list = []
    if sample:
        torch.manual_seed(SAMPLE_SEED)
    new = ref.damro_generate(
        lm,
        br["full_embeds"],
        br["outlier_embeds"] if mode == "damro" else None,
        alpha=alpha if alpha is not None else 0.0,
        beta=beta if beta is not None else 1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_id=eos_id,
        mode=mode,
        sample=sample,
        trace=trace,
    )
    q = None
    if sample:
        # torch.multinomial(p, 1) draws q ~ Exp(1) (one value per token) and takes argmax(p / q):
        # replay the draws to measure how decisive each sample was.
        torch.manual_seed(SAMPLE_SEED)
        q = [torch.empty_like(s).exponential_(1) for (_, _, s) in trace]
        for (l, l_o, s), qi, tok in zip(trace, q, new):
            if int(torch.argmax(torch.softmax(s, -1) / qi)) != tok:
                raise RuntimeError(f"{name}: multinomial replay does not match")
    steps = step_margins(trace, mode, beta, q)
    mins = min_margins(steps, sample)
    check_margins(name, mins)
    ended = bool(new and new[-1] == eos_id)
    print(f"    {name}: {len(new)} tokens{' (EOS)' if ended else ''}; min margins "
          + ", ".join(f"{k} {v:.2e}" for k, v in mins.items()))
    out = {
        "name": name,
        "mode": mode,
        "decoding": "sample" if sample else "greedy",
        "seed": SAMPLE_SEED if sample else None,
        "alpha": alpha,
        "beta": beta,
        "max_new_tokens": MAX_NEW_TOKENS,
        "generated_ids": new,
        "ended_on_eos": ended,
        "text": decode(new),
        "min_margins": mins,
        "step_margins": steps,
        "_logits_full_step0": trace[0][0].clone(),
    }
    if mode == "damro":
        out["_logits_outlier_step0"] = trace[0][1].clone()
        out["steps_changed_by_contrast"] = [
            i for i, (l, _, s) in enumerate(trace) if int(torch.argmax(l)) != int(torch.argmax(s))
        ]
    return out


def check_case_mix(cases: list[dict], variant: str, want_eos: int = 2, want_full: int = 1) -> None:
    """The primary variant must have cases ending on EOS, cases running to max_new_tokens,
    and at least one DAMRO greedy case that differs from its plain counterpart."""
    if variant != "hub":
        return
    n_eos = sum(c["ended_on_eos"] for c in cases)
    n_full = sum(len(c["generated_ids"]) == MAX_NEW_TOKENS and not c["ended_on_eos"] for c in cases)
    if n_eos < want_eos or n_full < want_full:
        raise MarginError(f"case mix: {n_eos} end on EOS, {n_full} run to {MAX_NEW_TOKENS}")
    if not any(c["mode"] == "damro" and c["decoding"] == "greedy" and c["steps_changed_by_contrast"] for c in cases):
        raise MarginError("no DAMRO greedy case where the contrast changes a token")


def expand_placeholder(ids: list[int], image_id: int, n: int) -> list[int]:
    out = []
    for i in ids:
        out.extend([image_id] * n if i == image_id else [i])
    return out


def safetensors_keys(folder: str) -> list[str]:
    keys = []
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as st:
                keys.extend(st.keys())
    return sorted(keys)


def key_prefixes(keys: list[str]) -> list[str]:
    """Distinct key stems with layer numbers replaced by N (a readable summary of a layout)."""
    import re

    stems = set()
    for k in keys:
        k = re.sub(r"\.(\d+)\.", ".N.", k)
        stems.add(k.rsplit(".", 1)[0] if k.endswith((".weight", ".bias")) else k)
    return sorted(stems)


def save_reference(path: str, tensors: dict[str, torch.Tensor]) -> None:
    out = {k: v.detach().float().contiguous().clone() for k, v in sorted(tensors.items())}
    save_file(out, path, metadata={"format": "pt"})


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


__all__ = [
    "REL_LOGIT_MARGIN",
    "MAX_NEW_TOKENS",
    "candidate_tokens",
    "lm_head_override",
    "outlier_record",
    "run_case",
    "check_case_mix",
    "expand_placeholder",
    "safetensors_keys",
    "key_prefixes",
    "save_reference",
    "max_abs_diff",
    "same_state",
]
