"""Plain PyTorch reference versions of the ops in :mod:`boxsup_ext.ops`.

Written for clarity, in float64, over dense per-pixel masks: the tests compare the compiled kernels
against these on random inputs, and the benchmark times them as baselines. Conventions (boxes,
proposal representation) are those of :mod:`boxsup_ext.ops`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

BITS_PER_WORD = 64


class ProposalCosts(NamedTuple):
    """Per-candidate statistics of one image (see :func:`boxsup_ext.ops.proposal_costs`)."""

    area: torch.Tensor  # [N] int64
    bbox: torch.Tensor  # [N, 4] float32, (x0, y0, x1, y1) half-open
    iou_box: torch.Tensor  # [N, M] float32
    iou_mask: torch.Tensor  # [N, M] float32
    mean_ce: torch.Tensor  # [N, M] float32, +inf for an empty candidate


def num_words(num_bits: int) -> int:
    """Number of 64-bit words that hold ``num_bits`` bits."""
    return (int(num_bits) + BITS_PER_WORD - 1) // BITS_PER_WORD


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor [N, L] along its last dim into int64 words [N, ceil(L / 64)].

    Bit ``i % 64`` of word ``i // 64`` holds ``bits[:, i]``.
    """
    bits = bits.to(torch.bool)
    n, length = bits.shape
    words = num_words(length)
    padded = torch.zeros(n, words * BITS_PER_WORD, dtype=torch.int64, device=bits.device)
    padded[:, :length] = bits.to(torch.int64)
    weights = torch.ones(BITS_PER_WORD, dtype=torch.int64, device=bits.device) << torch.arange(
        BITS_PER_WORD, device=bits.device
    )
    # Distinct powers of two never carry, so their sum is their OR (bit 63 wraps to the sign bit).
    return (padded.view(n, words, BITS_PER_WORD) * weights).sum(dim=-1)


def unpack_bits(words: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 words [N, W64] to bool [N, length]."""
    index = torch.arange(int(length), device=words.device)
    selected = words[:, index // BITS_PER_WORD]
    return ((selected >> (index % BITS_PER_WORD)) & 1).to(torch.bool)


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """bool [N, *S] to int64 bit words [N, ceil(prod(S) / 64)], pixels in row-major order."""
    length = math.prod(int(size) for size in masks.shape[1:])
    return pack_bits(masks.reshape(masks.shape[0], length))


def unpack_masks(words: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """int64 bit words [N, W64] to bool [N, *shape] (inverse of :func:`pack_masks`)."""
    length = math.prod(int(size) for size in shape)
    return unpack_bits(words, length).reshape(words.shape[0], *[int(s) for s in shape])


def unpack_members(units: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Dense masks bool [N, H, W] of the candidates given as units [H, W] + members [N, W64]."""
    unit_in_candidate = unpack_bits(members, members.shape[1] * BITS_PER_WORD)  # [N, 64 * W64]
    return unit_in_candidate[:, units.long()]


def masks_to_units(masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Convert bool masks [N, H, W] to (units int64 [H, W], members int64 [N, ceil(U / 64)]).

    Pixels that share the same membership in every mask form one unit, so the conversion is exact
    and U is as small as it can be. Units are numbered in the sorted order of their membership
    signatures (deterministic).
    """
    n, h, w = masks.shape
    signature = pack_bits(masks.reshape(n, h * w).t().contiguous())  # [H*W, ceil(N/64)]
    unique_signatures, inverse = torch.unique(signature, dim=0, return_inverse=True)
    units = inverse.reshape(h, w).to(torch.int64)
    unit_in_candidate = unpack_bits(unique_signatures, n).t()  # [N, U]
    return units, pack_bits(unit_in_candidate)


def box_pixel_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    """bool [H, W]: pixels whose centre (x + 0.5, y + 0.5) lies in [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    inside_x = (xs >= x0) & (xs < x1)
    inside_y = (ys >= y0) & (ys < y1)
    return inside_y[:, None] & inside_x[None, :]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes a [N, 4] and b [M, 4] as continuous rectangles -> [N, M] float64; 0 if union is 0."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def mask_bbox(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes float [N, 4] (min x, min y, max x + 1, max y + 1) of bool masks [N, H, W]; 0s if empty."""
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float64)
    for i in range(n):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if ys.numel():
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float64)
    return boxes


def proposal_costs(
    units: torch.Tensor,
    members: torch.Tensor,
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
) -> ProposalCosts:
    """Reference for :func:`boxsup_ext.ops.proposal_costs` (float64 inside, dense masks)."""
    units = units.cpu()
    masks = unpack_members(units, members.cpu())  # [N, H, W]
    n, h, w = masks.shape
    m = boxes.shape[0]
    logits64 = logits.detach().cpu().to(torch.float64)
    boxes64 = boxes.detach().cpu().to(torch.float64)
    area = masks.sum(dim=(1, 2)).to(torch.int64)
    bbox = mask_bbox(masks)
    iou_box = box_iou(bbox, boxes64) * (area > 0)[:, None]
    iou_mask = torch.zeros(n, m, dtype=torch.float64)
    mean_ce = torch.full((n, m), float("inf"), dtype=torch.float64)
    neg_log_prob = torch.logsumexp(logits64, dim=0)[None] - logits64  # [C, H, W]
    flat_masks = masks.reshape(n, h * w).to(torch.float64)
    for j in range(m):
        rect = box_pixel_mask(boxes64[j].tolist(), h, w).reshape(-1).to(torch.float64)
        inter = flat_masks @ rect
        union = area.to(torch.float64) + rect.sum() - inter
        iou_mask[:, j] = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        ce_sum = flat_masks @ neg_log_prob[int(labels[j])].reshape(-1)
        nonempty = area > 0
        mean_ce[nonempty, j] = ce_sum[nonempty] / area[nonempty].to(torch.float64)
    return ProposalCosts(area, bbox.float(), iou_box.float(), iou_mask.float(), mean_ce.float())


def paint_labels(
    units: torch.Tensor,
    members: torch.Tensor,
    chosen: torch.Tensor,
    labels: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    clip: bool = True,
    unassigned: Optional[int] = None,
) -> torch.Tensor:
    """Reference for :func:`boxsup_ext.ops.paint_labels`: uint8 [H, W] label map.

    Box m paints candidate ``chosen[m]`` (clipped to box m when ``boxes`` is given and ``clip``)
    with ``labels[m]``; -1 paints nothing. Regions are painted in descending painted area (ties: box
    order), so smaller regions end on top. Everything unpainted is background 0, except that with
    ``unassigned`` the background pixels inside the box of a box with ``chosen`` -1 take that label.
    """
    masks = unpack_members(units.cpu(), members.cpu())
    h, w = units.shape
    regions = []
    for j in range(chosen.shape[0]):
        index = int(chosen[j])
        if index < 0:
            continue
        region = masks[index]
        if boxes is not None and clip:
            region = region & box_pixel_mask(boxes[j].tolist(), h, w)
        regions.append((-int(region.sum()), j, region))
    out = torch.zeros(h, w, dtype=torch.uint8)
    for _, j, region in sorted(regions, key=lambda item: (item[0], item[1])):
        out[region] = int(labels[j])
    if unassigned is not None and boxes is not None:
        for j in range(chosen.shape[0]):
            if int(chosen[j]) < 0:
                free = box_pixel_mask(boxes[j].tolist(), h, w) & (out == 0)
                out[free] = int(unassigned)
    return out
