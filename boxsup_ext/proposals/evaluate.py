"""Proposal quality against ground truth: average best overlap (ABO) and recall.

For every ground-truth instance mask the best IoU over an image's candidates is its "best
overlap"; ABO is the mean over all instances, recall@t the fraction with best overlap >= t. The
same figures are computed for the candidates' tight boxes against the ground-truth boxes. All
overlaps go through per-unit counts (a [N, U] x [U, K] product), never per-candidate masks.
"""

from __future__ import annotations

import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.store import ProposalStore

THRESHOLDS = (0.5, 0.7)


def mask_best_overlaps(candidates: core.Candidates, masks: np.ndarray) -> np.ndarray:
    """Best IoU float64 [K] of each ground-truth mask (bool [K, H, W]) over an image's candidates."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[0] == 0:
        return np.zeros(0)
    if candidates.num_candidates == 0:
        return np.zeros(masks.shape[0])
    num_units = candidates.num_units
    unit_bits = core.unpack_rows(candidates.members, num_units).astype(np.float64)  # [N, U]
    unit_area = np.bincount(candidates.units.reshape(-1), minlength=num_units).astype(np.float64)
    k = masks.shape[0]
    index = (np.arange(k)[:, None] * num_units + candidates.units.reshape(1, -1))[masks.reshape(k, -1)]
    unit_inside = np.bincount(index, minlength=k * num_units).reshape(k, num_units).astype(np.float64)
    intersection = unit_bits @ unit_inside.T  # [N, K]
    union = (unit_bits @ unit_area)[:, None] + masks.reshape(k, -1).sum(1)[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return iou.max(axis=0)


def candidate_boxes(candidates: core.Candidates) -> np.ndarray:
    """Tight boxes float64 [N, 4] (x0, y0, x1, y1), half-open pixel units; empty candidates give zeros."""
    num_units = candidates.num_units
    unit_bits = core.unpack_rows(candidates.members, num_units)
    _, unit_box = core.unit_statistics(candidates.units, num_units)
    unit_box = unit_box.astype(np.int32)
    big = np.iinfo(np.int32).max
    boxes = np.stack(
        [np.where(unit_bits, unit_box[:, c], big).min(axis=1, initial=big) for c in (0, 1)]
        + [np.where(unit_bits, unit_box[:, c], -1).max(axis=1, initial=-1) for c in (2, 3)],
        axis=1,
    ).astype(np.float64)
    boxes[(boxes[:, 2:] <= boxes[:, :2]).any(axis=1)] = 0.0
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float64 [A, B] of boxes [A, 4] and [B, 4] (x0, y0, x1, y1); zero-area boxes give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _summary(best: list[np.ndarray]) -> dict[str, float | int]:
    values = np.concatenate(best) if best else np.zeros(0)
    result: dict[str, float | int] = {"count": int(values.size), "abo": float(values.mean()) if values.size else float("nan")}
    for t in THRESHOLDS:
        result[f"recall@{t}"] = float((values >= t).mean()) if values.size else float("nan")
    return result


def evaluate_store(dataset, store: ProposalStore, limit: int | None = None, progress: bool = False) -> dict:
    """Quality figures of ``store`` over ``dataset`` (or its first ``limit`` images).

    Returns a JSON-ready dict: "mask" and "box" summaries (count, abo, recall@0.5, recall@0.7),
    "images", "candidates_per_image", "units_per_image", "seconds_per_image" (generation time
    recorded in the entries), "bytes_per_image" (entry file size) and "method"/"params".
    Difficult boxes are left out of the box figures, as in VOC evaluation.
    """
    from tqdm import tqdm

    count = len(dataset) if limit is None else min(int(limit), len(dataset))
    mask_best, box_best = [], []
    candidates, units, seconds, sizes = [], [], [], []
    for index in tqdm(range(count), desc="eval proposals", unit="img", disable=not progress):
        record = dataset[index]
        entry = store.get(record.image_id)
        candidates.append(entry.candidates.num_candidates)
        units.append(entry.candidates.num_units)
        seconds.append(entry.seconds)
        sizes.append(store.entry_path(record.image_id).stat().st_size)
        instances = dataset.load_instances(index)
        if instances is not None:
            mask_best.append(mask_best_overlaps(entry.candidates, instances[0]))
        keep = ~np.asarray(record.difficult, dtype=bool)
        gt_boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)[keep]
        if gt_boxes.shape[0]:
            if entry.candidates.num_candidates:
                box_best.append(box_iou(candidate_boxes(entry.candidates), gt_boxes).max(axis=0))
            else:
                box_best.append(np.zeros(gt_boxes.shape[0]))
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return {
        "method": store.method,
        "params": store.params,
        "images": count,
        "mask": _summary(mask_best),
        "box": _summary(box_best),
        "candidates_per_image": mean(candidates),
        "units_per_image": mean(units),
        "seconds_per_image": mean(seconds),
        "bytes_per_image": mean(sizes),
    }


def format_report(result: dict) -> str:
    """Human-readable lines for one evaluation result."""
    lines = [f"method {result['method']}  images {result['images']}  params {result['params']}"]
    for kind in ("mask", "box"):
        part = result[kind]
        noun = "boxes" if kind == "box" else "masks"
        lines.append(
            f"  {kind:4s}  ABO {part['abo']:.4f}  recall@0.5 {part['recall@0.5']:.4f}  "
            f"recall@0.7 {part['recall@0.7']:.4f}  ({part['count']} ground-truth {noun})"
        )
    lines.append(
        f"  candidates/image {result['candidates_per_image']:.1f}  units/image {result['units_per_image']:.1f}  "
        f"s/image {result['seconds_per_image']:.3f}  bytes/image {result['bytes_per_image']:.0f}"
    )
    return "\n".join(lines)
