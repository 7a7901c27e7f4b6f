"""Write every reference fixture under tests/fixtures/ (see tests/fixtures/README.md).

    tools/.venv/bin/python tools/make_fixtures.py            # everything
    tools/.venv/bin/python tools/make_fixtures.py llava      # one family (images are always written)

Deterministic: fixed seeds, one CPU thread, eager attention; re-running reproduces every
file bit for bit with the pinned tools/requirements-fixtures.txt.
"""

from __future__ import annotations

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

from fixtures_common import make_images  # noqa: E402

ROOT = os.path.join(os.path.dirname(HERE), "tests", "fixtures")

# first seed tried per model; the search moves on until every margin holds
SEEDS = {
    "llava": {"hub": 1003, "gqa": 2000},
    "instructblip": {"hub": 3000},
}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    families = argv or ["llava", "instructblip"]
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "pillow": PIL.__version__,
    }
    images = make_images(os.path.join(ROOT, "images"))
    for fam in families:
        print(f"== {fam}")
        if fam == "llava":
            import make_llava

            make_llava.make(ROOT, images, versions, SEEDS["llava"])
        elif fam == "instructblip":
            import make_instructblip

            make_instructblip.make(ROOT, images, versions, SEEDS["instructblip"])
        else:
            raise SystemExit(f"unknown family {fam}")
    print("done")


if __name__ == "__main__":
    main(sys.argv[1:])
