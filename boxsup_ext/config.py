"""Trainer configuration: one dataclass tree, loaded from YAML, overridden with ``--set key=value``.

A YAML file gives any subset of the keys below; missing keys keep their defaults (the paper's
settings). Unknown keys and values of the wrong type are one-line :class:`InputError` s that name
the key. ``data.train`` is a list of sources; address its items by index (``data.train.0.root=...``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from boxsup_ext.data import KINDS as DATASET_KINDS  # the readers' one list
from boxsup_ext.utils import InputError, atomic_write

MODES = ("boxsup", "boxsup_greedy", "mask", "rectangles", "grabcut")
# The modes that relabel the box images every epoch with the network (the others label them once).
RELABELED_MODES = ("boxsup", "boxsup_greedy")
# A training crop's side in pixels. VOC images are 500 px and the paper crops 321; 4096 is already
# ~200 MB of input per image for a batch of 20 before any activation, and a crop of 10^6 would ask
# for terabytes.
MAX_CROP_SIZE = 4096
# Random rescaling factors beyond this blow a VOC image up to gigapixels.
MAX_SCALE = 8.0


@dataclass
class SourceConfig:
    """One dataset split: where it is, how it is supervised and which proposal store it uses.

    Each field's docstring (the string below it) is its documentation; ``docs/configuration.md``
    is generated from them (``python -m boxsup_ext.config_docs``)."""

    kind: str = "voc"
    """Dataset reader: ``voc``, ``voc07`` (boxes only), ``coco``, ``folder`` or ``synthetic`` (VOC layout)."""
    root: str = ""
    """Dataset folder (VOC: the ``VOC2012`` folder; COCO: the folder holding ``annotations/``); for ``data.val`` empty means no validation."""
    split: str = "train"
    """Split name (VOC: ``train``, ``val``, ``trainval``, ``trainaug``; COCO: ``train2017``, ...)."""
    supervision: str = "auto"
    """``auto`` (as the dataset's records say), ``box`` or ``mask`` (forced for every image), or ``semi`` (masks for the ids in ``mask_list``, boxes for the rest)."""
    proposals: str = ""
    """Proposal store directory used by the box-supervised images: the candidates for ``boxsup``, the rectangle / GrabCut store for those baselines."""
    limit: int = 0
    """Use only the first N images (0 = all)."""
    mask_list: str = ""
    """Split-list file of the ids that keep their masks under ``supervision: semi`` (e.g. VOC's 1,464 ``train.txt``)."""
    categories: str = "voc20"
    """COCO only: ``voc20`` (the 20 PASCAL classes) or ``all80``."""


@dataclass
class DataConfig:
    """Training sources, the validation split and augmentation."""

    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Training sources, a list; address an item by index (``--set data.train.1.root=...`` appends a second)."""
    val: SourceConfig = field(default_factory=lambda: SourceConfig(split="val", supervision="mask"))
    """Validation split (masks); ``val.root`` empty: no validation."""
    crop_size: int = 321
    """Side of the random square training crop, in pixels (the paper: 321)."""
    scale_min: float = 0.5
    """Smallest random rescaling factor of a training image."""
    scale_max: float = 1.5
    """Largest random rescaling factor of a training image (at most 8)."""
    flip: bool = True
    """Random horizontal flip of training crops."""
    workers: int = 2
    """DataLoader worker processes (0 = load in the main process)."""
    skip_bad: bool = False
    """Leave out broken images/objects with a warning instead of stopping (``--skip-bad``)."""


@dataclass
class ModelConfig:
    """The segmentation network and its initialisation."""

    name: str = "vgg16_largefov"
    """Network: ``vgg16_largefov`` (DeepLab-LargeFOV VGG-16, the paper's), ``resnet101_deeplabv2`` / ``resnet50_deeplabv2`` (DeepLab-v2: output stride 8, summed ASPP classifier at rates 6/12/18/24, the setting of later box-supervised work), ``resnet101_deeplabv3plus`` / ``resnet50_deeplabv3plus`` (DeepLab-v3+: ASPP with image pooling and the decoder, logits at stride 4) or ``tiny_fcn`` (small, for CPU runs)."""
    num_classes: int = 0
    """Classes including background; 0 takes the dataset's count."""
    pretrained: str = ""
    """Backbone initialisation; empty trains from scratch. ``vgg16_largefov``: ImageNet weights, the path of a torchvision VGG-16 state dict (``vgg16-397923af.pth``) or ``imagenet`` (download). ``tiny_fcn``: a file written by ``python -m boxsup_ext.pretrain`` (image-level pretraining on disjoint synthetic classes) with the same ``width``; the classifier stays fresh. ResNet models: a local torchvision ImageNet file of the same depth (``resnet101-63fe2227.pth`` or ``resnet101-cd907fc2.pth``; ``resnet50-0676ba61.pth`` or ``resnet50-11ad3fa6.pth``; ``fc.*`` is ignored)."""
    fc_init: str = "deeplab"
    """``deeplab`` converts the ImageNet fc6/fc7 to convolutions as DeepLab did (needs ``fc_channels`` 1024); ``fresh`` initialises them randomly."""
    fc_channels: int = 1024
    """Channels of the fc6/fc7 convolutions of ``vgg16_largefov``."""
    width: int = 16
    """Channel width of ``tiny_fcn``."""
    dropout: float = 0.5
    """Dropout probability, in [0, 1]: after fc6 and fc7 (``vgg16_largefov``), after the ASPP projection (DeepLab-v3+), before the classifier (``tiny_fcn``); DeepLab-v2 has none."""
    bn: str = ""
    """Batch norm of the ResNet models: ``frozen`` (eval mode, affine parameters fixed, through training too: DeepLab-v2's practice for batches of 10-20), ``train`` (ordinary batch norm) or ``sync`` (ordinary, synchronised across processes with SyncBatchNorm under ``torchrun`` on GPUs; plain batch norm in one process); empty = ``frozen``. It applies to the backbone; the DeepLab-v3+ head's batch norm always trains. ``tiny_fcn`` (always trains its batch norm) and ``vgg16_largefov`` (none) refuse a non-empty value."""
    encoder_stride: int = 16
    """Output stride of the DeepLab-v3+ encoder (ResNet + ASPP): 16 (ASPP rates 6/12/18) or 8 (rates doubled, several times the FLOPs); the logits are at stride 4 either way. Other models have a fixed stride and refuse a value other than 16."""
    init_checkpoint: str = ""
    """Start from this ``boxsup_ext.train`` checkpoint's weights (fine-tuning)."""
    replace_classifier: bool = False
    """With ``init_checkpoint``: swap its classifier for one with this config's class count (e.g. COCO-80 to PASCAL-CONTEXT-60)."""


@dataclass
class RelabelConfig:
    """The relabel step: cost = (1 - IoU) + lam * meanCE, sampled among the cheapest candidates."""

    lam: float = 3.0
    """Weight of the mean cross-entropy in the cost (the paper: 3)."""
    topk: int = 5
    """Sample uniformly among the ``topk`` cheapest candidates (``boxsup``; ``boxsup_greedy`` uses 1)."""
    iou: str = "box"
    """``box``: IoU of the box with the candidate's tight box (the paper's Eq. 2); ``mask``: pixel IoU of the candidate with the box rectangle."""
    clip_to_box: bool = False
    """Paint each chosen segment only inside its box."""
    min_iou: float = 0.0
    """Leave out candidates whose IoU with the box is below this (0 = none, the paper); guards against drifting to tiny segments when proposals include every superpixel."""
    lam_warmup_epochs: int = 0
    """Ramp ``lam`` linearly from 0 over the first N epochs: epoch e (1-based) uses ``lam * min(1, (e - 1) / N)``, so epoch 1 relabels by IoU alone and epoch N + 1 on uses the full ``lam`` (0 = off, the paper)."""
    greedy_from_epoch: int = 0
    """From this epoch on (1-based) take each box's cheapest candidate instead of sampling among ``topk``: sample early, greedy late (0 = never, the paper)."""
    agreement: float = 0.0
    """Ignore the uncertain pixels of each box: a pixel inside a box keeps its painted label only where at least this share of the box's ``topk`` cheapest candidates agree with it (cover it when it is painted with the box's class, leave it out otherwise); elsewhere it becomes ignore (255). 0 = off (the paper), at most 1."""
    keep_previous: bool = False
    """Keep each box's candidate of the previous epoch unless the newly drawn one is cheaper by more than ``keep_margin`` (off: the paper)."""
    keep_margin: float = 0.05
    """With ``keep_previous``: how much cheaper (in cost units) a new candidate must be to replace the previous choice."""
    batch_images: int = 8
    """Images per fused-op call."""
    snapshot_epochs: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 45])
    """Epochs whose labels are copied to ``labels/snapshots/`` (for the mask-evolution figure)."""


@dataclass
class TrainConfig:
    """The SGD schedule (the paper's defaults)."""

    mode: str = "boxsup"
    """``boxsup``, ``boxsup_greedy`` (k = 1), ``mask`` (ground-truth masks, the upper bound), ``rectangles`` or ``grabcut`` (fixed-mask baselines)."""
    epochs: int = 45
    """Training epochs; each starts with a relabel step in the ``boxsup`` modes."""
    batch_size: int = 20
    """Global batch size (split over ranks)."""
    lr: float = 0.001
    """Base learning rate."""
    lr_step: int = 15
    """Multiply the learning rate by ``lr_gamma`` every ``lr_step`` epochs."""
    lr_gamma: float = 0.1
    """Learning-rate step factor."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0005
    """SGD weight decay."""
    classifier_lr_mult: float = 10.0
    """Learning-rate multiplier of the classifier layer (DeepLab uses 10)."""
    amp: bool = False
    """Mixed precision (CUDA only; ignored on a CPU)."""
    val_every: int = 5
    """Validate every N epochs and at the end (0 = only at the end)."""


@dataclass
class RunConfig:
    """Where and how the run executes."""

    run_dir: str = "runs/boxsup"
    """Run directory: config, log, labels, checkpoints, metrics (``--run-dir``)."""
    seed: int = 0
    """Seed of every random stream (sampling, augmentation, initialisation)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    progress: bool = True
    """Progress bars on the main rank."""
    tensorboard: bool = True
    """Also write TensorBoard event files under the run directory, when the ``tensorboard`` package is installed (an extra: ``pip install .[tensorboard]``); without it the run writes ``log.jsonl`` only and says so at start."""


@dataclass
class Config:
    """The whole trainer configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    """Datasets and augmentation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    """The relabel step."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The SGD schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, seed and device."""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` of config field ``key``; convert where lossless."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"config key {key!r} must be a mapping, got {type(value).__name__}")
        return _build(hint, value, key)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key {key!r} must be a list, got {value!r}")
        return [_coerce(item, item_hint, f"{key}.{i}") for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise InputError(f"config key {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        kwargs[key] = _coerce(value, _field_hint(cls, key, full), full)
    return cls(**kwargs)


def config_from_dict(values: Optional[dict]) -> Config:
    """Build a :class:`Config` from nested dicts (missing keys keep defaults) and validate it."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    config = _build(Config, values)
    validate(config)
    return config


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def load_config(
    path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (), assignments: Optional[dict[str, Any]] = None
) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``assignments`` (dotted key -> value,
    for programs such as the demo), then ``key=value`` overrides in order. The file's values and
    the overrides meet as one nested dict, which becomes the :class:`Config` once."""
    values = read_config_file(path) if path is not None else {}
    _check_keys(Config, values)  # the file's unknown keys are reported before any override
    for key, value in (assignments or {}).items():
        set_config_key(values, key, value)
    for item in overrides:
        apply_override(values, item)
    return config_from_dict(values)


def read_config_file(path: Union[str, Path]) -> dict:
    """The nested dict of a YAML config file; a missing or unparsable file is one line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise InputError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a mapping at the top level")
    return values


def _check_keys(cls: type, values: Any, prefix: str = "") -> None:
    """Every key of the nested dict ``values`` names a field of ``cls`` (recursively)."""
    if not isinstance(values, dict):
        return  # a section that is not a mapping is reported with its type when the Config is built
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        hint = _field_hint(cls, key, full)
        if dataclasses.is_dataclass(hint):
            _check_keys(hint, value, full)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]) and isinstance(value, list):
            for index, item in enumerate(value):
                _check_keys(typing.get_args(hint)[0], item, f"{full}.{index}")


def _field_hint(section: type, key: Any, full: str, source: str = "") -> Any:
    """The type hint of field ``key`` of the config dataclass ``section``. A key that is not one
    of its fields is an InputError naming the dotted key ``full`` (from ``source``, e.g.
    " in --set") and the valid keys of that section."""
    hints = typing.get_type_hints(section)
    if key not in hints:
        valid = ", ".join(f.name for f in dataclasses.fields(section))
        raise InputError(f"unknown config key {full!r}{source}; valid keys here: {valid}")
    return hints[key]


def apply_override(values: dict, item: str) -> None:
    """Apply one ``--set dotted.key=value`` to the nested dict ``values`` (the value is parsed as YAML)."""
    if "=" not in item:
        raise InputError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    set_config_key(values, key.strip(), value)


def set_config_key(values: dict, key: str, value: Any) -> None:
    """Set ``dotted.key`` in the nested config dict ``values`` (a file's partial dict is fine).

    The key is checked against the :class:`Config` fields, not the dict, so a section the file
    leaves out takes its defaults first. ``data.train.<len>.x`` appends a source with defaults."""
    parts = key.split(".")
    node: Any = values
    hint: Any = Config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list) and typing.get_origin(hint) is list:
            if not part.isdigit():
                raise InputError(f"--set {key}: {'.'.join(parts[:depth])} is a list; index it with a number")
            index = int(part)
            (hint,) = typing.get_args(hint)
            if index == len(node) and not last and node and dataclasses.is_dataclass(hint):
                node.append({})  # a new list item: the defaults of its type
            if index >= len(node):
                raise InputError(f"--set {key}: index {index} is out of range (the list has {len(node)} items)")
        elif isinstance(node, dict) and dataclasses.is_dataclass(hint):
            section, hint = hint, _field_hint(hint, part, ".".join(parts[: depth + 1]), " in --set")
            if part not in node and not last:
                default = getattr(section(), part)
                node[part] = {} if dataclasses.is_dataclass(default) else _plain(default)
            index = part
        else:
            raise InputError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
        if last:
            node[index] = value
        else:
            node = node[index]


def _plain(value: Any) -> Any:
    """A config default as nested dicts and lists (what a YAML file would hold)."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _non_finite_floats(values: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite float in a nested config dict."""
    found = []
    if isinstance(values, dict):
        for key, value in values.items():
            found += _non_finite_floats(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(values, list):
        for index, value in enumerate(values):
            found += _non_finite_floats(value, f"{prefix}.{index}")
    elif isinstance(values, float) and not math.isfinite(values):
        found.append(prefix)
    return found


def validate(config: Config) -> None:
    """Check value ranges and choices; each problem is one line naming the key."""
    for key in _non_finite_floats(config_to_dict(config)):
        raise InputError(f"{key} must be a finite number, got {_lookup(config, key)}")
    checks = [
        (config.train.mode in MODES, f"train.mode must be one of {', '.join(MODES)}, got {config.train.mode!r}"),
        (config.relabel.iou in ("box", "mask"), f"relabel.iou must be 'box' or 'mask', got {config.relabel.iou!r}"),
        (config.relabel.topk >= 1, f"relabel.topk must be at least 1, got {config.relabel.topk}"),
        (config.relabel.lam >= 0, f"relabel.lam must be non-negative, got {config.relabel.lam}"),
        (0 <= config.relabel.min_iou <= 1, f"relabel.min_iou must be in [0, 1], got {config.relabel.min_iou}"),
        (config.relabel.lam_warmup_epochs >= 0, f"relabel.lam_warmup_epochs must be non-negative, got {config.relabel.lam_warmup_epochs}"),
        (config.relabel.batch_images >= 1, "relabel.batch_images must be at least 1"),
        (config.relabel.greedy_from_epoch >= 0, f"relabel.greedy_from_epoch must be 0 (never) or an epoch, got {config.relabel.greedy_from_epoch}"),
        (0 <= config.relabel.agreement <= 1, f"relabel.agreement must be in [0, 1] (0 = off), got {config.relabel.agreement}"),
        (config.relabel.keep_margin >= 0, f"relabel.keep_margin must be 0 or more, got {config.relabel.keep_margin}"),
        (config.train.epochs >= 1, f"train.epochs must be at least 1, got {config.train.epochs}"),
        (config.train.batch_size >= 1, f"train.batch_size must be at least 1, got {config.train.batch_size}"),
        (config.train.lr > 0, f"train.lr must be positive, got {config.train.lr}"),
        (config.train.momentum >= 0, f"train.momentum must be 0 or more, got {config.train.momentum}"),
        (config.train.weight_decay >= 0, f"train.weight_decay must be 0 or more, got {config.train.weight_decay}"),
        (config.train.lr_gamma > 0, f"train.lr_gamma must be positive, got {config.train.lr_gamma}"),
        (config.train.classifier_lr_mult > 0, f"train.classifier_lr_mult must be positive, got {config.train.classifier_lr_mult}"),
        (0 <= config.model.dropout <= 1, f"model.dropout must be in [0, 1], got {config.model.dropout}"),
        (config.model.bn in ("", "frozen", "train", "sync"),
         f"model.bn must be frozen, train, sync or empty (the model's own), got {config.model.bn!r}"),
        (config.model.encoder_stride in (8, 16), f"model.encoder_stride must be 8 or 16, got {config.model.encoder_stride}"),
        (config.run.seed >= 0, f"run.seed must be 0 or more, got {config.run.seed}"),
        (config.run.threads >= 0, f"run.threads must be 0 (torch's default) or more, got {config.run.threads}"),
        (config.train.lr_step >= 1, f"train.lr_step must be at least 1, got {config.train.lr_step}"),
        (config.train.val_every >= 0, "train.val_every must be 0 or more"),
        (config.data.crop_size >= 8, f"data.crop_size must be at least 8, got {config.data.crop_size}"),
        (config.data.crop_size <= MAX_CROP_SIZE,
         f"data.crop_size must be at most {MAX_CROP_SIZE} pixels (the paper crops 321; {config.data.crop_size} would need "
         f"about {_crop_gigabytes(config):.3g} GB for one batch's input alone), got {config.data.crop_size}"),
        (0 < config.data.scale_min <= config.data.scale_max, "data.scale_min must be positive and <= data.scale_max"),
        (config.data.scale_max <= MAX_SCALE, f"data.scale_max must be at most {MAX_SCALE:g}, got {config.data.scale_max}"),
        (config.data.workers >= 0, "data.workers must be 0 or more"),
        (len(config.data.train) >= 1, "data.train must list at least one source"),
        (config.run.device in ("auto", "cpu", "cuda"), f"run.device must be auto, cpu or cuda, got {config.run.device!r}"),
        (config.model.num_classes == 0 or config.model.num_classes >= 2,
         f"model.num_classes must be 0 (from the dataset) or at least 2, got {config.model.num_classes}"),
    ]
    for index, source in enumerate(config.data.train + [config.data.val]):
        name = f"data.train.{index}" if index < len(config.data.train) else "data.val"
        checks.append((source.kind in DATASET_KINDS, f"{name}.kind must be one of {', '.join(DATASET_KINDS)}, got {source.kind!r}"))
        checks.append((source.supervision in ("auto", "box", "mask", "semi"), f"{name}.supervision must be auto, box, mask or semi"))
        checks.append((source.supervision != "semi" or bool(source.mask_list), f"{name}.supervision 'semi' needs {name}.mask_list"))
        checks.append((source.limit >= 0, f"{name}.limit must be 0 (all) or more"))
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def _lookup(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else getattr(node, part)
    return node


def _crop_gigabytes(config: Config) -> float:
    """Bytes of one batch of float32 RGB crops (the network's input alone), in GB."""
    return config.train.batch_size * 3 * 4 * float(config.data.crop_size) ** 2 / 1e9


def dump_config(config: Config) -> str:
    """The resolved config as YAML text (keys in definition order)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(dump_config(config))
