"""Plug-in registry of proposal methods.

A method is a function ``fn(image uint8 [H, W, 3], boxes float32 [M, 4], **options) ->
(units int32 [H, W], members int64 [N, ceil(U / 64)], scores float32 [N])``. Register one with
``register_method("name", fn)`` (or as a decorator) and ``generate_proposals`` and the CLI can use
it by name; nothing else needs to change. Methods that read per-image files (e.g. MCG's ``.mat``)
register with ``needs_image_id=True`` and receive ``image_id=...`` as a keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from boxsup_ext.proposals import bits
from boxsup_ext.utils import InputError

MethodFn = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ProposalMethod:
    """A registered method: call it like the function it wraps."""

    name: str
    fn: MethodFn
    needs_image_id: bool = False

    def __call__(self, image: np.ndarray, boxes: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.fn(image, boxes, **options)

    def run(self, image: np.ndarray, boxes: np.ndarray, image_id: str, **options):
        """Call the method for one image and check its output; returns (units, members, scores)."""
        if self.needs_image_id:
            options = dict(options, image_id=image_id)
        units, members, scores = self.fn(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), **options)
        return check_candidates(units, members, scores, image.shape[0], image.shape[1], f"method {self.name!r} on image {image_id!r}")


_METHODS: dict[str, ProposalMethod] = {}


def register_method(name: str, fn: MethodFn | None = None, *, needs_image_id: bool = False, overwrite: bool = False):
    """Register ``fn`` under ``name``; usable as ``register_method(name, fn)`` or ``@register_method(name)``."""

    def add(function: MethodFn) -> MethodFn:
        if name in _METHODS and not overwrite and _METHODS[name].fn is not function:
            raise ValueError(f"proposal method {name!r} is registered already; pass overwrite=True to replace it")
        _METHODS[name] = ProposalMethod(name, function, needs_image_id)
        return function

    return add if fn is None else add(fn)


def get_method(name: str) -> ProposalMethod:
    """The method registered as ``name``; an unknown name is an InputError listing the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"proposal method {name!r} is unknown; choose one of: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    return sorted(_METHODS)


def check_candidates(units, members, scores, height: int, width: int, where: str):
    """Validate and normalise a method's output to (int32 [H, W], int64 [N, W64], float32 [N])."""
    units = np.ascontiguousarray(units)
    members = np.ascontiguousarray(members)
    scores = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)
    if units.shape != (height, width) or not np.issubdtype(units.dtype, np.integer):
        raise ValueError(f"{where}: units must be an integer map of shape {(height, width)}, got {units.dtype} {units.shape}")
    if units.size and units.min() < 0:
        raise ValueError(f"{where}: units must be >= 0")
    if members.ndim != 2 or members.dtype != np.int64:
        raise ValueError(f"{where}: members must be int64 [N, W64], got {members.dtype} {members.shape}")
    needed = bits.num_words(bits.unit_count(units))
    if members.shape[1] < needed:
        raise ValueError(f"{where}: members has {members.shape[1]} words per row, {needed} needed for the units")
    if scores.shape[0] != members.shape[0]:
        raise ValueError(f"{where}: {members.shape[0]} candidates but {scores.shape[0]} scores")
    return units.astype(np.int32, copy=False), members, scores
