"""Reference outputs of PIL's bicubic resize, for the Rust port's parity test.

Writes tests/fixtures/resize/manifest.json and tests/fixtures/resize/expected.bin.
Test: crates/damro-vision/tests/pil_resize_parity.rs.

Run with (only Pillow is needed, pinned as in tools/requirements-fixtures.txt):
    python3.11 -m venv /tmp/resize-venv && /tmp/resize-venv/bin/pip install pillow==13.0.0
    /tmp/resize-venv/bin/python tools/make_resize_fixtures.py

Source images are not stored: each is generated from a seed by SplitMix64 and
a pattern (below); the Rust test regenerates them the same way. Each case
resizes one source to (width, height) with Image.BICUBIC on mode RGB. Small
outputs are stored in full in expected.bin (at `offset`, `len` bytes); every
case also records the FNV-1a 64 hash of its output bytes, which is all the
large cases keep (to stay well under 1 MB).

Pillow 13 runs the vertical pass first when the height shrinks by more than
twice as many pixels as the width; Pillow 12 and earlier always run the
horizontal pass first. `fnv1a64_pre13` is the hash of the horizontal-first
result, computed here as a horizontal-only resize followed by a vertical-only
one (the same two passes through the same 8-bit intermediate; checked equal
to Pillow 12.3.0's one-call resize on every case with --check-pre13 under
Pillow 12).

Patterns, per pixel (x, y) and channel c, with r the next SplitMix64 output
shifted right by 56 (one byte; drawn for every value in row-major, channel-
minor order, whatever the pattern):
    noise   r
    checker 255 if (x // 4 + y // 4 + c) % 2 == 1 else 0
    smooth  clamp(x * 200 // max(w - 1, 1) + y * 55 // max(h - 1, 1) + r % 9 - 4, 0, 255)
"""

import json
import pathlib

import PIL
from PIL import Image

MASK = (1 << 64) - 1
FULL_LIMIT = 40_000  # outputs up to this many bytes are stored in full


def splitmix64(seed):
    state = seed & MASK
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def make_source(pattern, width, height, seed):
    rng = splitmix64(seed)
    out = bytearray(width * height * 3)
    i = 0
    for y in range(height):
        for x in range(width):
            for c in range(3):
                r = next(rng) >> 56
                if pattern == "noise":
                    v = r
                elif pattern == "checker":
                    v = 255 if (x // 4 + y // 4 + c) % 2 == 1 else 0
                elif pattern == "smooth":
                    v = x * 200 // max(width - 1, 1) + y * 55 // max(height - 1, 1) + r % 9 - 4
                    v = min(max(v, 0), 255)
                else:
                    raise ValueError(pattern)
                out[i] = v
                i += 1
    return bytes(out)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


SOURCES = [
    # name, pattern, width, height, seed
    ("noise_37x23", "noise", 37, 23, 1),
    ("noise_64x48", "noise", 64, 48, 2),
    ("checker_13x200", "checker", 13, 200, 3),
    ("smooth_101x67", "smooth", 101, 67, 4),
    ("noise_1x9", "noise", 1, 9, 5),
    ("noise_500x333", "noise", 500, 333, 6),
    ("smooth_240x400", "smooth", 240, 400, 7),
]

# (source, width, height): up, down, mixed, one axis only, tiny, near-identity.
CASES = [
    ("noise_37x23", 93, 58),
    ("noise_37x23", 12, 7),
    ("noise_37x23", 74, 11),
    ("noise_37x23", 37, 50),
    ("noise_37x23", 19, 23),
    ("noise_37x23", 1, 1),
    ("noise_37x23", 38, 22),
    ("noise_37x23", 36, 24),
    ("noise_64x48", 32, 24),
    ("noise_64x48", 21, 16),
    ("noise_64x48", 7, 5),
    ("noise_64x48", 100, 3),
    ("noise_64x48", 65, 47),
    ("noise_64x48", 1, 48),
    ("checker_13x200", 13, 67),
    ("checker_13x200", 29, 31),
    ("checker_13x200", 5, 333),
    ("checker_13x200", 40, 9),
    ("smooth_101x67", 224, 149),
    ("smooth_101x67", 50, 33),
    ("smooth_101x67", 17, 200),
    ("noise_1x9", 3, 4),
    ("noise_1x9", 1, 20),
    ("noise_1x9", 5, 9),
    # The real preprocessing sizes: LLaVA shortest edge 336, BLIP 224x224.
    ("noise_500x333", 504, 336),
    ("noise_500x333", 224, 224),
    ("noise_500x333", 336, 224),
    ("smooth_240x400", 336, 560),
    ("smooth_240x400", 224, 224),
]


def check_pre13():
    """Under Pillow < 13: the one-call resize equals the two single-axis resizes."""
    bad = 0
    for name, pattern, w0, h0, seed in SOURCES:
        im = Image.frombytes("RGB", (w0, h0), make_source(pattern, w0, h0, seed))
        for src, w, h in CASES:
            if src != name:
                continue
            one = im.resize((w, h), Image.BICUBIC).tobytes()
            two = im.resize((w, h0), Image.BICUBIC).resize((w, h), Image.BICUBIC).tobytes()
            bad += one != two
    print(f"Pillow {PIL.__version__}: {bad} of {len(CASES)} cases differ from two single-axis passes")


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    out_dir = root / "tests" / "fixtures" / "resize"
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, pattern, w, h, seed in SOURCES:
        sources[name] = (pattern, w, h, seed, Image.frombytes("RGB", (w, h), make_source(pattern, w, h, seed)))
    blob = bytearray()
    cases = []
    for name, w, h in CASES:
        im = sources[name][4]
        data = im.resize((w, h), Image.BICUBIC).tobytes()
        pre13 = im.resize((w, im.height), Image.BICUBIC).resize((w, h), Image.BICUBIC).tobytes()
        case = {
            "source": name,
            "width": w,
            "height": h,
            "fnv1a64": f"{fnv1a64(data):016x}",
            "fnv1a64_pre13": f"{fnv1a64(pre13):016x}",
            "differs_pre13": data != pre13 or None,
        }
        if case["differs_pre13"] is None:
            del case["differs_pre13"]
        if len(data) <= FULL_LIMIT:
            case["offset"] = len(blob)
            case["len"] = len(data)
            blob += data
        cases.append(case)
    manifest = {
        "generator": "tools/make_resize_fixtures.py",
        "pillow": PIL.__version__,
        "filter": "BICUBIC",
        "sources": [
            {"name": n, "pattern": p, "width": w, "height": h, "seed": s} for n, (p, w, h, s, _) in sources.items()
        ],
        "cases": cases,
    }
    (out_dir / "expected.bin").write_bytes(bytes(blob))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(cases)} cases, {len(blob)} bytes stored in full")


if __name__ == "__main__":
    import sys

    check_pre13() if "--check-pre13" in sys.argv else main()
