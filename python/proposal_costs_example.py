"""Score candidate segments against boxes with the fused op and paint BoxSup labels.

    python python/proposal_costs_example.py [--height 120] [--width 160] [--seed 0] [--topk 1]

Makes an image with two objects, candidate masks around them (some good, some bad), random
network logits that favour the right classes, and picks a segment per box the BoxSup way.
"""

from __future__ import annotations

import argparse

import torch

from boxsup_ext import ops


def ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    ys = torch.arange(height).float()[:, None] + 0.5
    xs = torch.arange(width).float()[None, :] + 0.5
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topk", type=int, default=1, help="sample among the k cheapest (1: greedy; the paper: 5 of ~2000)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    h, w = args.height, args.width

    cat = ellipse(h, w, h * 0.5, w * 0.3, h * 0.3, w * 0.15)
    dog = ellipse(h, w, h * 0.4, w * 0.7, h * 0.25, w * 0.2)
    candidates = [cat, dog, cat | dog, ellipse(h, w, h * 0.5, w * 0.3, h * 0.15, w * 0.08),
                  torch.ones(h, w, dtype=torch.bool)]
    candidates += [torch.rand(h, w) < 0.2 for _ in range(5)]  # noise candidates
    units, members = ops.masks_to_units(torch.stack(candidates))

    logits = torch.randn(3, h, w)  # background, cat, dog
    logits[1][cat] += 3.0
    logits[2][dog] += 3.0
    boxes = torch.tensor([ops_box(cat), ops_box(dog)])
    labels = torch.tensor([1, 2])

    costs = ops.proposal_costs(units, members, logits, boxes, labels)
    total = (1 - costs.iou_box) + 3 * costs.mean_ce  # [N, M], the paper's cost
    k = min(args.topk, total.shape[0])
    cheapest = total.topk(k, dim=0, largest=False).indices  # [k, M]
    chosen = cheapest[torch.randint(k, (labels.shape[0],)), torch.arange(labels.shape[0])]
    label_map = ops.paint_labels(units, members, chosen, labels)

    print(f"{len(candidates)} candidates over {int(units.max()) + 1} units, {ops.build_info()}")
    for m, name in enumerate(["cat", "dog"]):
        print(f"box {m} ({name}): cheapest candidates {cheapest[:, m].tolist()}, chosen {int(chosen[m])}, "
              f"cost {float(total[chosen[m], m]):.3f}")
    print("painted pixels per class:", torch.bincount(label_map.flatten().long(), minlength=3).tolist())


def ops_box(mask: torch.Tensor) -> list:
    """Tight box (x0, y0, x1, y1) of a mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


if __name__ == "__main__":
    main()
