"""PNG files in every colour type / bit depth, with what HF and PIL make of them in RGB.

Writes tests/fixtures/convert/*.png and tests/fixtures/convert/expected.json.
Test: crates/damro-vision/tests/convert_parity.rs.

Run with the fixture environment (Pillow 13.0.0, transformers 5.23.0):
    tools/.venv/bin/python tools/make_convert_fixtures.py

PNGs are written by hand (zlib + chunks) because PIL cannot write 16-bit RGB,
grey+alpha 16-bit or tRNS on every colour type. For each file, expected.json
holds the RGB bytes (hex, row-major) of
    composite: transformers.image_transforms.convert_to_rgb(Image.open(f), return_numpy=True)
               (5.23: RGBA / transparency composited on white; what both processor backends do)
    discard:   Image.open(f).convert("RGB") (transformers 4.43, original LLaVA)
and the mode PIL opened the file as.
"""

import json
import pathlib
import random
import struct
import zlib

import numpy as np
import PIL
from PIL import Image
from transformers.image_transforms import convert_to_rgb

W, H = 9, 7


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path, samples, bit_depth, color_type, palette=None, trns=None):
    """samples: rows of per-pixel tuples of raw sample values."""
    raw = bytearray()
    for row in samples:
        raw.append(0)
        flat = [v for px in row for v in px]
        if bit_depth == 16:
            for v in flat:
                raw += struct.pack(">H", v)
        elif bit_depth == 8:
            raw += bytes(flat)
        else:
            per = 8 // bit_depth
            flat += [0] * (-len(flat) % per)
            for i in range(0, len(flat), per):
                byte = 0
                for v in flat[i : i + per]:
                    byte = (byte << bit_depth) | v
                raw.append(byte)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        png += chunk(b"PLTE", bytes(v for rgb in palette for v in rgb))
    if trns is not None:
        png += chunk(b"tRNS", trns)
    png += chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
    path.write_bytes(png)


def grid(rng, channels, maxval, specials=()):
    rows = [[tuple(rng.randrange(maxval + 1) for _ in range(channels)) for _ in range(W)] for _ in range(H)]
    for i, px in enumerate(specials):
        rows[i // W][i % W] = px
    return rows


def cases(rng):
    full_alpha = [(v, 255 - v, 77, a) for v, a in [(0, 0), (255, 0), (10, 1), (200, 128), (0, 255), (37, 254)]]
    yield "rgb8", grid(rng, 3, 255), 8, 2, {}
    yield "rgba8", grid(rng, 4, 255, full_alpha), 8, 6, {}
    yield "grey8", grid(rng, 1, 255, [(0,), (255,)]), 8, 0, {}
    yield "la8", grid(rng, 2, 255, [(0, 0), (255, 0), (100, 128), (3, 255)]), 8, 4, {}
    g1 = grid(rng, 1, 1)
    yield "grey1", g1, 1, 0, {}
    yield "grey1_trns1", g1, 1, 0, {"trns": struct.pack(">H", 1)}
    g2 = grid(rng, 1, 3, [(0,), (1,), (2,), (3,)])
    yield "grey2_trns2", g2, 2, 0, {"trns": struct.pack(">H", 2)}
    g4 = grid(rng, 1, 15, [(0,), (1,), (15,)])
    yield "grey4_trns0", g4, 4, 0, {"trns": struct.pack(">H", 0)}
    yield "grey4_trns1", g4, 4, 0, {"trns": struct.pack(">H", 1)}
    g8 = grid(rng, 1, 255, [(42,), (42,), (0,)])
    yield "grey8_trns", g8, 8, 0, {"trns": struct.pack(">H", 42)}
    r8 = grid(rng, 3, 255, [(1, 2, 3), (1, 2, 3), (1, 2, 4)])
    yield "rgb8_trns", r8, 8, 2, {"trns": struct.pack(">HHH", 1, 2, 3)}
    g16 = grid(rng, 1, 65535, [(0,), (1,), (255,), (256,), (300,), (65535,), (100,)])
    yield "grey16", g16, 16, 0, {}
    g16t = [[(v % 600,) for (v,) in row] for row in g16]
    g16t[1][1] = (100,)
    yield "grey16_trns", g16t, 16, 0, {"trns": struct.pack(">H", 100)}
    yield "la16", grid(rng, 2, 65535, [(0, 0), (65535, 0), (1000, 32768), (65535, 65535)]), 16, 4, {}
    yield "rgb16", grid(rng, 3, 65535), 16, 2, {}
    yield "rgba16", grid(rng, 4, 65535, [(1, 2, 3, 0), (65535, 256, 511, 40000)]), 16, 6, {}
    r16 = grid(rng, 3, 65535, [(100, 200, 50), (100 * 256 + 7, 200 * 256, 50 * 256 + 255)])
    yield "rgb16_trns_hi", r16, 16, 2, {"trns": struct.pack(">HHH", 100, 200, 50)}
    yield "rgb16_trns_raw", r16, 16, 2, {"trns": struct.pack(">HHH", *r16[2][3])}
    pal = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(16)]
    idx = grid(rng, 1, 15, [(0,), (1,), (2,), (3,), (15,)])
    yield "palette8", idx, 8, 3, {"palette": pal}
    yield "palette8_trns", idx, 8, 3, {"palette": pal, "trns": bytes([0, 128, 255, 7])}
    yield "palette4_trns", idx, 4, 3, {"palette": pal, "trns": bytes([9])}
    idx2 = grid(rng, 1, 3)
    yield "palette2", idx2, 2, 3, {"palette": pal[:4]}


def main():
    out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "convert"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    expected = {
        "generator": "tools/make_convert_fixtures.py",
        "pillow": PIL.__version__,
        "size_wh": [W, H],
        "files": {},
    }
    for name, samples, depth, ctype, extra in cases(rng):
        path = out / f"{name}.png"
        write_png(path, samples, depth, ctype, **extra)
        im = Image.open(path)
        composite = np.asarray(convert_to_rgb(Image.open(path), return_numpy=True), dtype=np.uint8)
        discard = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        assert composite.shape == (H, W, 3), (name, composite.shape)
        expected["files"][name] = {
            "file": path.name,
            "bit_depth": depth,
            "color_type": ctype,
            "pil_mode": im.mode,
            "pil_transparency": repr(im.info.get("transparency")),
            "composite": composite.tobytes().hex(),
            "discard": discard.tobytes().hex(),
        }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"{len(expected['files'])} files")


if __name__ == "__main__":
    main()
