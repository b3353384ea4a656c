"""The compiled ops of boxsup_ext, as thin Python functions.

Conventions used by every op:

* **Boxes** are ``(x0, y0, x1, y1)`` floats in pixel units, half-open: pixel (row y, column x)
  lies in a box when its centre ``(x + 0.5, y + 0.5)`` is in ``[x0, x1) x [y0, y1)``. A VOC box
  (1-based inclusive) is ``(xmin - 1, ymin - 1, xmax, ymax)``; a COCO box ``[x, y, w, h]`` is
  ``(x, y, x + w, y + h)``. A mask's tight box is ``(min x, min y, max x + 1, max y + 1)``.
* **Candidates** of one H x W image are ``units`` (int32/int64 [H, W], values in [0, U): the
  superpixel of each pixel) and ``members`` (int64 [N, ceil(U / 64)]: bit ``u % 64`` of word
  ``u // 64`` of row n is set when unit u belongs to candidate n).

Both conventions, and ``ProposalCosts``, have their one home in :mod:`boxsup_ext.core`.

The ops are registered with the PyTorch dispatcher as ``torch.ops.boxsup.*`` (CPU kernels always,
CUDA kernels when built with CUDA), with fake kernels for ``torch.compile`` / ``opcheck``.
Plain float64 references of each op are in :mod:`boxsup_ext.reference`.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from boxsup_ext import core
from boxsup_ext.core import ProposalCosts, num_words

_REBUILD = "pip install --no-build-isolation ."


def _built_against(library_dir: str) -> Optional[str]:
    """The torch version recorded in the compiled library's file (readable even when it fails to load)."""
    import glob
    import re

    for path in glob.glob(os.path.join(library_dir, "_C*.so")) + glob.glob(os.path.join(library_dir, "_C*.pyd")):
        try:
            with open(path, "rb") as handle:
                found = re.search(rb"boxsup-built-against-torch=([0-9A-Za-z.+_-]+)", handle.read())
        except OSError:
            continue
        if found:
            return found.group(1).decode()
    return None


def _base_version(version: str) -> str:
    return version.split("+", 1)[0]


try:
    from boxsup_ext import _C  # noqa: F401  (registers torch.ops.boxsup)
except ImportError as err:  # exercised by tests/test_ops.py with a library that cannot load
    built = _built_against(os.path.dirname(os.path.abspath(__file__)))
    against = f"built against torch {built}" if built else "built against an unknown torch"
    raise ImportError(
        f"boxsup_ext._C (the compiled kernels, {against}) could not be loaded under the installed torch "
        f"{torch.__version__}: {err}. Rebuild them against this torch: `{_REBUILD}` (or `make setup`)."
    ) from err

_BUILT_AGAINST = getattr(_C, "torch_version", lambda: "unknown")()
if _base_version(_BUILT_AGAINST) != _base_version(torch.__version__):
    warnings.warn(
        f"boxsup_ext._C was built against torch {_BUILT_AGAINST} but torch {torch.__version__} is installed; "
        f"rebuild it with `{_REBUILD}` if anything fails",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "ProposalCosts",
    "proposal_costs",
    "proposal_costs_batched",
    "pack_masks",
    "unpack_masks",
    "pixel_units",
    "masks_to_units",
    "paint_labels",
    "paint_labels_batched",
    "build_info",
]


def build_info() -> dict:
    """Facts about the compiled kernels, as a dict: ``version`` (the package version they were built
    for), ``cuda_compiled`` (whether the CUDA kernels are built in), ``num_threads`` (ATen's intra-op
    threads, which the CPU kernels use), ``torch_built_against`` (``torch.__version__`` at build time)
    and ``cuda_available`` (``torch.cuda.is_available()`` now)."""
    return {
        "version": _C.version(),
        "cuda_compiled": bool(_C.cuda_compiled()),
        "num_threads": int(_C.num_threads()),
        "torch_built_against": _BUILT_AGAINST,
        "cuda_available": torch.cuda.is_available(),
    }


def proposal_costs(
    units: torch.Tensor,
    members: torch.Tensor,
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
) -> ProposalCosts:
    """Statistics of every candidate segment against every box of one image, in one pass.

    Args:
        units: int32 or int64 [H, W], unit (superpixel) id of each pixel, in [0, 64 * W64).
        members: int64 [N, W64] bit words; row n holds the units of candidate n.
        logits: float32 / float16 / bfloat16 [C, H, W] network scores (accumulated in float32 per
            pixel and float64 per unit). Must be finite.
        boxes: float [M, 4] ``(x0, y0, x1, y1)`` half-open pixel coordinates (may extend outside).
        labels: int64 [M] class of each box, in [0, C).

    Returns:
        :class:`ProposalCosts` with ``area`` int64 [N] (pixels), ``bbox`` float32 [N, 4] (tight box;
        zeros for an empty candidate), ``iou_box`` float32 [N, M] (IoU of box m with the tight box;
        0 for an empty candidate), ``iou_mask`` float32 [N, M] (pixel IoU of the candidate's mask
        with the pixels of box m inside the image) and ``mean_ce`` float32 [N, M] (mean over the
        candidate's pixels of ``-log softmax(logits[:, y, x])[labels[m]]``; +inf when empty).
        All on the device of the inputs.
    """
    return ProposalCosts(*torch.ops.boxsup.proposal_costs(units, members, logits, boxes, labels))


def proposal_costs_batched(
    units: Sequence[torch.Tensor],
    members: Sequence[torch.Tensor],
    logits: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
) -> List[ProposalCosts]:
    """:func:`proposal_costs` for many images of different sizes and candidate counts in one call.

    Each argument is a sequence with one tensor per image, shaped as in :func:`proposal_costs`.
    On a GPU all images go through one launch per stage; on the CPU images run in parallel.
    Returns one :class:`ProposalCosts` per image, equal to the per-image op's results.
    """
    if len(units) == 0 and len(members) == len(logits) == len(boxes) == len(labels) == 0:
        return []
    outs = torch.ops.boxsup.proposal_costs_batched(list(units), list(members), list(logits), list(boxes), list(labels))
    return [ProposalCosts(*fields) for fields in zip(*outs)]


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Pack bool masks [N, *S] into int64 bit words [N, ceil(prod(S) / 64)] (pixels row-major).

    With ``units = pixel_units(H, W)`` the packed masks are candidates in units form ("every pixel
    is a unit").
    """
    if masks.dim() < 1:
        raise ValueError(f"masks must have shape [N, ...], got {tuple(masks.shape)}")
    length = math.prod(int(size) for size in masks.shape[1:])
    return torch.ops.boxsup.pack_masks(masks.reshape(masks.shape[0], length))


def unpack_masks(words: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_masks`: int64 words [N, W64] to bool [N, *shape]."""
    shape = [int(s) for s in shape]
    length = math.prod(shape)
    return torch.ops.boxsup.unpack_masks(words, length).reshape(words.shape[0], *shape)


def pixel_units(height: int, width: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """The units map int64 [H, W] in which every pixel is its own unit (id y * W + x)."""
    return torch.arange(height * width, dtype=torch.int64, device=device).reshape(height, width)


def masks_to_units(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Convert bool masks [N, H, W] to units form: (units int64 [H, W], members int64 [N, ceil(U/64)]).

    :func:`boxsup_ext.core.masks_to_units` on tensors (computed on the host, returned on the
    device of ``masks``): pixels sharing the same membership in every mask become one unit, so the
    result is exact and U is minimal; units are numbered in raster order of their first pixel.
    """
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool [N, H, W], got {masks.dtype} {tuple(masks.shape)}")
    units, members = core.masks_to_units(masks.detach().cpu().numpy())
    return (
        torch.from_numpy(units).to(device=masks.device, dtype=torch.int64),
        torch.from_numpy(members).to(masks.device),
    )


def paint_labels(
    units: torch.Tensor,
    members: torch.Tensor,
    chosen: torch.Tensor,
    labels: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    *,
    clip: bool = True,
    unassigned: Optional[int] = None,
) -> torch.Tensor:
    """Paint a label map from the candidate chosen for each box.

    Args:
        units: int32/int64 [H, W]; members: int64 [N, W64] (units form of the candidates).
        chosen: int64 [M], index of the candidate chosen for box m, or -1 for none.
        labels: int64 [M], class painted for box m, in [0, 255].
        boxes: optional float [M, 4] (finite, x0 <= x1, y0 <= y1).
        clip: with ``boxes``, paint each candidate only inside its box.
        unassigned: with ``boxes``, the label (e.g. 255, ignore) given to the still-background
            pixels inside the box of each box whose ``chosen`` is -1; None leaves them background.
        ``chosen``, ``labels`` and ``boxes`` may be on the CPU while units and members are on a GPU
        (they are read on the host anyway; this saves a copy).

    Returns:
        uint8 [H, W] on the device of ``units``: background 0 everywhere no region covers; regions
        painted in descending painted area (ties in box order), so smaller regions end on top.
    """
    return torch.ops.boxsup.paint_labels(
        units, members, chosen, labels, boxes, clip, -1 if unassigned is None else int(unassigned)
    )


def paint_labels_batched(
    units: Sequence[torch.Tensor],
    members: Sequence[torch.Tensor],
    chosen: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    boxes: Sequence[torch.Tensor],
    *,
    clip: bool = True,
    unassigned: Optional[int] = None,
) -> List[torch.Tensor]:
    """:func:`paint_labels` for many images in one call (one launch per stage on a GPU, and one
    synchronisation for the whole batch). Each argument has one tensor per image; ``boxes`` are
    required here. Returns one uint8 [H, W] label map per image."""
    if len(units) == 0 and len(members) == len(chosen) == len(labels) == len(boxes) == 0:
        return []
    return list(
        torch.ops.boxsup.paint_labels_batched(
            list(units), list(members), list(chosen), list(labels), list(boxes), clip,
            -1 if unassigned is None else int(unassigned),
        )
    )


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes and dtypes only, with the same shape checks as the C++ code.


def _check_image_shapes(units, members, logits, boxes, labels, where: str = "") -> None:
    torch._check(units.dim() == 2, lambda: f"units{where} must have shape [H, W], got {tuple(units.shape)}")
    torch._check(units.dtype in (torch.int32, torch.int64), lambda: f"units{where} must be int32 or int64")
    torch._check(members.dim() == 2 and members.dtype == torch.int64, lambda: f"members{where} must be int64 [N, W64]")
    torch._check(
        logits.dim() == 3 and logits.dtype in (torch.float32, torch.float16, torch.bfloat16),
        lambda: f"logits{where} must be float32/float16/bfloat16 [C, H, W]",
    )
    torch._check(
        logits.shape[1] == units.shape[0] and logits.shape[2] == units.shape[1],
        lambda: f"logits{where} must match units in H and W",
    )
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"boxes{where} must have shape [M, 4]")
    torch._check(
        labels.dim() == 1 and labels.shape[0] == boxes.shape[0], lambda: f"labels{where} must have shape [M]"
    )
    devices = [t.device for t in (units, members, logits, boxes, labels)]
    torch._check(
        all(device == devices[0] for device in devices),
        lambda: f"units, members, logits, boxes and labels{where} must be on one device, got "
        + ", ".join(str(device) for device in devices),
    )


def _fake_costs(units, members, boxes):
    n, m = members.shape[0], boxes.shape[0]
    return (
        members.new_empty((n,), dtype=torch.int64),
        members.new_empty((n, 4), dtype=torch.float32),
        members.new_empty((n, m), dtype=torch.float32),
        members.new_empty((n, m), dtype=torch.float32),
        members.new_empty((n, m), dtype=torch.float32),
    )


@torch.library.register_fake("boxsup::proposal_costs")
def _proposal_costs_fake(units, members, logits, boxes, labels):
    _check_image_shapes(units, members, logits, boxes, labels)
    return _fake_costs(units, members, boxes)


@torch.library.register_fake("boxsup::proposal_costs_batched")
def _proposal_costs_batched_fake(units, members, logits, boxes, labels):
    torch._check(
        len(units) == len(members) == len(logits) == len(boxes) == len(labels),
        lambda: "proposal_costs_batched needs one tensor of each kind per image",
    )
    outs = []
    for i, args in enumerate(zip(units, members, logits, boxes, labels)):
        _check_image_shapes(*args, where=f" (image {i})")
        torch._check(
            args[0].device == units[0].device,
            lambda: f"all images of a batch must be on one device; image {i} is on {args[0].device}",
        )
        outs.append(_fake_costs(args[0], args[1], args[3]))
    return tuple(list(field) for field in zip(*outs)) if outs else ([], [], [], [], [])


@torch.library.register_fake("boxsup::pack_masks")
def _pack_masks_fake(masks):
    torch._check(masks.dim() == 2 and masks.dtype == torch.bool, lambda: "masks must be bool [N, L]")
    return masks.new_empty((masks.shape[0], num_words(masks.shape[1])), dtype=torch.int64)


@torch.library.register_fake("boxsup::unpack_masks")
def _unpack_masks_fake(words, length):
    torch._check(words.dim() == 2 and words.dtype == torch.int64, lambda: "words must be int64 [N, W64]")
    torch._check(0 <= length <= words.shape[1] * 64, lambda: "length must be in [0, 64 * words.size(1)]")
    return words.new_empty((words.shape[0], length), dtype=torch.bool)


@torch.library.register_fake("boxsup::paint_labels_batched")
def _paint_labels_batched_fake(units, members, chosen, labels, boxes, clip=True, unassigned=-1):
    torch._check(
        len(units) == len(members) == len(chosen) == len(labels) == len(boxes),
        lambda: "paint_labels_batched needs one tensor of each kind per image",
    )
    return [_paint_labels_fake(*args, clip, unassigned) for args in zip(units, members, chosen, labels, boxes)]


@torch.library.register_fake("boxsup::paint_labels")
def _paint_labels_fake(units, members, chosen, labels, boxes, clip=True, unassigned=-1):
    torch._check(units.dim() == 2, lambda: "units must have shape [H, W]")
    torch._check(chosen.dim() == 1 and labels.shape == chosen.shape, lambda: "chosen and labels must be [M]")
    torch._check(members.device == units.device, lambda: "units and members must be on one device")
    for name, tensor in (("chosen", chosen), ("labels", labels), ("boxes", boxes)):
        if tensor is not None:
            torch._check(
                tensor.device == units.device or tensor.device.type == "cpu",
                lambda: f"{name} must be on the device of units or on the CPU, got {tensor.device}",
            )
    if boxes is not None:
        torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must have shape [M, 4]")
    torch._check(-1 <= unassigned <= 255, lambda: "unassigned must be -1 (leave) or a label in [0, 255]")
    torch._check(boxes is not None or unassigned < 0, lambda: "paint_labels needs boxes to mark the boxes without a candidate")
    return units.new_empty(units.shape, dtype=torch.uint8)
