"""Build a synthetic dataset and its proposal stores in one folder (for ``python -m
boxsup_ext.demo`` and the trainer's end-to-end tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence



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
    size: int = 64,
    seed: int = 0,
    methods: Sequence[str] = ("selective_search", "rectangles"),
    workers: int = 1,
    max_objects: int = 4,
    method_params: Optional[dict[str, dict]] = None,
) -> SyntheticSetup:
    """Write the synthetic dataset (``size`` x ``size`` pixel images) to ``out_dir/dataset`` and a
    proposal store per method to ``out_dir/proposals_<method>``, with ``method_params[method]``
    as the method's options. Existing complete outputs made
    with the same arguments are reused (both writers are resumable)."""
    from boxsup_ext.data import open_dataset
    from boxsup_ext.data.synthetic import generate
    from boxsup_ext.proposals import generate_proposals

    out_dir = Path(out_dir)
    dataset_dir = out_dir / "dataset"
    if not (dataset_dir / "synthetic.json").exists():
        generate(dataset_dir, num_train, num_val, seed=seed, height=size, width=size, max_objects=max_objects)
    train = open_dataset(dataset_dir, "train", kind="synthetic")
    stores = {}
    for method in methods:
        store_dir = out_dir / f"proposals_{method}"
        params = (method_params or {}).get(method, {})
        generate_proposals(train, method, store_dir, workers=workers, progress=False, **params)
        stores[method] = store_dir
    return SyntheticSetup(dataset_dir, stores)
