"""Deterministic synthetic scenes for the tiny trained LLaVA (tests/fixtures/trained).

A scene is one to three coloured shapes, each in its own cell of a 3x3 grid, on a varied
background (solid, gradient, stripes, checker or soft blobs). Every scene comes with its
ground truth: the objects (shape, colour, cell, centre, size), a caption in a fixed grammar
("a red circle above a blue square") and yes/no questions about present and absent shapes.

Scene `i` of a split is drawn from `numpy.random.default_rng([split_seed, i])`, so any scene
can be regenerated on its own and the same seed always gives the same pixels.

The training distribution is deliberately biased, like natural images are:
- shapes have unequal frequencies (POPE's "popular" negatives are the frequent shapes), and
- three shapes come with a companion most of the time (CO_OCCURRENCE: a cross appears with a
  circle 85% of the time, ...), so a model has a reason to answer "yes" about the companion
  when only the first shape is shown (what POPE's "adversarial" negatives probe).

Run as a script to write a few sample PNGs and their ground truth for a look:
    python tools/scenes.py /tmp/scenes 16
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

CANVAS = 84  # PNG side in pixels; the model's processor resizes to 42
GRID = 3  # objects sit in the cells of a GRID x GRID layout
SUPERSAMPLE = 4  # antialiasing: shapes are rasterised at 4x and box-filtered

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "star", "heart", "ring"]
# relative frequency of each shape when a scene's objects are drawn
SHAPE_WEIGHTS = {"circle": 3.0, "square": 3.0, "triangle": 2.0, "diamond": 1.5, "cross": 1.5,
                 "star": 2.0, "heart": 1.5, "ring": 1.0}
# first shape -> its usual companion; P(companion in scene | first shape in scene) in training
CO_OCCURRENCE = {"cross": "circle", "heart": "star", "diamond": "triangle"}
CO_OCCURRENCE_P = 0.85

COLORS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (35, 70, 225), "yellow": (240, 215, 30),
    "purple": (145, 40, 180), "orange": (245, 130, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
# background base colours: muted, so every object colour stands out from some of them
BACKGROUNDS = {
    "grey": (128, 128, 128), "beige": (215, 200, 170), "sky": (170, 200, 225), "olive": (120, 125, 80),
    "navy": (40, 50, 90), "sand": (190, 170, 120), "teal": (60, 120, 120), "pink": (220, 170, 180),
}
BACKGROUND_KINDS = ["solid", "gradient", "stripes", "checker", "blobs"]
MIN_CONTRAST = 110.0  # least RGB distance between an object's colour and the background under it

NUM_WORDS = {1: "one", 2: "two", 3: "three"}
POPE_SUFFIX = " Please answer this question with one word."
CAPTION_QUESTION = "Describe this image briefly."


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene. `center` and `size` are in PNG pixels (size = circumradius)."""

    shape: str
    color: str
    cell: tuple[int, int]  # (row, column) in the grid
    center: tuple[float, float]  # (x, y)
    size: float
    angle: float  # rotation in radians (triangle, cross, star, heart wobble a little)


@dataclass(frozen=True)
class Scene:
    """A scene and everything needed to redraw it."""

    split_seed: int
    index: int
    background: str
    background_kind: str
    objects: tuple[SceneObject, ...]

    @property
    def shapes(self) -> list[str]:
        return [o.shape for o in self.objects]

    def caption(self) -> str:
        return caption(self.objects)

    def to_json(self) -> dict:
        d = asdict(self)
        d["caption"] = self.caption()
        d["shapes_present"] = sorted(self.shapes)
        return d


# --------------------------------------------------------------------------------------
# language


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase(o: SceneObject) -> str:
    return f"{article(o.color)} {o.color} {o.shape}"


def reading_order(objects) -> list[SceneObject]:
    return sorted(objects, key=lambda o: o.cell)


def caption(objects) -> str:
    """1 object: "a red circle"; 2: "a red circle above a blue square" (the upper one first) or
    "a red circle to the left of a blue square" (same row); 3: "a red circle, a blue square and
    a green star" in reading order (rows top to bottom, then left to right)."""
    objs = reading_order(objects)
    if len(objs) == 1:
        return phrase(objs[0])
    if len(objs) == 2:
        a, b = objs
        rel = "above" if a.cell[0] < b.cell[0] else "to the left of"
        return f"{phrase(a)} {rel} {phrase(b)}"
    return ", ".join(phrase(o) for o in objs[:-1]) + f" and {phrase(objs[-1])}"


def yes_no_question(shape: str) -> str:
    """POPE's question form (without the answer-format suffix)."""
    return f"Is there {article(shape)} {shape} in the image?"


def answer_word(present: bool) -> str:
    return "Yes" if present else "No"


def corpus_lines() -> list[str]:
    """Every sentence the model reads or writes, for the word-level tokenizer."""
    lines = [
        "A chat between a curious human and an artificial intelligence assistant.",
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        "USER: ASSISTANT:",
        POPE_SUFFIX.strip(),
        CAPTION_QUESTION,
        "Yes No yes no above to the left of and",
    ]
    lines += [yes_no_question(s) for s in SHAPES]
    lines += [f"{article(c)} {c} {s}," for c in COLORS for s in SHAPES]
    return lines


# --------------------------------------------------------------------------------------
# sampling


def _pick_shapes(rng: np.random.Generator, n: int, biased: bool) -> list[str]:
    """`n` distinct shapes drawn by SHAPE_WEIGHTS; with `biased`, each drawn trigger shape
    brings its companion with probability CO_OCCURRENCE_P (added when there is room, else in
    place of a shape that is not a trigger)."""
    w = np.array([SHAPE_WEIGHTS[s] for s in SHAPES])
    chosen = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=n, replace=False, p=w / w.sum())]
    if not biased:
        return chosen
    for a in list(chosen):
        b = CO_OCCURRENCE.get(a)
        if b is None or b in chosen or rng.random() >= CO_OCCURRENCE_P:
            continue
        if len(chosen) < 3:
            chosen.append(b)
            continue
        spare = [i for i, s in enumerate(chosen) if s != a and s not in CO_OCCURRENCE]
        if spare:
            chosen[spare[-1]] = b
    return chosen


def _background_rgb(kind: str, base: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64) / (CANVAS - 1)
    base_a = np.array(base, dtype=np.float64)
    shift = rng.uniform(-35, 35, size=3)
    other = np.clip(base_a + shift, 0, 255)
    if kind == "solid":
        t = np.zeros_like(x)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * (x - 0.5) + np.sin(ang) * (y - 0.5)) + 0.5
    elif kind == "stripes":
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(0.12, 0.3)
        t = (np.sin(2 * np.pi * (np.cos(ang) * x + np.sin(ang) * y) / period) > 0).astype(np.float64)
    elif kind == "checker":
        n = int(rng.integers(3, 7))
        t = ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float64)
    else:  # blobs
        t = np.zeros_like(x)
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.4)
            t += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        t = t / t.max()
    t = np.clip(t, 0.0, 1.0)[..., None]
    return base_a * (1 - t) + other * t


def _contrast_ok(color: str, bg: np.ndarray, cx: float, cy: float, r: float) -> bool:
    y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, CANVAS))
    x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, CANVAS))
    patch = bg[y0:y1, x0:x1].reshape(-1, 3)
    dist = np.sqrt(((patch - np.array(COLORS[color], dtype=np.float64)) ** 2).sum(axis=1))
    return bool(dist.min() >= MIN_CONTRAST)


def sample_scene(split_seed: int, index: int, biased: bool = True) -> tuple[Scene, np.ndarray]:
    """Scene `index` of the split `split_seed` and its background (float RGB, CANVAS x CANVAS).

    `biased` turns the co-occurrence rule on (the training and held-out splits both use it,
    as COCO's train and val images share their statistics)."""
    rng = np.random.default_rng([split_seed, index])
    n = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
    shapes = _pick_shapes(rng, n, biased)
    bg_name = str(rng.choice(sorted(BACKGROUNDS)))
    kind = str(rng.choice(BACKGROUND_KINDS))
    bg = _background_rgb(kind, BACKGROUNDS[bg_name], rng)
    cells = rng.permutation(GRID * GRID)[: len(shapes)]
    cell_px = CANVAS / GRID
    objects = []
    for shape, cell in zip(shapes, cells):
        row, col = divmod(int(cell), GRID)
        size = float(rng.uniform(0.30, 0.40) * cell_px)
        jitter = cell_px / 2 - size
        cx = (col + 0.5) * cell_px + float(rng.uniform(-jitter, jitter))
        cy = (row + 0.5) * cell_px + float(rng.uniform(-jitter, jitter))
        angle = float(rng.uniform(-0.25, 0.25))
        palette = [c for c in COLORS if _contrast_ok(c, bg, cx, cy, size)]
        if not palette:  # cannot happen with these palettes, but never draw an invisible object
            palette = [max(COLORS, key=lambda c: np.abs(bg.mean((0, 1)) - COLORS[c]).sum())]
        color = str(palette[int(rng.integers(len(palette)))])
        objects.append(SceneObject(shape, color, (row, col), (round(cx, 3), round(cy, 3)),
                                   round(size, 3), round(angle, 4)))
    scene = Scene(split_seed, index, bg_name, kind, tuple(reading_order(objects)))
    return scene, bg


# --------------------------------------------------------------------------------------
# rendering


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit shape (circumradius 1, y down)."""
    if shape == "circle":
        return u * u + v * v <= 0.85**2
    if shape == "ring":
        d = u * u + v * v
        return (d <= 0.95**2) & (d >= 0.55**2)
    if shape == "square":
        return (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "triangle":  # apex up
        return (v <= 0.6) & (np.abs(u) <= 0.92 * (v + 1.0) / 1.6)
    if shape == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)  # 0 at the top
        k = np.cos(5 * theta)
        return r <= 0.48 + 0.5 * np.clip(k, 0, 1) ** 2
    if shape == "heart":
        x, y = u * 1.15, -(v + 0.1) * 1.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(o: SceneObject) -> tuple[int, int, int, int, np.ndarray]:
    """The object's coverage (0..1) of the pixels of its bounding box (y0, y1, x0, x1)."""
    cx, cy = o.center
    r = o.size
    s = SUPERSAMPLE
    x0, x1 = max(int(np.floor(cx - r - 1)), 0), min(int(np.ceil(cx + r + 1)), CANVAS)
    y0, y1 = max(int(np.floor(cy - r - 1)), 0), min(int(np.ceil(cy + r + 1)), CANVAS)
    ys = (np.arange(y0 * s, y1 * s) + 0.5) / s
    xs = (np.arange(x0 * s, x1 * s) + 0.5) / s
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    dx, dy = (xx - cx) / r, (yy - cy) / r
    ca, sa = np.cos(o.angle), np.sin(o.angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    m = _inside(o.shape, u, v).astype(np.float64)
    return y0, y1, x0, x1, m.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))


def object_masks(scene: Scene) -> np.ndarray:
    """Per-object coverage maps, shape (objects, CANVAS, CANVAS), in `scene.objects` order."""
    out = np.zeros((len(scene.objects), CANVAS, CANVAS))
    for i, o in enumerate(scene.objects):
        y0, y1, x0, x1, cov = _coverage(o)
        out[i, y0:y1, x0:x1] = cov
    return out


def render(scene: Scene, bg: np.ndarray) -> Image.Image:
    """The scene as an RGB PNG image (CANVAS x CANVAS), shapes antialiased by supersampling."""
    img = bg.copy()
    for o in scene.objects:
        y0, y1, x0, x1, cov = _coverage(o)
        col = np.array(COLORS[o.color], dtype=np.float64)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cov[..., None]) + col * cov[..., None]
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def scene_image(split_seed: int, index: int) -> tuple[Scene, Image.Image]:
    scene, bg = sample_scene(split_seed, index)
    return scene, render(scene, bg)


# --------------------------------------------------------------------------------------
# statistics and POPE-style questions


def shape_stats(scenes: list[Scene]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per-shape scene counts and pairwise co-occurrence counts over `scenes`."""
    freq = {s: 0 for s in SHAPES}
    co = {s: {t: 0 for t in SHAPES} for s in SHAPES}
    for sc in scenes:
        present = set(sc.shapes)
        for s in present:
            freq[s] += 1
            for t in present:
                if t != s:
                    co[s][t] += 1
    return freq, co


def pope_negatives(scene: Scene, n: int, split: str, freq, co, rng: np.random.Generator) -> list[str]:
    """`n` absent shapes for a scene, chosen as POPE does per split:
    random (uniform), popular (most frequent in the training split first), adversarial (most
    often seen together with the scene's shapes in the training split first). Ties are broken
    by SHAPES order."""
    absent = [s for s in SHAPES if s not in scene.shapes]
    if split == "random":
        return [absent[i] for i in rng.permutation(len(absent))[:n]]
    if split == "popular":
        key = {s: freq[s] for s in absent}
    elif split == "adversarial":
        key = {s: sum(co[p][s] for p in scene.shapes) for s in absent}
    else:
        raise ValueError(f"unknown POPE split {split!r}")
    ranked = sorted(absent, key=lambda s: (-key[s], SHAPES.index(s)))
    return ranked[:n]


def pope_questions(scenes: list[Scene], image_names: list[str], split: str, freq, co,
                   seed: int) -> list[dict]:
    """One yes and one no question per present shape of each scene (POPE's balance), in the
    authors' jsonl record shape: question_id, image, text, label."""
    rng = np.random.default_rng([seed, ["random", "popular", "adversarial"].index(split)])
    out = []
    for sc, name in zip(scenes, image_names):
        pos = list(sc.shapes)
        neg = pope_negatives(sc, len(pos), split, freq, co, rng)
        qs = [(s, "yes") for s in pos] + [(s, "no") for s in neg]
        for i in rng.permutation(len(qs)):
            s, label = qs[int(i)]
            out.append({"question_id": len(out) + 1, "image": name, "text": yes_no_question(s),
                        "label": label})
    return out


def main(argv: list[str]) -> int:
    folder = argv[1] if len(argv) > 1 else "/tmp/scenes"
    n = int(argv[2]) if len(argv) > 2 else 16
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        scene, img = scene_image(7, i)
        img.save(os.path.join(folder, f"scene_{i:03d}.png"))
        with open(os.path.join(folder, f"scene_{i:03d}.json"), "w", encoding="utf-8") as f:
            json.dump(scene.to_json(), f, indent=1)
        print(i, scene.caption(), scene.background, scene.background_kind)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
