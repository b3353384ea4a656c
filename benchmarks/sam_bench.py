"""Seconds per image of the ``sam`` proposal method (random weights; needs ``boxsup_ext[sam]``).

    python benchmarks/sam_bench.py --model tiny [--device cpu] [--repeat 20]
    python benchmarks/sam_bench.py --model vit-b [--device cuda] [--repeat 3]

``tiny``: the model of tests/test_proposals_sam.py (64 px input) on a 48 x 48 image with 2 boxes.
``vit-b``: ``SamConfig()``'s defaults (ViT-B image encoder, 1024 px input, as facebook/sam-vit-base)
on a 500 x 375 image with 3 boxes. Jitter 4 (the default). The model is saved to a temporary
folder and loaded through the method, as a real checkpoint is; the first image (model load) is not
timed (the method returns numpy arrays, so each image has finished on a GPU too).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boxsup_ext.proposals import get_method  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "vit-b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=None, help="timed images (default 20 tiny, 3 vit-b)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        if args.model == "tiny":
            from test_proposals_sam import save_tiny_sam

            save_tiny_sam(Path(folder))
            image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            boxes = np.array([[2, 2, 30, 30], [10, 5, 46, 40]], np.float32)
        else:
            torch.manual_seed(0)
            transformers.SamModel(transformers.SamConfig()).save_pretrained(folder)
            image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
            boxes = np.array([[20, 30, 200, 300], [150, 40, 480, 360], [300, 200, 420, 330]], np.float32)
        repeat = args.repeat or (20 if args.model == "tiny" else 3)
        method = get_method("sam")
        method.run(image, boxes, "load", checkpoint=folder, device=args.device)
        start = time.perf_counter()
        for index in range(repeat):
            method.run(image, boxes, f"image{index}", checkpoint=folder, device=args.device)
        seconds = (time.perf_counter() - start) / repeat
    print(f"sam {args.model} on {args.device}: {seconds:.3f} s per image ({repeat} images, {torch.get_num_threads()} threads, "
          f"transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
