"""The proposal store: one directory per (dataset, method, parameters).

Layout::

    STORE/manifest.json          format version, method, params, dataset name + fingerprint, image count
    STORE/entries/<id>.npz       one per image: units (uint16 or int32, deflated), members int64
                                 [N, W64] (stored), scores float32 [N], size [H, W], seconds

Entries are written through a temporary file and renamed, so an interrupted ``generate`` leaves
only whole entries and a rerun skips them (resume).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from boxsup_ext.proposals import bits
from boxsup_ext.proposals.registry import get_method
from boxsup_ext.utils import InputError, atomic_write, atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENTRIES = "entries"


@dataclass(frozen=True)
class ProposalEntry:
    """Candidates of one image.

    units: int32 [H, W] in [0, U). members: int64 [N, ceil(U / 64)] bit words. scores: float32 [N].
    height, width: image size in pixels. seconds: time the method took on this image (0 if unknown).
    """

    units: np.ndarray
    members: np.ndarray
    scores: np.ndarray
    height: int
    width: int
    seconds: float = 0.0

    @property
    def num_candidates(self) -> int:
        return int(self.members.shape[0])

    @property
    def num_units(self) -> int:
        return bits.unit_count(self.units)

    def masks(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Per-pixel masks bool [N, H, W] (or of ``rows`` only). Memory grows as N * H * W."""
        return bits.unpack_masks(self.units, self.members, None if rows is None else np.asarray(rows))


def entry_filename(image_id: str) -> str:
    """File name of an image's entry; ids with '/' or other odd characters are percent-encoded."""
    return urllib.parse.quote(str(image_id), safe="-_.") + ".npz"


def write_entry(path: Path, units: np.ndarray, members: np.ndarray, scores: np.ndarray, seconds: float = 0.0) -> None:
    """Write one entry atomically. Shapes as in :class:`ProposalEntry`.

    The file is an ordinary ``.npz`` (``np.load`` reads it) whose units map is deflated (it is
    mostly runs, ~100x smaller) while members are stored as they are: candidate bits barely
    compress (~2.5x) and inflating them would cost ~7 ms per load of 2,000 candidates.
    """
    small = bits.unit_count(units) <= np.iinfo(np.uint16).max + 1
    arrays = {
        "units": (units.astype(np.uint16 if small else np.int32), zipfile.ZIP_DEFLATED),
        "members": (np.ascontiguousarray(members, dtype=np.int64), zipfile.ZIP_STORED),
        "scores": (np.asarray(scores, dtype=np.float32), zipfile.ZIP_STORED),
        "size": (np.array(units.shape, dtype=np.int64), zipfile.ZIP_STORED),
        "seconds": (np.array(seconds, dtype=np.float64), zipfile.ZIP_STORED),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (array, compression) in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = compression
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getbuffer())


def read_entry(path: Path) -> ProposalEntry:
    """Read one entry file; a missing or damaged file is an InputError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            units = data["units"].astype(np.int32)
            members = data["members"]
            scores = data["scores"]
            height, width = (int(v) for v in data["size"])
            seconds = float(data["seconds"])
    except FileNotFoundError:
        raise InputError(f"{path}: proposal entry not found; run `python -m boxsup_ext.proposals generate` for this store (it resumes)") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: damaged proposal entry ({err}); delete it and rerun generate to rebuild it") from None
    if units.shape != (height, width) or members.ndim != 2 or scores.shape != (members.shape[0],):
        raise InputError(f"{path}: inconsistent proposal entry (units {units.shape}, size {height}x{width}, members {members.shape}, scores {scores.shape}); delete it and rerun generate")
    return ProposalEntry(units, members, scores, height, width, seconds)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no proposal store here; create one with `python -m boxsup_ext.proposals generate`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable store manifest ({err}); regenerate the store") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: store format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}; regenerate the store")
    return manifest


class ProposalStore:
    """Read access to a proposal store directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        # image_id -> (height, width) of the dataset this store was opened for (see open_store).
        self._expected_sizes: dict[str, tuple[int, int]] | None = None

    @property
    def method(self) -> str:
        return str(self.manifest["method"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.manifest.get("params", {}))

    def entry_path(self, image_id: str) -> Path:
        return self.path / ENTRIES / entry_filename(image_id)

    def __contains__(self, image_id: str) -> bool:
        return self.entry_path(image_id).is_file()

    def image_ids(self) -> list[str]:
        """Ids of the images that have an entry, sorted."""
        folder = self.path / ENTRIES
        if not folder.is_dir():
            return []
        return sorted(urllib.parse.unquote(p.name[: -len(".npz")]) for p in folder.glob("*.npz"))

    def __len__(self) -> int:
        return len(self.image_ids())

    def get(self, image_id: str) -> ProposalEntry:
        """The entry of one image; checks its size against the dataset when opened with open_store."""
        path = self.entry_path(image_id)
        entry = read_entry(path)
        if self._expected_sizes is not None:
            expected = self._expected_sizes.get(image_id)
            if expected is None:
                raise InputError(f"{path}: image {image_id!r} is not in dataset {self.manifest.get('dataset_name')!r} this store was opened for")
            if expected != (entry.height, entry.width):
                raise InputError(f"{path}: entry is {entry.height}x{entry.width} but the dataset image is {expected[0]}x{expected[1]}; regenerate the store")
        return entry


def open_store(path: str | Path, dataset) -> ProposalStore:
    """Open a store for ``dataset``, refusing one built for other images (InputError)."""
    store = ProposalStore(path)
    fingerprint = dataset.fingerprint()
    if store.manifest.get("dataset_fingerprint") != fingerprint:
        raise InputError(
            f"{store.path / MANIFEST}: store was built for dataset {store.manifest.get('dataset_name')!r} "
            f"(fingerprint {store.manifest.get('dataset_fingerprint')}), not for {getattr(dataset, 'name', '?')!r} "
            f"(fingerprint {fingerprint}); generate a store for this dataset"
        )
    store._expected_sizes = {record.image_id: (int(record.height), int(record.width)) for record in dataset}
    return store


# ---------------------------------------------------------------------------------------------
# generation

_WORKER: dict[str, Any] = {}


def _init_worker(dataset, method: str, params: dict[str, Any], entries: str) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    _WORKER.update(dataset=dataset, method=get_method(method), params=params, entries=Path(entries))


def _make_entry(index: int) -> str:
    dataset, method = _WORKER["dataset"], _WORKER["method"]
    record = dataset[index]
    image = dataset.load_image(index)
    if image.shape[:2] != (record.height, record.width):
        raise InputError(f"image {record.image_id!r} is {image.shape[0]}x{image.shape[1]} but its record says {record.height}x{record.width}")
    start = time.perf_counter()
    units, members, scores = method.run(image, record.boxes, record.image_id, **_WORKER["params"])
    seconds = time.perf_counter() - start
    write_entry(_WORKER["entries"] / entry_filename(record.image_id), units, members, scores, seconds)
    return record.image_id


def _json_safe(params: dict[str, Any]) -> dict[str, Any]:
    safe = json.loads(json.dumps(params, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return {key: safe[key] for key in sorted(safe)}


def generate_proposals(dataset, method: str, out_dir: str | Path, workers: int = 1, progress: bool = True, **params) -> ProposalStore:
    """Compute candidates for every image of ``dataset`` into the store at ``out_dir``.

    dataset: a ``boxsup_ext.data`` dataset (records with image_id/height/width/boxes, load_image,
    fingerprint). method: a registered method name. workers: processes (1 = in this process).
    params: options passed to the method and recorded in the manifest. Resumable: entries already
    present are skipped; an existing store made with another method, other params or for another
    dataset is refused. Returns the store opened for ``dataset``.
    """
    get_method(method)  # unknown names fail before anything is written
    if int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    root = Path(out_dir)
    params = _json_safe(params)
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "params": params,
        "dataset_name": str(getattr(dataset, "name", "")),
        "dataset_fingerprint": dataset.fingerprint(),
        "image_count": len(dataset),
    }
    if (root / MANIFEST).exists():
        existing = _read_manifest(root)
        for key in ("method", "params", "dataset_fingerprint"):
            if existing.get(key) != manifest[key]:
                raise InputError(
                    f"{root / MANIFEST}: existing store has {key} {existing.get(key)!r}, this run asks for {manifest[key]!r}; "
                    "choose another output directory (a store holds one dataset, method and parameter set)"
                )
    atomic_write_json(root / MANIFEST, dict(manifest, complete=False))
    entries = root / ENTRIES
    entries.mkdir(parents=True, exist_ok=True)
    todo = [i for i, record in enumerate(dataset) if not (entries / entry_filename(record.image_id)).is_file()]

    from tqdm import tqdm

    bar = tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc=f"proposals ({method})", unit="img", disable=not progress)
    init_args = (dataset, method, params, str(entries))
    try:
        if int(workers) == 1 or len(todo) <= 1:
            _init_worker(*init_args)
            for index in todo:
                _make_entry(index)
                bar.update(1)
        else:
            with multiprocessing.get_context().Pool(int(workers), initializer=_init_worker, initargs=init_args) as pool:
                for _ in pool.imap_unordered(_make_entry, todo, chunksize=1):
                    bar.update(1)
    finally:
        bar.close()
        _WORKER.clear()
    atomic_write_json(root / MANIFEST, dict(manifest, complete=True))
    return open_store(root, dataset)
