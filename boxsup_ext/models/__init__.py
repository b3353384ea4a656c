"""Segmentation networks: ``vgg16_largefov`` (the paper's) and ``tiny_fcn`` (CPU demos, tests).

Every model takes ImageNet-normalised RGB float32 [B, 3, H, W] and returns logits
[B, num_classes, ceil(H / s), ceil(W / s)] with ``s = model.output_stride``; it has
``num_classes``, a 1 x 1 conv ``classifier`` and ``replace_classifier(num_classes)``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.models.tiny import TinyFCN, tiny_fcn
from boxsup_ext.models.vgg import VGG16LargeFOV, load_vgg16_imagenet, vgg16_largefov
from boxsup_ext.utils import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS: dict[str, Callable[..., nn.Module]] = {"vgg16_largefov": vgg16_largefov, "tiny_fcn": tiny_fcn}
# Builder arguments that only say how to initialise; a checkpoint does not need them to rebuild.
_INIT_ONLY_ARGS = ("pretrained", "fc_init")

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "TinyFCN",
    "VGG16LargeFOV",
    "build_model",
    "image_to_tensor",
    "load_checkpoint_file",
    "load_model_from_checkpoint",
    "load_vgg16_imagenet",
    "model_meta",
    "predict_logits",
    "tiny_fcn",
    "vgg16_largefov",
]


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a model by name (``vgg16_largefov`` or ``tiny_fcn``) with ``num_classes`` outputs.

    ``kwargs`` go to the builder: for ``vgg16_largefov`` ``pretrained`` (path or ``"imagenet"``),
    ``fc_init`` (``"deeplab"``/``"fresh"``), ``fc_channels``, ``dropout``; for ``tiny_fcn``
    ``width``, ``dropout``. The result records its own rebuild recipe in ``model.build_args``.
    """
    if name not in MODELS:
        raise InputError(f"model.name: unknown model {name!r}; choose one of {sorted(MODELS)}")
    builder = MODELS[name]
    accepted = set(inspect.signature(builder).parameters) - {"num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise InputError(f"model {name!r} takes no argument(s) {unknown}; it accepts {sorted(accepted)}")
    model = builder(num_classes, **kwargs)
    model.build_args = {"name": name, "kwargs": {k: v for k, v in kwargs.items() if k not in _INIT_ONLY_ARGS}}
    return model


def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The ``model_meta`` dict stored in checkpoints: enough to rebuild ``model`` and feed it.

    Keys: ``name``, ``num_classes``, ``kwargs`` (architecture arguments), ``output_stride``,
    ``mean`` / ``std`` (input normalisation, RGB in [0, 1] units), plus ``extra`` (e.g.
    ``class_names``).
    """
    module = model.module if hasattr(model, "module") else model
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
    path: Union[str, Path], map_location: Union[str, torch.device] = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in a trainer checkpoint (``checkpoints/best.pt`` or ``latest.pt``).

    Returns ``(model, meta)``: the model in eval mode on ``map_location`` with its weights loaded,
    and the checkpoint's ``model_meta`` dict (see :func:`model_meta`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; give a run's checkpoints/best.pt or latest.pt")
    checkpoint = load_checkpoint_file(path)  # on the CPU: the device is the model's business, below
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_meta" not in checkpoint:
        raise InputError(f"checkpoint {path} lacks 'model'/'model_meta'; it was not written by boxsup_ext.train")
    meta = checkpoint["model_meta"]
    model = build_model(meta["name"], meta["num_classes"], **meta.get("kwargs", {}))
    state = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    model.load_state_dict(state)
    model.to(map_location).eval()
    return model, meta


def load_checkpoint_file(path: Union[str, Path], map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: only tensors and plain types are rebuilt, so a
    file that would run code (a pickle with ``__reduce__``) is refused. Errors are one line."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("Unsupported global: ", 1)[-1].split(" was not an allowed global")[0].splitlines()[0][:120]
        raise InputError(
            f"checkpoint {path} holds objects other than tensors and plain types ({detail}); refusing to load it "
            "(loading a checkpoint never runs code); use a checkpoint written by boxsup_ext.train"
        ) from None
    except Exception as err:
        raise InputError(f"checkpoint {path} is not readable ({err.__class__.__name__}); is the file complete?") from None


def image_to_tensor(image: np.ndarray, mean: Optional[tuple] = None, std: Optional[tuple] = None) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalised float32 [3, H, W] (ImageNet mean/std unless given)."""
    mean_t = torch.tensor(mean or IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std or IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return (tensor - mean_t) / std_t


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Full-image logits of one normalised image [3, H, W], bilinearly resized to ``size`` (default
    (H, W)). Returns float32 [C, h, w] on the image's device. The caller sets eval mode."""
    logits = model(image.unsqueeze(0))
    out_size = size or tuple(image.shape[-2:])
    logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
    return logits[0]
