"""ResNet-50/101 DeepLab networks: DeepLab-v2 (the BANA/BBAM setting) and DeepLab-v3+.

The backbone is torchvision's ResNet v1.5 (the bottleneck's stride on its 3 x 3 conv) with
torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...),
so torchvision's ImageNet state dicts (``resnet101-63fe2227.pth``, ``resnet50-0676ba61.pth``, ...)
load into ``model.backbone`` as they are (``fc.*`` is left out). Strides are replaced by dilation
in the last stages, on every block of a dilated stage (DeepLab's practice).

Batch norm (``bn``): ``frozen`` (default) keeps the backbone's batch norm in eval mode with its
affine parameters frozen, through ``model.train()`` too (DeepLab-v2's practice: batches of 10-20
crops are too small to re-estimate ImageNet's statistics); ``train`` is ordinary batch norm;
``sync`` is ordinary batch norm that the trainer converts to ``SyncBatchNorm`` when it runs several
processes (:func:`convert_sync_batchnorm`). The DeepLab-v3+ head's batch norm (ASPP, decoder) starts
from scratch and always trains; DeepLab-v2's head has none.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from boxsup_ext.models.pretrained import load_module_strict, read_state_dict
from boxsup_ext.models.tiny import conv_bn_relu
from boxsup_ext.models.vgg import init_classifier, init_conv_weights
from boxsup_ext.utils import InputError

BN_MODES = ("frozen", "train", "sync")
# Blocks per stage (layer1..layer4) of each depth, as torchvision's resnet50 / resnet101.
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# torchvision's ImageNet files of each depth (V1 and V2 weights; same key names).
RESNET_IMAGENET_FILES = {
    50: ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    101: ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5: stride on ``conv2``), with a dilation for ``conv2``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """The convolutional part of torchvision's ResNet-50/101 (no ``avgpool``/``fc``), output stride
    ``encoder_stride`` (8: layer3 dilation 2 and layer4 dilation 4; 16: layer4 dilation 2; 32: none).

    ``forward`` returns ``(layer1, layer4)`` features: [B, 256, ceil(H/4), ceil(W/4)] and
    [B, 2048, ceil(H/s), ceil(W/s)].
    """

    def __init__(self, depth: int, encoder_stride: int = 8):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise InputError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
        if encoder_stride not in (8, 16, 32):
            raise InputError(f"model.encoder_stride must be 8, 16 or 32, got {encoder_stride}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Stride and dilation of layer1..layer4: a stage past the encoder stride trades its stride
        # for dilation (x2 per stage), on all of its blocks.
        settings, stride_so_far, dilation = [], 4, 1
        for index in range(4):
            stride = 1 if index == 0 else 2
            if stride_so_far * stride > encoder_stride:
                dilation *= stride
                stride = 1
            stride_so_far *= stride
            settings.append((stride, dilation))
        self.inplanes = 64
        blocks = RESNET_BLOCKS[depth]
        self.layer1 = self._make_layer(64, blocks[0], *settings[0])
        self.layer2 = self._make_layer(128, blocks[1], *settings[1])
        self.layer3 = self._make_layer(256, blocks[2], *settings[2])
        self.layer4 = self._make_layer(512, blocks[3], *settings[3])
        init_conv_weights(self)  # batch norm keeps its own ones / zeros

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


class ASPPClassifier(nn.Module):
    """DeepLab-v2's ASPP: one 3 x 3 dilated conv per rate from the features straight to class
    scores, summed. Initialised as DeepLab's fc8: N(0, 0.01) weights, zero biases."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            init_classifier(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ASPP(nn.Module):
    """DeepLab-v3's ASPP: a 1 x 1 conv, three 3 x 3 dilated convs and image pooling (each conv +
    BN + ReLU, ``channels`` wide), concatenated and projected to ``channels``, then dropout."""

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels, 1)] + [conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels, 1))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            raise InputError(
                "the DeepLab-v3+ image-pooling branch's batch norm needs at least 2 images per process in training "
                "(got 1); raise train.batch_size to 2 per process or more"
            )
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1)
        return self.dropout(self.project(out))


class ResNetDeepLab(nn.Module):
    """What the ResNet DeepLab networks share: ``backbone`` (:class:`ResNet`), ``num_classes``,
    the batch-norm mode ``bn`` (see the module docstring) and its ``train()`` override."""

    def __init__(self, num_classes: int, depth: int, bn: str, encoder_stride: int):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
        if bn not in BN_MODES:
            raise InputError(f"model.bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        self.num_classes = num_classes
        self.bn = bn
        self.backbone = ResNet(depth, encoder_stride)
        if bn == "frozen":
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetDeepLab":
        """``nn.Module.train``; with ``bn='frozen'`` the backbone's batch norm stays in eval mode."""
        super().train(mode)
        if self.bn == "frozen":
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


class DeepLabV2(ResNetDeepLab):
    """DeepLab-v2 on ResNet: output stride 8 and the summed ASPP classifier (rates 6/12/18/24).

    Input: float32 [B, 3, H, W], ImageNet-normalised RGB. Output: logits [B, num_classes,
    ceil(H / 8), ceil(W / 8)]. ``classifier`` is the ASPP (its four convs are DeepLab-v2's
    classifier, so they get ``train.classifier_lr_mult``); there is no separate 1 x 1 conv.
    """

    output_stride = 8
    rates = (6, 12, 18, 24)

    def __init__(self, num_classes: int, depth: int = 101, bn: str = "frozen"):
        super().__init__(num_classes, depth, bn, encoder_stride=8)
        self.classifier = ASPPClassifier(2048, num_classes, self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x)[1])

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the ASPP classifier for a freshly initialised one with ``num_classes`` outputs."""
        device = self.classifier.branches[0].weight.device
        self.classifier = ASPPClassifier(2048, num_classes, self.rates).to(device)
        self.num_classes = num_classes


class DeepLabV3Plus(ResNetDeepLab):
    """DeepLab-v3+ on ResNet: ASPP (1 x 1, rates 6/12/18 at encoder stride 16, doubled at 8, and
    image pooling; 256 channels, batch norm) and the decoder (layer1 projected to 48 channels,
    concatenated with the upsampled ASPP output, two 3 x 3 convs of 256), then a 1 x 1 conv
    ``classifier``.

    Input: float32 [B, 3, H, W], ImageNet-normalised RGB. Output: logits [B, num_classes,
    ceil(H / 4), ceil(W / 4)] (``output_stride`` 4, after the decoder).
    """

    output_stride = 4

    def __init__(self, num_classes: int, depth: int = 101, bn: str = "frozen", encoder_stride: int = 16, dropout: float = 0.5):
        if encoder_stride not in (8, 16):
            raise InputError(f"model.encoder_stride of DeepLab-v3+ must be 8 or 16, got {encoder_stride}")
        super().__init__(num_classes, depth, bn, encoder_stride)
        self.encoder_stride = encoder_stride
        self.aspp = ASPP(2048, tuple(r * 16 // encoder_stride for r in (6, 12, 18)), dropout=dropout)
        self.low_level = conv_bn_relu(256, 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256))
        self.classifier = nn.Conv2d(256, num_classes, kernel_size=1)
        for module in [self.aspp, self.low_level, self.decoder]:
            init_conv_weights(module)
        init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.backbone(x)
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([context, self.low_level(low)], dim=1)))

    def replace_classifier(self, num_classes: int) -> None:
        """Swap the classifier for a freshly initialised one with ``num_classes`` outputs."""
        self.classifier = nn.Conv2d(256, num_classes, kernel_size=1).to(self.classifier.weight.device)
        init_classifier(self.classifier)
        self.num_classes = num_classes


def load_resnet_imagenet(backbone: ResNet, source: str) -> None:
    """Fill ``backbone`` (weights and batch-norm statistics) from a torchvision ResNet ImageNet
    state dict of the same depth (``fc.*`` is ignored; ``num_batches_tracked``, absent from
    torchvision's older files, may be missing). Every problem (no file, not a state dict, a
    missing / unexpected key, a wrong shape) is one :class:`InputError` line naming
    ``model.pretrained``, the file and the key."""
    depth = backbone.depth
    files = " or ".join(RESNET_IMAGENET_FILES[depth])
    state = read_state_dict(source, f"a torchvision resnet{depth} state dict ({files})")
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    layer3_blocks = {key.split(".")[1] for key in state if key.startswith("layer3.")}
    other = next((d for d, blocks in RESNET_BLOCKS.items() if d != depth and len(layer3_blocks) == blocks[2]), None)
    hint = f"the file looks like a resnet{other} (use model.name resnet{other}_...); " if other else ""
    advice = f"{hint}expected torchvision resnet{depth} key names and shapes; give {files}"
    load_module_strict(backbone, state, "", source, advice, optional=("num_batches_tracked",))


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with its batch norm turned into ``SyncBatchNorm`` when it asks for it
    (``model.bn == 'sync'``), else ``model`` unchanged. The trainer calls it before wrapping the
    model in DistributedDataParallel; the conversion needs no process group and keeps the
    parameter objects. SyncBatchNorm only synchronises CUDA tensors: ``sync`` on a CPU is an error."""
    if getattr(model, "bn", None) != "sync":
        return model
    if device.type != "cuda":
        raise InputError("model.bn 'sync' needs CUDA (SyncBatchNorm does not synchronise CPU tensors); use model.bn=train or frozen")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _initialised(model: ResNetDeepLab, name: str, pretrained: Optional[str]) -> ResNetDeepLab:
    if pretrained:
        load_resnet_imagenet(model.backbone, pretrained)
    else:
        frozen = "; its frozen batch norm keeps the initial statistics, set model.bn=train" if model.bn == "frozen" else ""
        warnings.warn(f"{name} has no ImageNet weights (model.pretrained is empty): training from scratch{frozen}", stacklevel=3)
    return model


def resnet101_deeplabv2(num_classes: int, pretrained: Optional[str] = None, bn: str = "frozen") -> DeepLabV2:
    """DeepLab-v2 ResNet-101 (:class:`DeepLabV2`); ``pretrained``: a local torchvision resnet101
    ImageNet file (``resnet101-63fe2227.pth`` or ``resnet101-cd907fc2.pth``); ``bn``: frozen, train or sync."""
    return _initialised(DeepLabV2(num_classes, 101, bn), "resnet101_deeplabv2", pretrained)


def resnet50_deeplabv2(num_classes: int, pretrained: Optional[str] = None, bn: str = "frozen") -> DeepLabV2:
    """DeepLab-v2 ResNet-50 (:class:`DeepLabV2`); ``pretrained``: a local torchvision resnet50
    ImageNet file (``resnet50-0676ba61.pth`` or ``resnet50-11ad3fa6.pth``); ``bn``: frozen, train or sync."""
    return _initialised(DeepLabV2(num_classes, 50, bn), "resnet50_deeplabv2", pretrained)


def resnet101_deeplabv3plus(
    num_classes: int, pretrained: Optional[str] = None, bn: str = "frozen", encoder_stride: int = 16, dropout: float = 0.5
) -> DeepLabV3Plus:
    """DeepLab-v3+ ResNet-101 (:class:`DeepLabV3Plus`), encoder stride 16 (or 8), ``dropout``
    after the ASPP projection; ``pretrained`` and ``bn`` as :func:`resnet101_deeplabv2`."""
    return _initialised(DeepLabV3Plus(num_classes, 101, bn, encoder_stride, dropout), "resnet101_deeplabv3plus", pretrained)


def resnet50_deeplabv3plus(
    num_classes: int, pretrained: Optional[str] = None, bn: str = "frozen", encoder_stride: int = 16, dropout: float = 0.5
) -> DeepLabV3Plus:
    """DeepLab-v3+ ResNet-50 (:class:`DeepLabV3Plus`); arguments as :func:`resnet101_deeplabv3plus`
    with a resnet50 ImageNet file."""
    return _initialised(DeepLabV3Plus(num_classes, 50, bn, encoder_stride, dropout), "resnet50_deeplabv3plus", pretrained)
