"""The proposal store: one directory per (dataset, method, parameters).

Layout::

    STORE/manifest.json          format version, method, params, dataset name + fingerprint, image
                                 count, depends_on (which per-image digests every entry carries)
    STORE/entries/<id>.npz       one per image: units (uint16 or int32, deflated), members int64
                                 [N, W64] (stored), scores float32 [N], size [H, W], seconds,
                                 provenance (JSON text: digests of what the entry was made from)

Entries are written through a temporary file and renamed, so an interrupted ``generate`` leaves
only whole entries and a rerun skips them (resume).

The manifest's dataset fingerprint says which images (ids and sizes) a store is for. What each
entry was computed from is checked per image, because it is what changes when a user edits a
dataset: the SHA-256 of the image's boxes (methods that use boxes: rectangles, grabcut) and of the
image file's bytes (methods that read pixels: selective_search, grabcut). Reading an entry through
a store opened for a dataset compares them, once per image and store (a file read and hash, small
beside decoding the image), and a mismatch is a stale-store error; ``generate`` on the store
rebuilds exactly those entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.registry import ProposalMethod, check_candidates, get_method
from boxsup_ext.utils import InputError, atomic_write, atomic_write_json, file_sha256

FORMAT_VERSION = 2  # 2: entries carry provenance digests
MANIFEST = "manifest.json"
ENTRIES = "entries"
DEPENDENCIES = ("boxes", "image")  # what an entry may depend on, see image_provenance


@dataclass(frozen=True)
class ProposalEntry:
    """Candidates of one image, as stored.

    candidates: the units + members form (:class:`boxsup_ext.core.Candidates`; its units map is
    the image's size). scores: float32 [N]. seconds: time the method took on this image (0 if
    unknown). provenance: the digests the entry was made from (see :func:`image_provenance`).
    """

    candidates: core.Candidates
    scores: np.ndarray
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)


def entry_filename(image_id: str) -> str:
    """File name of an image's entry; ids with '/' or other odd characters are percent-encoded."""
    return urllib.parse.quote(str(image_id), safe="-_.") + ".npz"


def write_entry(
    path: Path, units: np.ndarray, members: np.ndarray, scores: np.ndarray, seconds: float = 0.0, provenance: dict | None = None
) -> None:
    """Write one entry atomically. Shapes as in :class:`ProposalEntry` (units and members as in
    :class:`boxsup_ext.core.Candidates`, scores float32 [N]); ``provenance`` maps each of
    :data:`DEPENDENCIES` the method uses to its digest (see :func:`image_provenance`).

    The file is an ordinary ``.npz`` (``np.load`` reads it) whose units map is deflated (it is
    mostly runs, ~100x smaller) while members are stored as they are: candidate bits barely
    compress (~2.5x) and inflating them would cost ~7 ms per load of 2,000 candidates.
    """
    small = core.unit_count(units) <= np.iinfo(np.uint16).max + 1
    arrays = {
        "units": (units.astype(np.uint16 if small else np.int32), zipfile.ZIP_DEFLATED),
        "members": (np.ascontiguousarray(members, dtype=np.int64), zipfile.ZIP_STORED),
        "scores": (np.asarray(scores, dtype=np.float32), zipfile.ZIP_STORED),
        "size": (np.array(units.shape, dtype=np.int64), zipfile.ZIP_STORED),
        "seconds": (np.array(seconds, dtype=np.float64), zipfile.ZIP_STORED),
        "provenance": (np.array(json.dumps(provenance or {}, sort_keys=True)), zipfile.ZIP_STORED),
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
    """Read one entry file and check every invariant of the form once, here: units an integer
    [H, W] map of the recorded size with ids in [0, 2^31), members int64 [N, >= ceil(U / 64)]
    (every unit id has its bit), scores [N]. A missing, damaged or inconsistent file is an
    InputError naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            units = data["units"]
            members = data["members"]
            scores = data["scores"]
            size = data["size"]
            seconds = float(data["seconds"])
            provenance = _stored_provenance(data)
    except FileNotFoundError:
        raise InputError(f"{path}: proposal entry not found; run `python -m boxsup_ext.proposals generate` for this store (it resumes)") from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, EOFError) as err:
        raise InputError(f"{path}: damaged proposal entry ({err}); delete it and rerun generate to rebuild it") from None
    if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer) or not isinstance(provenance, dict):
        raise InputError(f"{path}: damaged proposal entry (size {size!r}, provenance {provenance!r}); delete it and rerun generate to rebuild it")
    try:
        candidates, scores = check_candidates(units, members, scores, int(size[0]), int(size[1]), "")
    except ValueError as err:
        raise InputError(f"{path}: inconsistent proposal entry ({err}); delete it and rerun generate to rebuild it") from None
    return ProposalEntry(candidates, scores, seconds, provenance)


def image_provenance(dataset, index: int, depends_on: Sequence[str]) -> dict[str, str]:
    """Digests of what an entry of image ``index`` is made from, one per name in ``depends_on``.

    ``"boxes"``: SHA-256 of the record's boxes (float32 [M, 4], in order: row m of a box method's
    candidates belongs to box m). ``"image"``: SHA-256 of the image file's bytes when the dataset
    names the file (``image_file(index)``), else of the decoded pixels.
    """
    provenance = {}
    if "boxes" in depends_on:
        boxes = np.ascontiguousarray(dataset[index].boxes, dtype=np.float32).reshape(-1, 4)
        provenance["boxes"] = hashlib.sha256(boxes.tobytes()).hexdigest()
    if "image" in depends_on:
        image_file = getattr(dataset, "image_file", None)
        path = image_file(index) if image_file is not None else None
        if path is None:
            pixels = np.ascontiguousarray(dataset.load_image(index))
            provenance["image"] = "pixels:" + hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
        else:
            try:
                provenance["image"] = "file:" + file_sha256(path)
            except OSError as err:
                raise InputError(f"{path}: cannot read the image file ({err.strerror or err}); check the dataset") from None
    return provenance


def method_dependencies(method: ProposalMethod) -> list[str]:
    """The names of :data:`DEPENDENCIES` a method's output depends on."""
    return [name for name, used in zip(DEPENDENCIES, (method.uses_boxes, method.uses_pixels)) if used]


def _read_manifest(root: Path, versions: Sequence[int] = (FORMAT_VERSION,)) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no proposal store here; create one with `python -m boxsup_ext.proposals generate`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable store manifest ({err}); regenerate the store") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: store manifest is not a JSON object; regenerate the store")
    if manifest.get("format_version") not in versions:
        raise InputError(
            f"{path}: store format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}; "
            "rerun `python -m boxsup_ext.proposals generate` with the same options on it (it rebuilds the entries)"
        )
    return manifest


class ProposalStore:
    """Read access to a proposal store directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        # The dataset this store was opened for and its image_id -> index (see open_store).
        self._dataset = None
        self._index: dict[str, int] | None = None
        # (image id, entry provenance) pairs found current: each image's file is hashed once per store.
        self._current: set[tuple[str, str]] = set()

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

    @property
    def depends_on(self) -> list[str]:
        """Which per-image digests every entry carries and is checked against (see image_provenance)."""
        return [str(name) for name in self.manifest.get("depends_on", [])]

    def get(self, image_id: str) -> ProposalEntry:
        """The entry of one image. When the store was opened for a dataset (open_store), checks the
        entry's size, and its provenance against the image's current boxes / file (stale: InputError)."""
        path = self.entry_path(image_id)
        entry = read_entry(path)
        if self._index is None:
            return entry
        index = self._index.get(image_id)
        if index is None:
            raise InputError(f"{path}: image {image_id!r} is not in dataset {self.manifest.get('dataset_name')!r} this store was opened for")
        record = self._dataset[index]
        height, width = entry.candidates.units.shape
        if (int(record.height), int(record.width)) != (height, width):
            raise InputError(f"{path}: entry is {height}x{width} but the dataset image is {record.height}x{record.width}; regenerate the store")
        key = (image_id, json.dumps(entry.provenance, sort_keys=True))
        if key in self._current:
            return entry
        changed = stale_dependencies(entry.provenance, self._dataset, index, self.depends_on)
        if changed:
            what = " and ".join("boxes" if name == "boxes" else "image file" for name in changed)
            raise InputError(
                f"{path}: stale proposal store {self.path}: the {what} of image {image_id!r} changed since the store was "
                f"generated; rerun `python -m boxsup_ext.proposals generate` with --out {self.path} and the same options "
                "(it rebuilds the changed images)"
            )
        self._current.add(key)
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
    store._dataset = dataset
    store._index = {record.image_id: index for index, record in enumerate(dataset)}
    return store


# ---------------------------------------------------------------------------------------------
# generation

_WORKER: dict[str, Any] = {}


def _init_worker(dataset, method: str, params: dict[str, Any], entries: str, depends_on: list[str]) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker: the pool is the parallelism
    _WORKER.update(dataset=dataset, method=get_method(method), params=params, entries=Path(entries), depends_on=depends_on)


def _make_entry(index: int) -> str:
    dataset, method = _WORKER["dataset"], _WORKER["method"]
    record = dataset[index]
    image = dataset.load_image(index)
    if image.shape[:2] != (record.height, record.width):
        raise InputError(f"image {record.image_id!r} is {image.shape[0]}x{image.shape[1]} but its record says {record.height}x{record.width}")
    provenance = image_provenance(dataset, index, _WORKER["depends_on"])
    start = time.perf_counter()
    units, members, scores = method.run(image, record.boxes, record.image_id, **_WORKER["params"])
    seconds = time.perf_counter() - start
    write_entry(_WORKER["entries"] / entry_filename(record.image_id), units, members, scores, seconds, provenance)
    return record.image_id


def _is_current(path: Path, dataset, index: int, depends_on: list[str]) -> bool:
    """Whether the entry at ``path`` exists and was made from the image's current boxes / file.

    Reads only the entry's small provenance array, not its candidates (a resume looks at every
    entry); a damaged entry is caught when read, and ``generate`` rebuilds it once deleted.
    """
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = _stored_provenance(data)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, EOFError):
        return False  # unreadable: make it again
    return isinstance(stored, dict) and not stale_dependencies(stored, dataset, index, depends_on)


def _stored_provenance(data) -> Any:
    """An entry's provenance (the digests it was made from) as stored; {} for an entry without one."""
    return json.loads(str(data["provenance"])) if "provenance" in data.files else {}


def stale_dependencies(stored: dict, dataset, index: int, depends_on: list[str]) -> list[str]:
    """The dependencies (``boxes``, ``image``) of image ``index`` whose current digest differs from
    the ``stored`` provenance of its entry: empty when the entry is current."""
    current = image_provenance(dataset, index, depends_on)
    return [name for name in depends_on if stored.get(name) != current[name]]


def _json_safe(params: dict[str, Any]) -> dict[str, Any]:
    safe = json.loads(json.dumps(params, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return {key: safe[key] for key in sorted(safe)}


def generate_proposals(dataset, method: str, out_dir: str | Path, workers: int = 1, progress: bool = True, **params) -> ProposalStore:
    """Compute candidates for every image of ``dataset`` into the store at ``out_dir``.

    dataset: a ``boxsup_ext.data`` dataset (records with image_id/height/width/boxes, load_image,
    fingerprint). method: a registered method name. workers: processes (1 = in this process).
    params: options passed to the method (checked against its signature before anything is
    written) and recorded in the manifest. Resumable: entries already present and current are
    skipped, entries whose image's boxes or file changed since are rebuilt; an existing store made
    with another method, other params or for other images is refused, unless it holds no entry yet
    (then it is replaced). Returns the store opened for ``dataset``.
    """
    chosen = get_method(method)  # unknown names fail before anything is written
    if int(workers) < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    chosen.check_options(params)
    root = Path(out_dir)
    params = _json_safe(params)
    depends_on = method_dependencies(chosen)
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "params": params,
        "dataset_name": str(getattr(dataset, "name", "")),
        "dataset_fingerprint": dataset.fingerprint(),
        "image_count": len(dataset),
        "depends_on": depends_on,
    }
    entries = root / ENTRIES
    if (root / MANIFEST).exists():
        existing = _read_manifest(root, versions=(1, FORMAT_VERSION))  # a version-1 store's entries are rebuilt below
        built = any(entries.glob("*.npz"))  # a store without entries yet (e.g. a refused run) is replaced
        for key in ("method", "params", "dataset_fingerprint"):
            if built and existing.get(key) != manifest[key]:
                raise InputError(
                    f"{root / MANIFEST}: existing store has {key} {existing.get(key)!r}, this run asks for {manifest[key]!r}; "
                    "choose another output directory (a store holds one dataset, method and parameter set)"
                )
    atomic_write_json(root / MANIFEST, dict(manifest, complete=False))
    entries.mkdir(parents=True, exist_ok=True)
    todo = [
        i for i, record in enumerate(dataset) if not _is_current(entries / entry_filename(record.image_id), dataset, i, depends_on)
    ]

    from tqdm import tqdm

    bar = tqdm(total=len(dataset), initial=len(dataset) - len(todo), desc=f"proposals ({method})", unit="img", disable=not progress)
    init_args = (dataset, method, params, str(entries), depends_on)
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
