"""Hashes of HF processor outputs for config variants the main fixtures do not cover.

Writes tests/fixtures/preprocess_variants.json.
Test: crates/damro-vision/tests/preprocess_variants.rs.

Run with the fixture environment (Pillow 13.0.0, transformers 5.23.0, torch 2.13.0,
torchvision 0.28.0; see tools/requirements-fixtures.txt):
    tools/.venv/bin/python tools/make_preprocess_variant_fixtures.py

Each case runs one HF 5.23 image processor class (PIL backend `*Pil` or the
torchvision backend) built from a config dict on one of tests/fixtures/images/*.png
opened with PIL, and records the output shape and the FNV-1a 64 hash of the f32
little-endian bytes of `pixel_values` (plus the first values, to help debugging).
Variants: LLaVA's pad-to-square (`LlavaImageProcessor`, `do_pad`), centre crops
larger than the image (odd padding, where the two backends place the image
differently), rescale without normalise and normalise without rescale,
shortest+longest edge, and an odd square BLIP size.
"""

import json
import pathlib

import numpy as np
import torch
from PIL import Image
from transformers.models.blip.image_processing_blip import BlipImageProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_clip import CLIPImageProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_llava import LlavaImageProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

MASK = (1 << 64) - 1
CLASSES = {
    ("CLIPImageProcessor", "pil"): CLIPImageProcessorPil,
    ("CLIPImageProcessor", "torchvision"): CLIPImageProcessor,
    ("LlavaImageProcessor", "pil"): LlavaImageProcessorPil,
    ("LlavaImageProcessor", "torchvision"): LlavaImageProcessor,
    ("BlipImageProcessor", "pil"): BlipImageProcessorPil,
    ("BlipImageProcessor", "torchvision"): BlipImageProcessor,
}
IMAGES = ["wide_rgb", "tall_rgba", "small_grey"]
CONFIGS = {
    "llava_pad": {"image_processor_type": "LlavaImageProcessor", "do_pad": True,
                  "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
    "clip_crop_pads": {"image_processor_type": "CLIPImageProcessor",
                       "size": {"shortest_edge": 101}, "crop_size": {"height": 131, "width": 157}},
    "clip_rescale_only": {"image_processor_type": "CLIPImageProcessor", "do_normalize": False,
                          "size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}},
    "clip_normalize_only": {"image_processor_type": "CLIPImageProcessor", "do_rescale": False,
                            "size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}},
    "clip_shortest_longest": {"image_processor_type": "CLIPImageProcessor", "do_center_crop": False,
                              "size": {"shortest_edge": 200, "longest_edge": 250}},
    "blip_odd_square": {"image_processor_type": "BlipImageProcessor", "size": 97},
}


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def main():
    root = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    torch.set_num_threads(1)
    cases = []
    for name, cfg in CONFIGS.items():
        for backend in ["pil", "torchvision"]:
            kwargs = {k: v for k, v in cfg.items() if k != "image_processor_type"}
            processor = CLASSES[(cfg["image_processor_type"], backend)](**kwargs)
            for img in IMAGES:
                image = Image.open(root / "images" / f"{img}.png")
                pv = processor(images=image, return_tensors="pt")["pixel_values"]
                arr = np.ascontiguousarray(pv.numpy().astype(np.float32))
                cases.append({
                    "config": name, "backend": backend, "image": img,
                    "shape": list(arr.shape),
                    "fnv1a64": f"{fnv1a64(arr.tobytes()):016x}",
                    "first": [float(x) for x in arr.reshape(-1)[:4]],
                })
    out = {"generator": "tools/make_preprocess_variant_fixtures.py", "configs": CONFIGS, "cases": cases}
    (root / "preprocess_variants.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
