from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.evaluation.multiscale import multiscale_logits, parse_scales
from boxsup_ext.utils import InputError


class StridedNet(nn.Module):
    """Logits at output stride 2, position dependent so flips and resizes matter."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def _manual(model, images, scales, flip):
    height, width = images.shape[-2:]
    maps = []
    for s in scales:
        size = (max(1, round(height * s)), max(1, round(width * s)))
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out = F.interpolate(model(x), size=(height, width), mode="bilinear", align_corners=False)
        maps.append(out)
        if flip:
            out = model(x.flip(3))
            maps.append(F.interpolate(out, size=(height, width), mode="bilinear", align_corners=False).flip(3))
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((0.8, 1.0, 1.2), False), ((0.5, 1.0), True)])
def test_equals_manual_average(scales, flip):
    model = StridedNet().eval()
    images = torch.randn(2, 3, 13, 18)
    with torch.no_grad():
        expected = _manual(model, images, scales, flip)
    got = multiscale_logits(model, images, scales, flip)
    assert got.shape == (2, 3, 13, 18) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flip_averaging_makes_symmetric_net_output_mirror_consistent():
    model = StridedNet().eval()
    images = torch.randn(1, 3, 8, 10)
    a = multiscale_logits(model, images, (1.0,), flip=True)
    b = multiscale_logits(model, images.flip(3), (1.0,), flip=True).flip(3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    model = StridedNet().eval()
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        multiscale_logits(model, torch.zeros(3, 8, 8))
    assert parse_scales("0.8,1,1.2") == (0.8, 1.0, 1.2)
    with pytest.raises(InputError, match="--scales"):
        parse_scales("0.8,-1")
