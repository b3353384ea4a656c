"""DeepLab-LargeFOV VGG-16: the BoxSup paper's network (output stride 8).

Layer layout follows DeepLab-LargeFOV (Chen et al., ICLR 2015): 3 x 3 max pools with padding 1,
stride 2 for pool1-3 and stride 1 for pool4/pool5, conv5 dilated by 2, fc6 a 3 x 3 convolution with
1024 channels dilated by 12, fc7 a 1 x 1 convolution with 1024 channels, fc8 a 1 x 1 classifier.
``features`` keeps torchvision's ``vgg16`` module indices, so an ImageNet state dict in torchvision
key names (``vgg16-397923af.pth``) loads into it directly.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Mapping, Optional

import torch
from torch import nn

from boxsup_ext.models.pretrained import expect_tensor, read_state_dict
from boxsup_ext.utils import InputError

VGG16_IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

# (out_channels or "M" for a pool) per torchvision ``vgg16`` config "D".
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# Index into ``features`` of every conv layer, as torchvision numbers them.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _largefov_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    pool_count = 0
    for item in _VGG16_CFG:
        if item == "M":
            pool_count += 1
            stride = 2 if pool_count <= 3 else 1
            layers.append(nn.MaxPool2d(kernel_size=3, stride=stride, padding=1))
            continue
        dilation = 2 if pool_count == 4 else 1  # conv5_x sit after pool4
        layers.append(nn.Conv2d(in_channels, item, kernel_size=3, padding=dilation, dilation=dilation))
        layers.append(nn.ReLU(inplace=True))
        in_channels = item
    return nn.Sequential(*layers)


class VGG16LargeFOV(nn.Module):
    """DeepLab-LargeFOV on VGG-16.

    Input: float32 [B, 3, H, W], ImageNet-normalised RGB. Output: logits float32
    [B, num_classes, ceil(H / 8), ceil(W / 8)] (``output_stride`` = 8).
    """

    output_stride = 8

    def __init__(self, num_classes: int, fc_channels: int = 1024, fc6_dilation: int = 12, dropout: float = 0.5):
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
        self.num_classes = num_classes
        self.fc_channels = fc_channels
        self.features = _largefov_features()
        # DeepLab-LargeFOV averages over 3 x 3 after pool5 before fc6.
        self.pool5a = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(512, fc_channels, kernel_size=3, padding=fc6_dilation, dilation=fc6_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.drop6 = nn.Dropout2d(dropout)
        self.drop7 = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(fc_channels, num_classes, kernel_size=1)
        self._init_fresh()

    def _init_fresh(self) -> None:
        init_conv_weights(self)
        init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool5a(self.features(x))
        x = self.drop6(torch.relu(self.fc6(x)))
        x = self.drop7(torch.relu(self.fc7(x)))
        return self.classifier(x)

    def replace_classifier(self, num_classes: int) -> None:
        """Swap fc8 for a freshly initialised one with ``num_classes`` outputs."""
        self.classifier = nn.Conv2d(self.fc_channels, num_classes, kernel_size=1).to(self.classifier.weight.device)
        init_classifier(self.classifier)
        self.num_classes = num_classes


def init_conv_weights(module: nn.Module) -> None:
    """He (fan-out, ReLU) normal weights and zero biases for every conv inside ``module``, in
    ``module.modules()`` order: the fresh initialisation of every network's convolutions."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


def init_classifier(conv: nn.Conv2d) -> None:
    """DeepLab's fc8 initialisation: N(0, 0.01) weights, zero bias."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


_VGG16_FILE = "a torchvision vgg16 state dict (.pth)"
_VGG16_ADVICE = "expected torchvision vgg16 key names and shapes (VGG-16); give vgg16-397923af.pth or 'imagenet'"


def _read_state_dict(source: str) -> Mapping[str, torch.Tensor]:
    if source in ("imagenet", "torchvision", "download"):
        try:
            return torch.hub.load_state_dict_from_url(VGG16_IMAGENET_URL, map_location="cpu", progress=True)
        except Exception as err:  # offline, proxy, corrupt cache: all fixable by giving a local file
            raise InputError(
                f"could not fetch VGG-16 ImageNet weights from {VGG16_IMAGENET_URL} ({type(err).__name__}); "
                "download vgg16-397923af.pth and pass its path as model.pretrained"
            ) from None
    return read_state_dict(source, _VGG16_FILE)


def _expect(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    return expect_tensor(state, key, shape, source, _VGG16_ADVICE)


def load_vgg16_imagenet(model: VGG16LargeFOV, source: str, fc_init: str = "deeplab") -> None:
    """Initialise ``model`` from a torchvision-format VGG-16 ImageNet state dict.

    Args:
        model: the network to fill in place.
        source: path of a ``.pth`` state dict with torchvision ``vgg16`` key names
            (``features.0.weight`` ... ``classifier.6.bias``), or ``"imagenet"`` to fetch
            ``vgg16-397923af.pth`` through torch.hub's cache.
        fc_init: ``"deeplab"`` converts fc6/fc7 from the fully connected layers as DeepLab did
            (every 4th output filter; fc6's 7 x 7 kernel subsampled at rows/columns 0, 3, 6;
            fc7 every 4th input too) — this needs ``fc_channels`` = 1024; ``"fresh"`` keeps
            fc6/fc7 randomly initialised. The classifier (fc8) is always fresh.
    """
    if fc_init not in ("deeplab", "fresh"):
        raise InputError(f"model.fc_init must be 'deeplab' or 'fresh', got {fc_init!r}")
    state = _read_state_dict(source)
    new_state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for index in VGG16_CONV_INDICES:
        conv = model.features[index]
        for name in ("weight", "bias"):
            key = f"features.{index}.{name}"
            new_state[key] = _expect(state, key, tuple(getattr(conv, name).shape), source).float()
    if fc_init == "deeplab":
        if model.fc_channels != 1024:
            raise InputError("model.fc_init='deeplab' needs 1024 fc channels; use fc_init='fresh' for other widths")
        fc6_w = _expect(state, "classifier.0.weight", (4096, 512 * 7 * 7), source).float()
        fc6_b = _expect(state, "classifier.0.bias", (4096,), source).float()
        fc7_w = _expect(state, "classifier.3.weight", (4096, 4096), source).float()
        fc7_b = _expect(state, "classifier.3.bias", (4096,), source).float()
        new_state["fc6.weight"] = fc6_w.view(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous()
        new_state["fc6.bias"] = fc6_b[::4].contiguous()
        new_state["fc7.weight"] = fc7_w[::4, ::4].contiguous().view(1024, 1024, 1, 1)
        new_state["fc7.bias"] = fc7_b[::4].contiguous()
    model.load_state_dict(new_state, strict=False)


def vgg16_largefov(
    num_classes: int,
    pretrained: Optional[str] = None,
    fc_init: str = "deeplab",
    fc_channels: int = 1024,
    dropout: float = 0.5,
) -> VGG16LargeFOV:
    """Build DeepLab-LargeFOV VGG-16, initialised from ImageNet when ``pretrained`` is given.

    ``pretrained`` is a local torchvision-format state dict path or ``"imagenet"`` (download via
    torch.hub's cache). Without it the network trains from scratch and a warning says so.
    """
    model = VGG16LargeFOV(num_classes, fc_channels=fc_channels, dropout=dropout)
    if pretrained:
        load_vgg16_imagenet(model, pretrained, fc_init=fc_init)
    else:
        warnings.warn(
            "vgg16_largefov has no ImageNet weights (model.pretrained is empty): training from scratch",
            stacklevel=2,
        )
    return model
