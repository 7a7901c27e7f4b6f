"""Reference fixtures for the contrast views besides DAMRO: VCD noise, no image, cutoff only.

    tools/.venv/bin/python tools/make_contrast_views.py   (the venv of tools/requirements-fixtures.txt)

Reads the tiny hub models and the recorded PIL pixel values of tests/fixtures/{llava,instructblip}
(made by tools/make_fixtures.py; nothing there is changed) and writes
tests/fixtures/contrast_views/{reference.json,reference.safetensors} (see tests/fixtures/README.md):
  * VCD noised pixel values from the spec formula (`damro_reference.vcd_noise`),
  * the first-step logits of the no-image second branch, from HF's language-model forward,
  * generation cases for VCD, no image and cutoff only, greedy and seeded sampling, with the
    readable reference decoder `damro_reference.contrast_generate`, and their margins.
Deterministic: one CPU thread, eager attention, fixed seeds (the first candidates whose margins hold).
"""

from __future__ import annotations

import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import PIL  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import InstructBlipForConditionalGeneration, LlavaForConditionalGeneration  # noqa: E402

import damro_reference as ref  # noqa: E402
from fixture_runner import max_abs_diff, save_reference  # noqa: E402
from fixtures_common import MarginError, check_margins, min_margins, step_margins, write_json  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(HERE), "tests", "fixtures")
OUT = os.path.join(FIXTURES, "contrast_views")

MAX_NEW_TOKENS = 10
MIN_TOKENS = 4  # a case must generate at least this many tokens (EOS included) to be kept
ALPHA, BETA = 1.0, 0.1  # VCD's scripts; also used for no image
NOISE_STEP = 500  # VCD's default
FIRST_NOISE_SEED = 7
FIRST_SAMPLE_SEED = 42
# (step, seed) pairs checked on their own, besides the ones the VCD cases use: the last step
EXTRA_NOISE = [("llava", "small_grey", 999, 123), ("instructblip", "tall_rgba", 999, 123)]
# every NOISE_STRIDE-th value of the flattened noised pixels is stored (whole tensors would take
# 1.35 MB per 336 px image and 0.6 MB per 224 px one); the noise is still drawn for the whole tensor
NOISE_STRIDE = {"llava": 7, "instructblip": 3}

# candidate (image, prompt) pairs per family, tried in this order
CANDIDATES = {
    "llava": [("wide_rgb", "pope_dog"), ("small_grey", "describe"), ("tall_rgba", "describe"),
              ("wide_rgb", "describe"), ("tall_rgba", "pope_umbrella"), ("small_grey", "pope_dog")],
    "instructblip": [("wide_rgb", "pope_dog"), ("small_grey", "describe"), ("tall_rgba", "describe"),
                     ("wide_rgb", "describe"), ("small_grey", "pope_dog"), ("tall_rgba", "pope_dog")],
}
VIEWS = ["vcd", "no-image", "cutoff-only"]


# ------------------------------------------------------------------------------------------
# models and branches


class Family:
    """One tiny hub model with its recorded prompts, pixel values and tokenizer."""

    def __init__(self, name: str):
        self.name = name
        root = os.path.join(FIXTURES, name)
        with open(os.path.join(root, "reference.json"), encoding="utf-8") as f:
            self.doc = json.load(f)
        self.tensors = load_file(os.path.join(root, "reference.safetensors"))
        self.model_dir = os.path.join(root, self.doc["models"]["hub"]["dir"])
        cls = LlavaForConditionalGeneration if name == "llava" else InstructBlipForConditionalGeneration
        self.model = cls.from_pretrained(self.model_dir, attn_implementation="eager", dtype=torch.float32).eval()
        self.lm = self.model if name == "llava" else self.model.language_model
        self.tok = Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
        self.eos = self.doc["tokens"]["eos"]
        self.decode_bos = [] if name == "llava" else [ref.instructblip_bos_for_decode(self.model.config.text_config)]

    def pixels(self, image: str) -> torch.Tensor:
        return self.tensors[f"pixel_values/pil/{image}"]

    def prompt(self, prompt: str) -> dict:
        return self.doc["prompts"][prompt]

    def decode(self, new: list[int]) -> str:
        return self.tok.decode(self.decode_bos + new, skip_special_tokens=True).strip()

    @torch.no_grad()
    def full_embeds(self, prompt: str, pixels: torch.Tensor) -> torch.Tensor:
        """The full branch's input: the prompt with the image's tokens (LLaVA: spliced at the
        placeholder; InstructBLIP: the projected Q-Former queries before the prompt)."""
        p = self.prompt(prompt)
        ids = torch.tensor([p["ids_as_written"]])
        if self.name == "llava":
            return ref.llava_branches(self.model, ids, pixels, 1)["full_embeds"]
        qids = torch.tensor([p["qformer_ids_as_written"]])
        return ref.instructblip_branches(self.model, ids, qids, pixels, 1, "reference")["full_embeds"]

    def no_image_ids(self, prompt: str) -> list[int]:
        """LLaVA: the prompt ids without the one image placeholder; InstructBLIP: the LLM ids."""
        ids = self.prompt(prompt)["ids_as_written"]
        if self.name == "llava":
            image_id = self.doc["tokens"]["image"]
            assert ids.count(image_id) == 1
            return [i for i in ids if i != image_id]
        return list(ids)

    @torch.no_grad()
    def no_image_embeds(self, prompt: str) -> torch.Tensor:
        return self.lm.get_input_embeddings()(torch.tensor([self.no_image_ids(prompt)]))

    @torch.no_grad()
    def hf_no_image_logits(self, prompt: str) -> torch.Tensor:
        """Last-position logits of HF's own forward on the no-image ids (no pixel values)."""
        ids = torch.tensor([self.no_image_ids(prompt)])
        return self.lm(input_ids=ids).logits[0, -1].float()


# ------------------------------------------------------------------------------------------
# cases


def second_embeds(fam: Family, view: str, prompt: str, image: str, noise_seed: int | None):
    if view == "vcd":
        noised = ref.vcd_noise(fam.pixels(image), NOISE_STEP, noise_seed)
        return fam.full_embeds(prompt, noised)
    if view == "no-image":
        return fam.no_image_embeds(prompt)
    return None  # cutoff only: no second branch


def run_case(fam: Family, view: str, image: str, prompt: str, noise_seed, sample_seed) -> dict:
    """One case with the reference decoder; raises MarginError when a margin is too small.
    The VCD noise is drawn before the sampling seed is set, as the Rust loop does."""
    full = fam.full_embeds(prompt, fam.pixels(image))
    second = second_embeds(fam, view, prompt, image, noise_seed)
    alpha = 0.0 if view == "cutoff-only" else ALPHA
    trace: list = []
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
    new = ref.contrast_generate(fam.lm, full, second, alpha=alpha, beta=BETA, max_new_tokens=MAX_NEW_TOKENS,
                                eos_id=fam.eos, sample=sample_seed is not None, trace=trace)
    q = None
    if sample_seed is not None:
        # torch.multinomial(p, 1) = argmax(p / q), q ~ Exp(1) from the global generator: replay
        torch.manual_seed(sample_seed)
        q = [torch.empty_like(s).exponential_(1) for (_, _, s) in trace]
        for (_, _, s), qi, tok in zip(trace, q, new):
            if int(torch.argmax(torch.softmax(s, -1) / qi)) != tok:
                raise RuntimeError("multinomial replay does not match")
    steps = step_margins(trace, "damro", BETA, q)
    mins = min_margins(steps, sample_seed is not None)
    name = f"{fam.name}_{view.replace('-', '_')}_{'sample' if sample_seed is not None else 'greedy'}_{prompt}_{image}"
    check_margins(name, mins)
    if len(new) < MIN_TOKENS:
        raise MarginError(f"{name}: only {len(new)} tokens")
    p = fam.prompt(prompt)
    case = {
        "name": name,
        "family": fam.name,
        "model": os.path.relpath(fam.model_dir, OUT),
        "image": image,
        "prompt": prompt,
        "question": p["question"],
        "template": "llava_v1" if fam.name == "llava" else "raw question",
        "prompt_ids": p["ids_as_written"],
        "view": view,
        "decoding": "sample" if sample_seed is not None else "greedy",
        "seed": sample_seed,
        "alpha": alpha,
        "beta": BETA,
        "noise_step": NOISE_STEP if view == "vcd" else None,
        "noise_seed": noise_seed,
        "max_new_tokens": MAX_NEW_TOKENS,
        "generated_ids": new,
        "ended_on_eos": bool(new and new[-1] == fam.eos),
        "text": fam.decode(new),
        "full_len": int(full.shape[1]),
        "second_len": int(second.shape[1]) if second is not None else None,
        "steps_changed_by_contrast": [i for i, (l, _, s) in enumerate(trace)
                                      if int(torch.argmax(l)) != int(torch.argmax(s))],
        "min_margins": mins,
        "step_margins": steps,
        "_logits_full_step0": trace[0][0].clone(),
    }
    if second is not None:
        case["_logits_second_step0"] = trace[0][1].clone()
    return case


def search_case(fam: Family, view: str, sample: bool) -> dict:
    """The first candidate (image, prompt, noise seed, sampling seed) whose margins hold; greedy
    VCD / no-image cases must also change at least one token against plain greedy."""
    noise_seeds = range(FIRST_NOISE_SEED, FIRST_NOISE_SEED + 4) if view == "vcd" else [None]
    sample_seeds = range(FIRST_SAMPLE_SEED, FIRST_SAMPLE_SEED + 4) if sample else [None]
    for image, prompt in CANDIDATES[fam.name]:
        for noise_seed in noise_seeds:
            for sample_seed in sample_seeds:
                try:
                    case = run_case(fam, view, image, prompt, noise_seed, sample_seed)
                except MarginError as e:
                    print(f"    rejected: {e}")
                    continue
                if not sample and view != "cutoff-only" and not case["steps_changed_by_contrast"]:
                    print(f"    rejected: {case['name']} (noise seed {noise_seed}): the contrast changes nothing")
                    continue
                mins = ", ".join(f"{k} {v:.2e}" for k, v in case["min_margins"].items())
                print(f"  {case['name']}: {len(case['generated_ids'])} tokens"
                      f"{' (EOS)' if case['ended_on_eos'] else ''}; min margins {mins}")
                return case
    raise SystemExit(f"{fam.name} {view} sample={sample}: no candidate with comfortable margins")


# ------------------------------------------------------------------------------------------
# noise and no-image records


def noise_record(fam: Family, image: str, step: int, seed: int, tensors: dict) -> dict:
    x = fam.pixels(image)
    noised = ref.vcd_noise(x, step, seed)
    stride = NOISE_STRIDE[fam.name]
    key = f"vcd_noise/{fam.name}/{image}/t{step}_s{seed}"
    tensors[key] = noised.flatten()[::stride].clone() if stride > 1 else noised
    abar = ref.vcd_schedule()
    return {
        "family": fam.name,
        "image": image,
        "input": f"{fam.name}/reference.safetensors: pixel_values/pil/{image}",
        "shape": list(x.shape),
        "step": step,
        "seed": seed,
        "key": key,
        "stride": stride,
        "sqrt_abar": float(torch.sqrt(abar[step])),
        "sqrt_one_minus_abar": float(torch.sqrt(1 - abar[step])),
    }


def no_image_record(fam: Family, prompt: str, tensors: dict) -> dict:
    hf = fam.hf_no_image_logits(prompt)
    trace: list = []
    ref.contrast_generate(fam.lm, fam.no_image_embeds(prompt), None, alpha=0.0, beta=1.0, max_new_tokens=1,
                          eos_id=fam.eos, trace=trace)
    diff = max_abs_diff(hf, trace[0][0])
    if diff > 1e-5:
        raise RuntimeError(f"{fam.name} {prompt}: HF forward vs reference loop differ by {diff}")
    key = f"no_image/{fam.name}/{prompt}/logits_step0"
    tensors[key] = hf
    top2 = torch.topk(hf.double(), 2).values
    return {
        "family": fam.name,
        "prompt": prompt,
        "question": fam.prompt(prompt)["question"],
        "prompt_ids": fam.prompt(prompt)["ids_as_written"],
        "second_ids": fam.no_image_ids(prompt),
        "key": key,
        "hf_call": "LlavaForConditionalGeneration(input_ids=second_ids)" if fam.name == "llava"
        else "InstructBlipForConditionalGeneration.language_model(input_ids=second_ids)",
        "max_abs_diff_vs_reference_loop": diff,
        "logit_scale": float(hf.abs().max()),
        "rel_top2_gap": float((top2[0] - top2[1]) / hf.abs().max()),
    }


def check_loaded_model(fam: Family) -> float:
    """The model loaded from disk reproduces a recorded full-branch logit vector of the family."""
    case = next(c for c in fam.doc["cases"] if c["name"] == "hub_plain_pope_dog_wide")
    trace: list = []
    ref.contrast_generate(fam.lm, fam.full_embeds(case["prompt"], fam.pixels(case["image"])), None,
                          alpha=0.0, beta=1.0, max_new_tokens=1, eos_id=fam.eos, trace=trace)
    recorded = fam.tensors["cases/hub_plain_pope_dog_wide/logits_full_step0"]
    diff = max_abs_diff(trace[0][0], recorded)
    # the recorded logits came from another CPU (see the family's README section): f32 noise only
    if diff > 1e-5 * max(1.0, float(recorded.abs().max())):
        raise RuntimeError(f"{fam.name}: loaded model differs from the recorded logits by {diff}")
    return {"max_abs_diff": diff, "logit_scale": float(recorded.abs().max())}


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tensors: dict[str, torch.Tensor] = {}
    noise, no_image, cases, checks = [], [], [], {}
    for name in ["llava", "instructblip"]:
        print(f"== {name}")
        fam = Family(name)
        checks[f"{name}_loaded_model_vs_recorded_logits"] = check_loaded_model(fam)
        for prompt in fam.doc["prompts"]:
            no_image.append(no_image_record(fam, prompt, tensors))
        fam_cases = [search_case(fam, view, sample) for view in VIEWS for sample in (False, True)]
        pairs = {(c["image"], c["noise_step"], c["noise_seed"]) for c in fam_cases if c["view"] == "vcd"}
        pairs |= {(img, step, seed) for f, img, step, seed in EXTRA_NOISE if f == name}
        for image, step, seed in sorted(pairs):
            noise.append(noise_record(fam, image, step, seed, tensors))
        for c in fam_cases:
            tensors[f"cases/{c['name']}/logits_full_step0"] = c.pop("_logits_full_step0")
            if "_logits_second_step0" in c:
                tensors[f"cases/{c['name']}/logits_second_step0"] = c.pop("_logits_second_step0")
        cases.extend(fam_cases)
    os.makedirs(OUT, exist_ok=True)
    save_reference(os.path.join(OUT, "reference.safetensors"), tensors)
    doc = {
        "generator": "tools/make_contrast_views.py",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "pillow": PIL.__version__},
        "vcd_schedule": {"steps": 1000, "betas": "sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5",
                         "abar": "cumprod(1 - betas)",
                         "noised": "sqrt(abar[t]) * x + sqrt(1 - abar[t]) * randn_like(x)",
                         "rng": "torch.manual_seed(seed) right before randn_like, f32 CPU"},
        "noise": noise,
        "no_image": no_image,
        "cases": cases,
        "thresholds": {"rel_logit_margin": 1e-3, "min_tokens": MIN_TOKENS},
        "verification": checks,
    }
    write_json(os.path.join(OUT, "reference.json"), doc)
    print("done")


if __name__ == "__main__":
    main()
