"""Add your own proposal method, build a proposal store with it and score the store.

    python python/custom_proposal_method.py --out DIR [--images 4] [--cell 8]

A proposal method is a function ``(image uint8 [H, W, 3], boxes float32 [M, 4], **options) ->
(units int32 [H, W], members int64 [N, ceil(U / 64)], scores float32 [N])``. This one, ``grid``,
cuts the image into square cells (the units) and proposes every rectangle of whole cells up to
``max_cells`` cells a side. Registered under a name, it is used like the built-in methods:
``generate_proposals`` writes the store (checking the options first; resumable), and the trainer
reads it through ``data.train.N.proposals``. See docs/proposals.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from boxsup_ext.data import open_dataset
from boxsup_ext.data.synthetic import generate
from boxsup_ext.proposals import generate_proposals, open_store, register_method
from boxsup_ext.proposals.evaluate import evaluate_store, format_report


def grid_candidates(image: np.ndarray, boxes: np.ndarray, *, cell: int = 8, max_cells: int = 4, max_candidates: int = 2000):
    """Every rectangle of whole grid cells, at most ``max_cells`` cells a side; ``boxes`` unused."""
    height, width = image.shape[:2]
    rows, cols = -(-height // cell), -(-width // cell)
    yy, xx = np.mgrid[0:height, 0:width]
    units = ((yy // cell) * cols + xx // cell).astype(np.int32)  # unit id of each pixel: its cell
    num_units = rows * cols
    rects = [(r0, c0, r1, c1) for r0 in range(rows) for c0 in range(cols)
             for r1 in range(r0 + 1, min(rows, r0 + max_cells) + 1) for c1 in range(c0 + 1, min(cols, c0 + max_cells) + 1)]
    rects = rects[:max_candidates]
    members = np.zeros((len(rects), -(-num_units // 64)), dtype=np.uint64)
    for n, (r0, c0, r1, c1) in enumerate(rects):
        for u in (r * cols + c for r in range(r0, r1) for c in range(c0, c1)):
            members[n, u // 64] |= np.uint64(1) << np.uint64(u % 64)  # bit u % 64 of word u // 64
    scores = np.ones(len(rects), dtype=np.float32)
    return units, members.view(np.int64), scores


# The output depends on the image size only: neither on the boxes nor on the pixel values, so a
# store need not be rebuilt when those change.
register_method("grid", grid_candidates, uses_boxes=False, uses_pixels=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the synthetic dataset and the store")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--cell", type=int, default=8, help="cell side in pixels")
    args = parser.parse_args()

    root = generate(args.out / "synthetic", num_train=args.images, num_val=1, seed=0, height=64, width=64)
    dataset = open_dataset(root, "train", kind="synthetic")
    store = generate_proposals(dataset, "grid", args.out / "grid_store", progress=False, cell=args.cell, max_cells=4)
    entry = store.get(dataset[0].image_id)
    print(f"store {store.path}: method {store.method!r}, params {store.params}, {len(store)} entries; "
          f"image {dataset[0].image_id}: {entry.candidates.num_candidates} candidates over {entry.candidates.num_units} units")
    again = open_store(store.path, dataset)  # what the trainer does: refuses a store of other images
    print(format_report(evaluate_store(dataset, again)))


if __name__ == "__main__":
    main()
