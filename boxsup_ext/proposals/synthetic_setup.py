"""Build a synthetic dataset and its proposal stores in one folder (for ``python -m
boxsup_ext.demo`` and the trainer's end-to-end tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from boxsup_ext.utils import InputError


@dataclass(frozen=True)
class SyntheticSetup:
    """Paths of a prepared synthetic experiment: ``dataset`` (VOC layout) and one proposal store
    per method under ``stores``."""

    dataset: Path
    stores: dict[str, Path]


def prepare_synthetic(
    out_dir: Path,
    num_train: int,
    num_val: int,
    size: Optional[int] = 64,
    seed: int = 0,
    methods: Sequence[str] = ("selective_search", "rectangles"),
    workers: int = 1,
    max_objects: Optional[int] = None,
    method_params: Optional[dict[str, dict]] = None,
    preset: str = "easy",
    height: Optional[int] = None,
    width: Optional[int] = None,
) -> SyntheticSetup:
    """Write the synthetic dataset of ``preset`` to ``out_dir/dataset`` and a proposal store per
    method to :func:`store_dir`, with ``method_params[method]`` as the method's options. Images are
    ``size`` x ``size`` pixels, or ``height`` x ``width`` where given (a None takes the preset's
    default, as does ``max_objects=None``). Existing complete outputs made with the same arguments
    are reused (both writers are resumable); a dataset made with other arguments is an InputError."""
    from boxsup_ext.data import open_dataset
    from boxsup_ext.data.synthetic import generate, get_preset
    from boxsup_ext.proposals import generate_proposals

    spec = get_preset(preset)
    height = next(v for v in (height, size, spec.height) if v is not None)
    width = next(v for v in (width, size, spec.width) if v is not None)
    max_objects = spec.max_objects if max_objects is None else max_objects
    out_dir = Path(out_dir)
    dataset_dir = out_dir / "dataset"
    wanted = {
        "preset": preset, "seed": seed, "num_train": num_train, "num_val": num_val,
        "height": height, "width": width, "max_objects": max_objects,
    }  # fmt: skip
    if (dataset_dir / "synthetic.json").exists():
        _check_existing(dataset_dir / "synthetic.json", wanted)
    else:
        generate(dataset_dir, num_train, num_val, seed=seed, height=height, width=width, max_objects=max_objects, preset=preset)
    train = open_dataset(dataset_dir, "train", kind="synthetic")
    stores = {}
    for method in methods:
        params = (method_params or {}).get(method, {})
        generate_proposals(train, method, store_dir(out_dir, method), workers=workers, progress=False, **params)
        stores[method] = store_dir(out_dir, method)
    return SyntheticSetup(dataset_dir, stores)


def store_dir(out_dir: Path, method: str) -> Path:
    """Where :func:`prepare_synthetic` keeps the proposal store of ``method``."""
    return Path(out_dir) / f"proposals_{method}"


def _check_existing(record_path: Path, wanted: dict) -> None:
    try:
        made = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{record_path} is not readable JSON ({err.__class__.__name__}); remove {record_path.parent} to rebuild it") from None
    from boxsup_ext.data.synthetic import recorded_preset

    made = {**made, "preset": recorded_preset(made)}
    differ = [f"{key} {made.get(key)!r} (asked {value!r})" for key, value in wanted.items() if made.get(key) != value]
    if differ:
        raise InputError(
            f"{record_path.parent} holds a synthetic dataset made with other settings ({', '.join(differ)}); "
            "use another output folder or remove it"
        )
