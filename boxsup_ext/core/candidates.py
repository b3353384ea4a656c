"""The candidate form of one image: units + membership bitmasks (docs/ops.md, Conventions).

``units`` is an integer map [H, W] with values in [0, U): the unit (superpixel) of each pixel.
``members`` is int64 [N, num_words(U)]: bit ``u % 64`` of word ``u // 64`` of row n is set when
unit u belongs to candidate n. Everything here is vectorised NumPy, so proposal workers, the store
and the data package need no torch; the compiled ops read the same arrays as tensors.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Optional, Sequence

import numpy as np

BITS_PER_WORD = 64


def num_words(num_bits: int) -> int:
    """int64 words that hold ``num_bits`` bits: ceil(num_bits / 64), so 0 bits take 0 words.

    The compiled ``pack_masks`` and its fake kernel size their output this way, and the ops accept
    0-wide members exactly when the image has no units (H * W == 0).
    """
    return (int(num_bits) + BITS_PER_WORD - 1) // BITS_PER_WORD


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a bool matrix [N, L] into int64 bit words [N, num_words(L)] (bit i%64 of word i//64)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"bits must have shape [N, L], got {bits.shape}")
    n, length = bits.shape
    padded = np.zeros((n, num_words(length) * BITS_PER_WORD), dtype=bool)
    padded[:, :length] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")  # uint8 [N, W64 * 8]
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).view(np.int64)


def unpack_rows(members: np.ndarray, num_bits: int) -> np.ndarray:
    """Unpack int64 bit words [N, W64] into a bool matrix [N, num_bits] (num_bits <= 64 * W64)."""
    members = np.ascontiguousarray(members, dtype=np.int64)
    if members.ndim != 2:
        raise ValueError(f"members must have shape [N, W64], got {members.shape}")
    if int(num_bits) > members.shape[1] * BITS_PER_WORD:
        raise ValueError(f"members has {members.shape[1]} words per row, too few for {num_bits} bits")
    as_bytes = members.astype("<i8", copy=False).view(np.uint8).reshape(members.shape[0], members.shape[1] * 8)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, : int(num_bits)]
    return bits.astype(bool, copy=False)


def unit_count(units: np.ndarray) -> int:
    """U for a units map: one more than its largest value (0 for an empty map)."""
    return int(units.max()) + 1 if units.size else 0


def unpack_masks(units: np.ndarray, members: np.ndarray, rows: Optional[Sequence[int]] = None) -> np.ndarray:
    """Per-pixel masks bool [N, H, W] of the candidates (or of the selected ``rows`` only)."""
    members = np.asarray(members)
    if rows is not None:
        members = members[np.asarray(rows, dtype=np.int64)]
    return unpack_rows(members, unit_count(units))[:, units]


def masks_to_units(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert arbitrary masks bool [N, H, W] into (units int32 [H, W], members int64 [N, W64]).

    Units are the classes of pixels that share the same membership in every mask (exact, and U as
    small as it can be), numbered in the raster order of their first pixel, so the result is
    deterministic. ``boxsup_ext.ops.masks_to_units`` (tensors) is this function.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {masks.shape}")
    n, h, w = masks.shape
    if h * w == 0:
        return np.zeros((h, w), dtype=np.int32), np.zeros((n, 0), dtype=np.int64)
    if n == 0:  # no masks: every pixel has the same (empty) membership, one unit
        return np.zeros((h, w), dtype=np.int32), np.zeros((0, 1), dtype=np.int64)
    # One membership signature per pixel: the N mask bits packed into int64 words, [H*W, W64].
    signature = pack_rows(masks.reshape(n, h * w).T)
    if signature.shape[1] == 1:
        _, first, inverse = np.unique(signature[:, 0], return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    flat_units, first_pixel = number_in_raster_order(first, inverse)
    units = flat_units.astype(np.int32).reshape(h, w)
    unit_bits = masks.reshape(n, h * w)[:, first_pixel]  # [N, U]: membership of each unit
    return units, pack_rows(unit_bits)


def number_in_raster_order(first: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unit numbering rule: ids follow the raster order of each unit's first pixel.

    Args:
        first, inverse: ``np.unique(keys, return_index=True, return_inverse=True)``'s index of each
            distinct key's first pixel [U] and each pixel's key number [P].

    Returns:
        (unit id of each pixel int64 [P], first pixel of each unit in id order [U]).
    """
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[np.asarray(inverse).reshape(-1)], first[order]


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


@dataclass(frozen=True)
class Candidates:
    """The candidate segments of one image in units form, checked once when made.

    ``units``: int32 [H, W] in [0, U) (any integer map is accepted and widened or narrowed to int32;
    stores keep uint16 when U allows). ``members``: int64 [N, W64] with W64 >= num_words(U).
    ``shape`` (optional, not stored): the (H, W) the units map must have. A bad argument is a
    ValueError that names it and says what was expected.
    """

    units: np.ndarray
    members: np.ndarray
    shape: InitVar[Optional[tuple[int, int]]] = None

    def __post_init__(self, shape: Optional[tuple[int, int]]) -> None:
        units = np.ascontiguousarray(self.units)
        members = np.ascontiguousarray(self.members)
        expected = "" if shape is None else f" of shape {(int(shape[0]), int(shape[1]))}"
        if (
            units.ndim != 2
            or not np.issubdtype(units.dtype, np.integer)
            or (shape is not None and units.shape != (int(shape[0]), int(shape[1])))
        ):
            raise ValueError(f"units must be an integer map{expected or ' [H, W]'}, got {units.dtype} {units.shape}")
        if units.size and units.min() < 0:
            raise ValueError(f"units must be >= 0, found {units.min()}")
        count = unit_count(units)  # one pass over the map, for both checks below
        if count - 1 > np.iinfo(np.int32).max:
            raise ValueError(f"unit ids must fit int32, found {count - 1}")
        if members.ndim != 2 or members.dtype != np.int64:
            raise ValueError(f"members must be int64 [N, W64], got {members.dtype} {members.shape}")
        needed = num_words(count)
        if members.shape[1] < needed:
            raise ValueError(f"members has {members.shape[1]} words per row, {needed} needed for the units")
        object.__setattr__(self, "units", units.astype(np.int32, copy=False))
        object.__setattr__(self, "members", members)

    @property
    def num_candidates(self) -> int:
        return int(self.members.shape[0])

    @property
    def num_units(self) -> int:
        return unit_count(self.units)

    def masks(self, rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """Per-pixel masks bool [N, H, W] (or of ``rows`` only). Memory grows as N * H * W."""
        return unpack_masks(self.units, self.members, rows)
