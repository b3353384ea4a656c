"""Plain PyTorch reference versions of the ops in :mod:`boxsup_ext.ops`.

Written for clarity, in float64, over dense per-pixel masks: the tests compare the compiled kernels
against these on random inputs, and the benchmark times them as baselines. This is the tests'
oracle: tests and benchmarks import it, the package never does. The vocabulary (box pixel rule,
paint order, candidate form, ``ProposalCosts``) is :mod:`boxsup_ext.core`'s, used here as is.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from boxsup_ext.core import BITS_PER_WORD, ProposalCosts, box_masks, num_words, paint_order


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


def box_pixel_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool [M, H, W] rectangles of boxes [M, 4] by the box pixel rule (:func:`boxsup_ext.core.box_masks`)."""
    return torch.from_numpy(box_masks(boxes.detach().cpu().double().numpy(), height, width))


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
    rects = box_pixel_masks(boxes64, h, w).reshape(m, h * w).to(torch.float64)
    for j in range(m):
        rect = rects[j]
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
    rects = box_pixel_masks(boxes, h, w) if boxes is not None else None
    regions = []  # (box index, pixels) of the boxes that paint a candidate
    for j in range(chosen.shape[0]):
        index = int(chosen[j])
        if index < 0:
            continue
        region = masks[index]
        if rects is not None and clip:
            region = region & rects[j]
        regions.append((j, region))
    out = torch.zeros(h, w, dtype=torch.uint8)
    for k in paint_order(np.array([int(region.sum()) for _, region in regions], dtype=np.int64)):
        j, region = regions[k]
        out[region] = int(labels[j])
    if unassigned is not None and rects is not None:
        for j in range(chosen.shape[0]):
            if int(chosen[j]) < 0:
                out[rects[j] & (out == 0)] = int(unassigned)
    return out
