"""Import of MCG's released per-image candidate files (Arbelaez et al. / Pont-Tuset et al.).

Each ``<mat_dir>/<image_id>.mat`` holds ``superpixels`` (H x W, 1-based superpixel ids),
``labels`` (N x 1 cell array, each cell the 1-based superpixel ids of one candidate) and
``scores`` (N x 1). That is the units + members form already: units = superpixels - 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.registry import register_method
from boxsup_ext.utils import InputError


def read_mcg_mat(path: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Read one MCG file: (superpixels int64 [H, W] 1-based, labels list of int64 arrays, scores float64 [N])."""
    from scipy.io import loadmat

    if not path.is_file():
        raise InputError(f"{path}: MCG file not found; point mat_dir at the folder of MCG's per-image .mat files")
    try:
        content = loadmat(str(path))
    except Exception as err:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: not a readable MATLAB .mat file ({err}); re-download or regenerate it") from None
    missing = [key for key in ("superpixels", "labels", "scores") if key not in content]
    if missing:
        raise InputError(f"{path}: MCG file lacks {', '.join(missing)}; expected superpixels, labels and scores")
    superpixels = np.asarray(content["superpixels"]).astype(np.int64)
    labels = [np.asarray(cell, dtype=np.int64).reshape(-1) for cell in np.asarray(content["labels"], dtype=object).reshape(-1)]
    scores = np.asarray(content["scores"], dtype=np.float64).reshape(-1)
    if len(labels) != scores.size:
        raise InputError(f"{path}: {len(labels)} candidates in labels but {scores.size} scores")
    return superpixels, labels, scores


def mcg(image: np.ndarray, boxes: np.ndarray, *, image_id: str, mat_dir: str, max_candidates: int = 2000):
    """Candidates of one image from ``<mat_dir>/<image_id>.mat``, the top ``max_candidates`` by score.

    image: uint8 [H, W, 3] (its size must match the file's superpixels). boxes: unused.
    Returns units int32 [H, W] (superpixels - 1), members int64 [N, W64] and scores float32 [N],
    sorted by descending score.
    """
    path = Path(mat_dir) / f"{image_id}.mat"
    superpixels, labels, scores = read_mcg_mat(path)
    height, width = image.shape[:2]
    if superpixels.shape != (height, width):
        raise InputError(f"{path}: superpixels are {superpixels.shape[0]}x{superpixels.shape[1]} but the image is {height}x{width}; the file belongs to another image")
    if superpixels.size and superpixels.min() < 1:
        raise InputError(f"{path}: superpixels must be 1-based ids (found {superpixels.min()})")
    num_units = int(superpixels.max()) if superpixels.size else 0
    order = np.argsort(-scores, kind="stable")[: int(max_candidates)]
    unit_bits = np.zeros((order.size, num_units), dtype=bool)
    candidate_ids = [labels[i] for i in order]
    lengths = np.array([ids.size for ids in candidate_ids], dtype=np.int64)
    flat_ids = np.concatenate(candidate_ids) if candidate_ids else np.zeros(0, dtype=np.int64)
    if flat_ids.size and (flat_ids.min() < 1 or flat_ids.max() > num_units):
        raise InputError(f"{path}: labels refer to superpixel ids outside 1..{num_units}")
    unit_bits[np.repeat(np.arange(order.size), lengths), flat_ids - 1] = True
    units = (superpixels - 1).astype(np.int32)
    return units, core.pack_rows(unit_bits), scores[order].astype(np.float32)


# The candidates come from the .mat files alone (not from the boxes or pixels).
register_method("mcg", mcg, needs_image_id=True, uses_boxes=False, uses_pixels=False)
