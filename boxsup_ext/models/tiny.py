"""A small fully convolutional network with the same interface as ``vgg16_largefov``, for CPU."""

from __future__ import annotations

import torch
from torch import nn

from boxsup_ext.models.vgg import init_classifier
from boxsup_ext.utils import InputError


def _conv(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyFCN(nn.Module):
    """Four-stage FCN with output stride 4 and a dilated context block.

    Input: float32 [B, 3, H, W], ImageNet-normalised RGB. Output: logits float32
    [B, num_classes, ceil(H / 4), ceil(W / 4)]. ``width`` sets the channel count of the first stage
    (later stages use 2x). Batch norm after every convolution (CPU training from scratch needs it);
    under DistributedDataParallel its running statistics follow rank 0's.
    """

    output_stride = 4

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
        if width < 1:
            raise InputError(f"model.width must be positive, got {width}")
        self.num_classes = num_classes
        self.fc_channels = 2 * width
        self.features = nn.Sequential(
            _conv(3, width),
            _conv(width, width, stride=2),
            _conv(width, 2 * width),
            _conv(2 * width, 2 * width, stride=2),
            _conv(2 * width, 2 * width, dilation=2),
            _conv(2 * width, 2 * width, dilation=4),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.fc_channels, num_classes, kernel_size=1)
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the classifier for a freshly initialised one with ``num_classes`` outputs."""
        self.classifier = nn.Conv2d(self.fc_channels, num_classes, kernel_size=1).to(self.classifier.weight.device)
        init_classifier(self.classifier)
        self.num_classes = num_classes


def tiny_fcn(num_classes: int, width: int = 16, dropout: float = 0.1) -> TinyFCN:
    """Build :class:`TinyFCN`."""
    return TinyFCN(num_classes, width=width, dropout=dropout)
