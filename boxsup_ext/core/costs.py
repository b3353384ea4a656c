"""The return type of the fused proposal-costs op (``boxsup_ext.ops.proposal_costs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # a type hint only: the ground floor does not import torch
    import torch


class ProposalCosts(NamedTuple):
    """Per-candidate statistics of one image against its M boxes (see ``ops.proposal_costs``)."""

    area: "torch.Tensor"  # [N] int64, pixels
    bbox: "torch.Tensor"  # [N, 4] float32, tight box (x0, y0, x1, y1) half-open; zeros when empty
    iou_box: "torch.Tensor"  # [N, M] float32
    iou_mask: "torch.Tensor"  # [N, M] float32
    mean_ce: "torch.Tensor"  # [N, M] float32, +inf for an empty candidate
