"""One BoxSup relabeling round on a few synthetic images, with the public API.

    python python/relabel_synthetic.py --out DIR [--images 4] [--seed 0]

Writes a small synthetic dataset, computes Selective Search candidates for each training image,
runs an untrained tiny_fcn, picks a candidate per box by (1 - IoU) + lambda * meanCE among the 5
cheapest, and reports how well the painted labels match the hidden ground-truth masks, beside
the labels a box filled as a rectangle would give.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from boxsup_ext.core import Candidates
from boxsup_ext.data import open_dataset
from boxsup_ext.data.synthetic import generate
from boxsup_ext.evaluation.metrics import confusion_matrix, miou_from_confusion
from boxsup_ext.models import build_model
from boxsup_ext.proposals import get_method
from boxsup_ext.relabel import RelabelInput, RelabelSettings, relabel_batch


def rectangle_labels(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes filled as rectangles, larger first so smaller boxes end on top."""
    out = np.zeros((height, width), dtype=np.uint8)
    for k in sorted(range(len(labels)), key=lambda k: -float(np.prod(boxes[k, 2:] - boxes[k, :2]))):
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[k])
        out[y0:y1, x0:x1] = labels[k]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the synthetic dataset")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generate(args.out, num_train=args.images, num_val=1, seed=args.seed, height=64, width=64)
    dataset = open_dataset(args.out, "train", kind="synthetic")
    selective_search = get_method("selective_search")
    model = build_model("tiny_fcn", dataset.num_classes).eval()

    inputs = []
    for i, record in enumerate(dataset):
        image = dataset.load_image(i)
        units, members, _scores = selective_search(image, record.boxes, ks=(25, 50, 100), min_size=10)
        inputs.append(RelabelInput(record.image_id, image, Candidates(units, members), record.boxes, record.labels))
        print(f"{record.image_id}: {len(record.boxes)} boxes, {members.shape[0]} candidates over "
              f"{int(units.max()) + 1} units")

    results = relabel_batch(model, inputs, RelabelSettings(lam=3.0, topk=5), seed=args.seed, epoch=1,
                            device=torch.device("cpu"))
    boxsup_cm = np.zeros((dataset.num_classes, dataset.num_classes), dtype=np.int64)
    rect_cm = np.zeros_like(boxsup_cm)
    for i, (record, result) in enumerate(zip(dataset, results)):
        truth = dataset.load_class_map(i)
        boxsup_cm += confusion_matrix(result.label, truth, dataset.num_classes)
        rect = rectangle_labels(record.boxes, record.labels, record.height, record.width)
        rect_cm += confusion_matrix(rect, truth, dataset.num_classes)
    print(f"label mIoU against the hidden masks: BoxSup candidates {100 * miou_from_confusion(boxsup_cm)[0]:.1f}%, "
          f"filled rectangles {100 * miou_from_confusion(rect_cm)[0]:.1f}%")


if __name__ == "__main__":
    main()
