"""Segmentation networks: ``vgg16_largefov`` (the paper's), ``resnet101_deeplabv2`` /
``resnet50_deeplabv2`` and ``resnet101_deeplabv3plus`` / ``resnet50_deeplabv3plus`` (what later
box-supervised work reports, see :mod:`boxsup_ext.models.resnet`) and ``tiny_fcn`` (CPU demos, tests).

Every model takes ImageNet-normalised RGB float32 [B, 3, H, W] and returns logits
[B, num_classes, ceil(H / s), ceil(W / s)] with ``s = model.output_stride``; it has
``num_classes``, a ``classifier`` (a 1 x 1 conv; DeepLab-v2's summed ASPP convs) whose learning
rate is scaled by ``train.classifier_lr_mult``, and ``replace_classifier(num_classes)``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.config import ModelConfig
from boxsup_ext.checkpoints import checkpoint_state_dict, read_model_checkpoint
from boxsup_ext.models.resnet import (
    DeepLabV2,
    DeepLabV3Plus,
    convert_sync_batchnorm,
    load_resnet_imagenet,
    resnet50_deeplabv2,
    resnet50_deeplabv3plus,
    resnet101_deeplabv2,
    resnet101_deeplabv3plus,
)
from boxsup_ext.models.tiny import TinyFCN, tiny_fcn
from boxsup_ext.models.vgg import VGG16LargeFOV, load_vgg16_imagenet, vgg16_largefov
from boxsup_ext.utils import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16_largefov": vgg16_largefov,
    "resnet101_deeplabv2": resnet101_deeplabv2,
    "resnet50_deeplabv2": resnet50_deeplabv2,
    "resnet101_deeplabv3plus": resnet101_deeplabv3plus,
    "resnet50_deeplabv3plus": resnet50_deeplabv3plus,
    "tiny_fcn": tiny_fcn,
}
# Builder arguments that only say how to initialise; a checkpoint does not need them to rebuild.
_INIT_ONLY_ARGS = ("pretrained", "fc_init")

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "DeepLabV2",
    "DeepLabV3Plus",
    "TinyFCN",
    "VGG16LargeFOV",
    "build_model",
    "convert_sync_batchnorm",
    "image_to_tensor",
    "init_from_checkpoint",
    "load_model_from_checkpoint",
    "load_resnet_imagenet",
    "load_vgg16_imagenet",
    "model_from_config",
    "model_meta",
    "normalize_images",
    "predict_logits",
    "resnet101_deeplabv2",
    "resnet101_deeplabv3plus",
    "resnet50_deeplabv2",
    "resnet50_deeplabv3plus",
    "tiny_fcn",
    "unwrap_model",
    "vgg16_largefov",
]


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a model by name (a key of :data:`MODELS`) with ``num_classes`` outputs.

    ``kwargs`` go to the builder: for ``vgg16_largefov`` ``pretrained`` (path or ``"imagenet"``),
    ``fc_init`` (``"deeplab"``/``"fresh"``), ``fc_channels``, ``dropout``; for the ResNets
    ``pretrained`` (a torchvision ImageNet file), ``bn`` (``frozen``/``train``/``sync``), for
    DeepLab-v3+ also ``encoder_stride`` (16/8) and ``dropout``; for ``tiny_fcn``
    ``width``, ``dropout``, ``pretrained`` (a ``python -m boxsup_ext.pretrain`` file). The result records its own rebuild recipe in ``model.build_args``.
    """
    accepted = _builder_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(f"model {name!r} takes no argument(s) {unknown}; it accepts {sorted(accepted)}")
    model = MODELS[name](num_classes, **kwargs)
    model.build_args = {"name": name, "kwargs": {k: v for k, v in kwargs.items() if k not in _INIT_ONLY_ARGS}}
    return model


def model_from_config(cfg: Any, num_classes: int) -> nn.Module:
    """The network a config's ``model:`` section (``ModelConfig``) describes, with ``num_classes``
    outputs: the builder of ``cfg.name`` takes the fields of the section its arguments name; with
    ``cfg.init_checkpoint`` it starts from that trainer checkpoint (see :func:`init_from_checkpoint`).
    An empty ``model.bn`` takes the model's own batch norm; a model without a ``bn`` argument
    (``tiny_fcn`` always trains its batch norm, ``vgg16_largefov`` has none) refuses any other, and a
    model without an ``encoder_stride`` (all but DeepLab-v3+) refuses a value other than the default."""
    arguments = _builder_arguments(cfg.name)
    if cfg.bn and "bn" not in arguments:
        raise InputError(
            f"model.bn={cfg.bn} applies to the ResNet models only; {cfg.name} has no batch-norm choice "
            "(tiny_fcn always trains its batch norm, vgg16_largefov has none): leave model.bn empty"
        )
    if cfg.encoder_stride != ModelConfig.encoder_stride and "encoder_stride" not in arguments:
        raise InputError(
            f"model.encoder_stride={cfg.encoder_stride} applies to DeepLab-v3+ only; {cfg.name} has a fixed output stride "
            f"({ModelConfig.encoder_stride} is the default and means nothing to it): leave model.encoder_stride unset"
        )
    kwargs = {argument: getattr(cfg, argument) for argument in arguments if not (argument == "bn" and not cfg.bn)}
    model = build_model(cfg.name, num_classes, **kwargs)
    if cfg.init_checkpoint:
        init_from_checkpoint(model, Path(cfg.init_checkpoint), cfg.replace_classifier)
    return model


def _builder_arguments(name: str) -> list[str]:
    if name not in MODELS:
        raise InputError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}")
    return [argument for argument in inspect.signature(MODELS[name]).parameters if argument != "num_classes"]


def init_from_checkpoint(model: nn.Module, path: Path, replace_classifier: bool = False) -> None:
    """Load a trainer checkpoint's weights into ``model`` (``model.init_checkpoint``); with
    ``replace_classifier`` the checkpoint's classifier is left out (another class count)."""
    checkpoint = read_model_checkpoint(path, "model.init_checkpoint")
    state = checkpoint_state_dict(checkpoint)
    name = model.build_args["name"]
    if replace_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise InputError(f"model.init_checkpoint {path} does not match model {name!r} (keys {unexpected or missing})")
        return
    saved_classes = checkpoint["model_meta"]["num_classes"]
    if saved_classes != model.num_classes:
        raise InputError(
            f"model.init_checkpoint {path} has {saved_classes} classes, the data {model.num_classes}; "
            "set model.replace_classifier=true to fine-tune with a new classifier"
        )
    model.load_state_dict(state)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (else ``model``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The ``model_meta`` dict stored in checkpoints: enough to rebuild ``model`` and feed it.

    Keys: ``name``, ``num_classes``, ``kwargs`` (architecture arguments), ``output_stride``,
    ``mean`` / ``std`` (input normalisation, RGB in [0, 1] units), plus ``extra`` (e.g.
    ``class_names``).
    """
    module = unwrap_model(model)
    build_args = getattr(module, "build_args", None)
    if build_args is None:
        raise ValueError("model was not made by build_model; its meta cannot be recorded")
    meta = {
        "name": build_args["name"],
        "num_classes": int(module.num_classes),
        "kwargs": dict(build_args["kwargs"]),
        "output_stride": int(module.output_stride),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    meta.update(extra)
    return meta


def load_model_from_checkpoint(
    path: Union[str, Path, bytes], map_location: Union[str, torch.device] = "cpu", name: Optional[str] = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a trainer checkpoint (``checkpoints/best.pt`` or ``latest.pt``).

    ``path`` may be the checkpoint file's bytes (see :func:`boxsup_ext.checkpoints.read_checkpoint_bytes`; ``name`` then
    names the file in messages), so that a caller can hash exactly the weights it loads.

    Returns ``(model, meta)``: the model in eval mode on ``map_location`` with its weights loaded,
    and the checkpoint's ``model_meta`` dict (see :func:`model_meta`).
    """
    checkpoint = read_model_checkpoint(path, name=name)  # on the CPU: the device is the model's business, below
    meta = checkpoint["model_meta"]
    model = build_model(meta["name"], meta["num_classes"], **meta.get("kwargs", {}))
    model.load_state_dict(checkpoint_state_dict(checkpoint))
    model.to(map_location).eval()
    return model, meta


def normalize_images(images: torch.Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """RGB uint8 [..., H, W, 3] -> normalised float32 [..., 3, H, W] on the same device (ImageNet
    mean/std, in [0, 1] units, unless given): the one input normalisation of every model."""
    mean_t = torch.tensor(list(mean or IMAGENET_MEAN), dtype=torch.float32, device=images.device).view(3, 1, 1)
    std_t = torch.tensor(list(std or IMAGENET_STD), dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.movedim(-1, -3).float().div_(255.0) - mean_t) / std_t


def image_to_tensor(image: np.ndarray, mean: Optional[tuple] = None, std: Optional[tuple] = None) -> torch.Tensor:
    """RGB uint8 [H, W, 3] NumPy image -> normalised float32 [3, H, W] (see :func:`normalize_images`)."""
    return normalize_images(torch.from_numpy(np.array(image, dtype=np.uint8)), mean, std)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Full-image logits of normalised images [3, H, W] or [B, 3, H, W], bilinearly resized to
    ``size`` (default (H, W)). Returns float32 [C, h, w] or [B, C, h, w] on the images' device.
    The caller sets eval mode."""
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    logits = model(batch)
    if logits.dim() != 4 or logits.shape[0] != batch.shape[0]:
        raise InputError(f"model must return logits [B, C, h, w], got {list(logits.shape)}")
    out_size = tuple(size or batch.shape[-2:])
    logits = logits.float()
    if tuple(logits.shape[-2:]) != out_size:
        logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits if images.dim() == 4 else logits[0]
