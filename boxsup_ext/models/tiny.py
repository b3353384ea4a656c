"""A small fully convolutional network with the same interface as ``vgg16_largefov``, for CPU."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from boxsup_ext.models.pretrained import load_module_strict, read_state_dict
from boxsup_ext.models.vgg import init_classifier, init_conv_weights
from boxsup_ext.utils import InputError


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding for its dilation) + batch norm + ReLU, as ``Sequential`` 0/1/2."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=dilation * (kernel_size // 2), dilation=dilation, bias=False
        ),
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
            conv_bn_relu(3, width),
            conv_bn_relu(width, width, stride=2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 2 * width, dilation=2),
            conv_bn_relu(2 * width, 2 * width, dilation=4),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.fc_channels, num_classes, kernel_size=1)
        init_conv_weights(self.features)
        init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the classifier for a freshly initialised one with ``num_classes`` outputs."""
        self.classifier = nn.Conv2d(self.fc_channels, num_classes, kernel_size=1).to(self.classifier.weight.device)
        init_classifier(self.classifier)
        self.num_classes = num_classes


def load_tiny_backbone(model: TinyFCN, source: str) -> None:
    """Fill ``model.features`` (weights and batch-norm statistics) from a ``python -m
    boxsup_ext.pretrain`` file, strictly; the classifier stays fresh. Every problem (no file, not
    a state dict, a missing / unexpected key, another width) is one :class:`InputError` line."""
    width = model.fc_channels // 2
    file = f"a state dict written by python -m boxsup_ext.pretrain --width {width}"
    state = read_state_dict(source, file)
    first = state.get("features.0.0.weight")
    made_with = ""
    if first is not None and first.dim() == 4 and first.shape[0] != width:
        made_with = f"the file was pretrained with --width {first.shape[0]}: set model.width={first.shape[0]} or "
    advice = f"{made_with}pretrain for tiny_fcn with python -m boxsup_ext.pretrain --width {width}"
    load_module_strict(model.features, state, "features.", source, advice)


def tiny_fcn(num_classes: int, width: int = 16, dropout: float = 0.1, pretrained: Optional[str] = None) -> TinyFCN:
    """Build :class:`TinyFCN`; with ``pretrained`` (a ``python -m boxsup_ext.pretrain`` file of the
    same ``width``) its backbone starts from those weights (see :func:`load_tiny_backbone`)."""
    model = TinyFCN(num_classes, width=width, dropout=dropout)
    if pretrained:
        load_tiny_backbone(model, pretrained)
    return model
