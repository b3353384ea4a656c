"""Multi-scale and flip test-time averaging of a segmentation network's score maps.

The paper's BoxSup+ runs the network on the image resized by 0.8, 1.0 and 1.2, resizes every
score map bilinearly back to the image size and averages them. Score maps here are the network's
logits (pre-softmax class scores), averaged before any softmax.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.models import predict_logits
from boxsup_ext.utils import InputError

DEFAULT_SCALES: tuple[float, ...] = (1.0,)
PAPER_SCALES: tuple[float, ...] = (0.8, 1.0, 1.2)
MAX_SCALE = 4.0


def parse_scales(text: str) -> tuple[float, ...]:
    """Parse ``"0.8,1.0,1.2"`` into positive floats (the ``--scales`` argument)."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--scales must be comma-separated numbers such as 0.8,1.0,1.2, got {text!r}") from None
    if not scales or any(not s > 0 for s in scales):
        raise InputError(f"--scales needs at least one positive number, got {text!r}")
    if any(s > MAX_SCALE for s in scales):
        # Memory grows with the square of the scale: 1000 on a VOC image would need terabytes.
        raise InputError(f"--scales above {MAX_SCALE:g} are refused (memory grows with the square of the scale), got {text!r}; the paper uses 0.8,1.0,1.2")
    return scales


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def multiscale_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = False,
) -> torch.Tensor:
    """Average the model's score maps over input scales (and horizontal flips), at image size.

    For every scale s the batch is resized bilinearly (``align_corners=False``) to
    ``(max(1, round(H * s)), max(1, round(W * s)))``, the model's logits (any output stride) are
    resized bilinearly back to ``(H, W)`` (:func:`boxsup_ext.models.predict_logits`, the one
    forward pass of every inference); with ``flip`` the mirrored batch is run too and its
    scores mirrored back. The result is the plain mean of the ``len(scales) * (1 + flip)`` maps.

    Args:
        model: module mapping float [B, 3, h, w] to logits [B, C, h', w']; put it in eval mode
            and on the device of ``images`` first.
        images: float [B, 3, H, W], already normalised the way the model was trained.
        scales: positive resize factors; 1.0 is the image as given.
        flip: also average over the horizontally mirrored images.

    Returns:
        float32 [B, C, H, W] averaged logits, on the device of ``images``.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if not scales:
        raise InputError("scales must contain at least one factor")
    height, width = int(images.shape[2]), int(images.shape[3])
    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        if scale <= 0:
            raise InputError(f"scales must be positive, got {scale}")
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = _resize(images, size)
        for mirrored in (False, True) if flip else (False,):
            logits = predict_logits(model, scaled.flip(-1) if mirrored else scaled, (height, width))
            if mirrored:
                logits = logits.flip(-1)
            total = logits if total is None else total + logits
            count += 1
    assert total is not None
    return total / count
