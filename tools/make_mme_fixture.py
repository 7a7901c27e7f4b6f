#!/usr/bin/env python3
"""Writes the small synthetic MME test data of damro-eval.

Run from the repository root:  python3 tools/make_mme_fixture.py
Needs pyarrow (pip install pyarrow).

Writes, under crates/damro-eval/tests/data/:
- mme_folder/: the original release's folder layout, both forms (a
  sub-task with `images/` + `questions_answers_YN/`, and sub-tasks with
  images and same-stem .txt files side by side), tiny 1x1 PNGs;
- mme_fixture.parquet: the same questions in the layout of the HF dataset
  `lmms-lab/MME` (question_id "category/image", image as a struct of
  `bytes` and `path` as HF `datasets` stores images, question, answer,
  category), written by pyarrow with its default (snappy) compression,
  plus one row whose answer is null.

The questions, and the hand-computed scores the tests expect, are listed in
crates/damro-eval/tests/mme.rs.
"""

import os
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join("crates", "damro-eval", "tests", "data")


def png(gray):
    """A valid 1x1 8-bit grayscale PNG whose pixel is `gray`."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(bytes([0, gray]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# (category, image file, [(question, answer)], form)
# form "pair": images/ + questions_answers_YN/; "side": side by side;
# "side3": side by side, lines `image<TAB>question<TAB>answer`.
QUESTIONS = [
    ("existence", "a.png", [("Is there a cat in this image?", "Yes"), ("Is there a dog in this image?", "No")], "pair"),
    ("existence", "b.png", [("Is there a car in this image?", "Yes"), ("Is there a bus in this image?", "No")], "pair"),
    ("count", "c.png", [("Are there two cats?", "Yes"), ("Are there three cats?", "No")], "side3"),
    ("count", "d.png", [("Is there one apple?", "No"), ("Are there two apples?", "Yes")], "side"),
    ("code_reasoning", "e.png", [("Does the code print 3?", "Yes"), ("Does the code print 4?", "No")], "side"),
]


def write_folder():
    root = os.path.join(OUT, "mme_folder")
    gray = 10
    for category, image, pairs, form in QUESTIONS:
        if form == "pair":
            image_dir = os.path.join(root, category, "images")
            text_dir = os.path.join(root, category, "questions_answers_YN")
        else:
            image_dir = text_dir = os.path.join(root, category)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(text_dir, exist_ok=True)
        with open(os.path.join(image_dir, image), "wb") as f:
            f.write(png(gray))
        gray += 40
        stem = os.path.splitext(image)[0]
        with open(os.path.join(text_dir, stem + ".txt"), "w", newline="\n") as f:
            for question, answer in pairs:
                if form == "side3":
                    f.write(f"{image}\t{question}\t{answer}\n")
                else:
                    f.write(f"{question}\t{answer}\n")
    # Input problems the reader must report and skip:
    # a line with an unknown answer and a line without a tab in count/d.txt,
    with open(os.path.join(root, "count", "d.txt"), "a", newline="\n") as f:
        f.write("Is it a pear?\tMaybe\n")
        f.write("no tab on this line\n")
    # a questions file whose image is missing,
    with open(os.path.join(root, "existence", "questions_answers_YN", "z.txt"), "w", newline="\n") as f:
        f.write("Is there a zebra in this image?\tNo\n")
    # and a folder that is not an MME sub-task.
    os.makedirs(os.path.join(root, "not_a_task"), exist_ok=True)
    with open(os.path.join(root, "not_a_task", "x.txt"), "w", newline="\n") as f:
        f.write("Is this read?\tNo\n")


def write_parquet():
    rows = []
    gray = 10
    for category, image, pairs, _ in QUESTIONS:
        data = png(gray)
        gray += 40
        for question, answer in pairs:
            rows.append((f"{category}/{image}", {"bytes": data, "path": image}, question, answer, category))
    # a row whose answer is null: reported, not scored
    rows.append(("count/f.png", {"bytes": png(200), "path": None}, "Is it null?", None, "count"))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "question_id": pa.array([r[0] for r in rows], pa.string()),
            "image": pa.array([r[1] for r in rows], image_type),
            "question": pa.array([r[2] for r in rows], pa.string()),
            "answer": pa.array([r[3] for r in rows], pa.string()),
            "category": pa.array([r[4] for r in rows], pa.string()),
        }
    )
    pq.write_table(table, os.path.join(OUT, "mme_fixture.parquet"))


if __name__ == "__main__":
    write_folder()
    write_parquet()
