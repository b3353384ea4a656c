"""Packing and unpacking of the units + members proposal form (ARCHITECTURE.md section 3).

``units`` is an int32 map [H, W] with values in [0, U); ``members`` is int64 [N, ceil(U / 64)]
where bit ``u % 64`` of word ``u // 64`` of row n is set when unit u belongs to candidate n.
Everything here is vectorised NumPy, so proposal workers need no torch.
"""

from __future__ import annotations

import numpy as np


def num_words(num_units: int) -> int:
    """Number of int64 words needed for ``num_units`` bits (at least 1, so arrays are never 0-wide)."""
    return max(1, (int(num_units) + 63) // 64)


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a bool matrix [N, U] into int64 bit words [N, ceil(U / 64)] (bit u%64 of word u//64)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"bits must have shape [N, U], got {bits.shape}")
    n, u = bits.shape
    padded = np.zeros((n, num_words(u) * 64), dtype=bool)
    padded[:, :u] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")  # uint8 [N, W64 * 8]
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).view(np.int64)


def unpack_rows(members: np.ndarray, num_units: int) -> np.ndarray:
    """Unpack int64 bit words [N, W64] into a bool matrix [N, num_units]."""
    members = np.ascontiguousarray(members, dtype=np.int64)
    if members.ndim != 2:
        raise ValueError(f"members must have shape [N, W64], got {members.shape}")
    as_bytes = members.astype("<i8", copy=False).view(np.uint8).reshape(members.shape[0], members.shape[1] * 8)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :num_units]
    return bits.astype(bool, copy=False)


def unit_count(units: np.ndarray) -> int:
    """U for a units map: one more than its largest value (0 for an empty map)."""
    return int(units.max()) + 1 if units.size else 0


def unpack_masks(units: np.ndarray, members: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel masks bool [N, H, W] of the candidates (or of the selected ``rows`` only)."""
    if rows is not None:
        members = members[np.asarray(rows)]
    unit_bits = unpack_rows(members, max(unit_count(units), 1))
    return unit_bits[:, units]


def masks_to_units(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert arbitrary masks bool [N, H, W] into (units int32 [H, W], members int64 [N, W64]).

    Units are the classes of pixels that share the same membership in every mask, numbered in the
    order of their first pixel in raster order, so the result is deterministic. This is the NumPy
    twin of ``boxsup_ext.reference.masks_to_units`` (same masks back, numbering may differ); it
    keeps proposal workers free of torch.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {masks.shape}")
    n, h, w = masks.shape
    if h * w == 0:
        return np.zeros((h, w), dtype=np.int32), np.zeros((n, 1), dtype=np.int64)
    # One membership signature per pixel: the N mask bits packed into int64 words, [H*W, W64].
    signature = pack_rows(masks.reshape(n, h * w).T)
    if signature.shape[1] == 1:
        _, first, inverse = np.unique(signature[:, 0], return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Renumber so that unit ids follow the first pixel in raster order.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    units = rank[inverse].astype(np.int32).reshape(h, w)
    unit_bits = masks.reshape(n, h * w)[:, first[order]]  # [N, U]: membership of each unit
    return units, pack_rows(unit_bits)


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rectangle masks bool [M, H, W] of boxes float [M, 4] (x0, y0, x1, y1), half-open pixel units.

    Pixel (row y, col x) is inside when (x + 0.5, y + 0.5) lies in [x0, x1) x [y0, y1).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs = np.arange(width, dtype=np.float64) + 0.5
    ys = np.arange(height, dtype=np.float64) + 0.5
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # [M, W]
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # [M, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def box_pixel_range(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel range (col0, row0, col1, row1), half-open, of the pixels a box covers."""
    x0, y0, x1, y1 = (float(v) for v in box)
    col0 = int(np.clip(np.ceil(x0 - 0.5), 0, width))
    col1 = int(np.clip(np.ceil(x1 - 0.5), 0, width))
    row0 = int(np.clip(np.ceil(y0 - 0.5), 0, height))
    row1 = int(np.clip(np.ceil(y1 - 0.5), 0, height))
    return col0, row0, max(col0, col1), max(row0, row1)


def unit_statistics(units: np.ndarray, num_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit pixel count int64 [U] and tight box int64 [U, 4] (col0, row0, col1, row1), half-open.

    Units without pixels get count 0 and the empty box (W, H, 0, 0), so min/max folds ignore them.
    """
    h, w = units.shape
    flat = units.reshape(-1).astype(np.int64)
    area = np.bincount(flat, minlength=num_units)[:num_units]
    rows = np.repeat(np.arange(h), w)
    cols = np.tile(np.arange(w), h)
    box = np.empty((num_units, 4), dtype=np.int64)
    box[:, 0], box[:, 1], box[:, 2], box[:, 3] = w, h, 0, 0
    np.minimum.at(box[:, 0], flat, cols)
    np.minimum.at(box[:, 1], flat, rows)
    np.maximum.at(box[:, 2], flat, cols + 1)
    np.maximum.at(box[:, 3], flat, rows + 1)
    return area, box
