"""Reading ``model.pretrained`` state dicts: the file, its keys and their shapes, each problem one line.

Every initialisation goes through here: a torchvision VGG-16 ImageNet file for ``vgg16_largefov``
(:func:`boxsup_ext.models.vgg.load_vgg16_imagenet`), a torchvision ResNet file for the ResNet
DeepLab backbones (:func:`boxsup_ext.models.resnet.load_resnet_imagenet`) and a ``python -m
boxsup_ext.pretrain`` file for the backbone of ``tiny_fcn`` (both through :func:`load_module_strict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from boxsup_ext.utils import InputError

WHAT = "model.pretrained"


def read_state_dict(source: str, expected: str) -> Mapping[str, torch.Tensor]:
    """The state dict in file ``source`` (a ``{"state_dict": ...}`` wrapper is unwrapped), loaded on
    the CPU with ``weights_only=True``. ``expected`` says what file to give, e.g. ``"a torchvision
    vgg16 state dict (.pth)"``.

    Raises:
        InputError: the file is missing or unreadable, or holds something other than a mapping of
            names to tensors.
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"{WHAT}: no such file {path}; give {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{WHAT}: {path} is not a readable torch state dict ({err.__class__.__name__}); give {expected}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InputError(f"{WHAT}: {path} holds a {type(state).__name__}, not a state dict; give {expected}")
    odd = next((key for key, value in state.items() if not isinstance(value, torch.Tensor)), None)
    if odd is not None:
        raise InputError(
            f"{WHAT}: {path} key {odd!r} holds a {type(state[odd]).__name__}, not a tensor: not a state dict; give {expected}"
        )
    return state


def expect_tensor(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], source: str, advice: str) -> torch.Tensor:
    """``state[key]``, checked to exist and to have ``shape``; ``advice`` ends the error line."""
    if key not in state:
        raise InputError(f"{WHAT}: {source} lacks key {key!r}; {advice}")
    tensor = state[key]
    if tuple(tensor.shape) != shape:
        raise InputError(f"{WHAT}: {source} key {key!r} has shape {tuple(tensor.shape)}, expected {shape}; {advice}")
    return tensor


def load_module_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, source: str, advice: str, optional: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``module`` (parameters and buffers, e.g. batch-norm running statistics),
    whose keys in ``state`` start with ``prefix`` (``"features."``): every key must be there with
    the module's shape, and ``state`` must hold no other key. A module key ending with one of
    ``optional`` (``"num_batches_tracked"``) may be absent; it then keeps the module's value.

    Raises:
        InputError: one line naming the file, the first missing, misshapen or unexpected key, and
            ``advice``.
    """
    own = module.state_dict()
    loaded = {
        key: value if optional and key.endswith(optional) and prefix + key not in state
        else expect_tensor(state, prefix + key, tuple(value.shape), source, advice)
        for key, value in own.items()
    }
    unexpected = [key for key in state if not (key.startswith(prefix) and key[len(prefix) :] in own)]
    if unexpected:
        raise InputError(f"{WHAT}: {source} has unexpected key {unexpected[0]!r} ({len(unexpected)} in all); {advice}")
    module.load_state_dict(loaded, strict=True)
