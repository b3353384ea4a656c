"""The proposal store: round trip, parallel generation, resume, atomic entries and refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from boxsup_ext.data import ImageRecord
from boxsup_ext import core
from boxsup_ext.proposals import ProposalStore, generate_proposals, open_store, register_method
from boxsup_ext.proposals.store import entry_filename, read_entry, write_entry
from boxsup_ext.utils import InputError


class TinyDataset:
    """The dataset API of boxsup_ext.data, reduced to what the store needs, on drawn images."""

    def __init__(self, sizes, name="tiny", seed=0):
        self.name = name
        self.class_names = ["background", "thing"]
        self.num_classes = 2
        rng = np.random.default_rng(seed)
        self.records, self.images = [], []
        for index, (h, w) in enumerate(sizes):
            image = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
            image[h // 4 : h // 2, w // 4 : w // 2] += 150
            box = np.array([[w // 4, h // 4, w // 2, h // 2]], np.float32)
            self.records.append(ImageRecord(f"img/{index:02d}", h, w, box, np.array([1]), np.array([False]), "box", "tiny"))
            self.images.append(image)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def load_image(self, index):
        return self.images[index]

    def load_instances(self, index):
        record = self.records[index]
        return core.box_masks(record.boxes, record.height, record.width), record.labels

    def fingerprint(self):
        text = "".join(f"{r.image_id}\t{r.height}\t{r.width}\n" for r in self.records)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


CALLS: list[str] = []


def counting_rectangles(image, boxes, **options):
    CALLS.append(f"{image.shape[0]}x{image.shape[1]}")
    units, members = core.masks_to_units(core.box_masks(boxes, *image.shape[:2]))
    return units, members, np.ones(members.shape[0], np.float32)


register_method("test_counting_rectangles", counting_rectangles, overwrite=True)


@pytest.fixture
def dataset():
    return TinyDataset([(20, 30), (24, 18), (16, 16)])


def test_entry_round_trip_keeps_every_array(tmp_path):
    rng = np.random.default_rng(0)
    units = rng.integers(0, 700, size=(37, 51)).astype(np.int32)
    members = core.pack_rows(rng.random((9, 700)) < 0.1)
    scores = rng.random(9).astype(np.float32)
    write_entry(tmp_path / "e.npz", units, members, scores, seconds=1.25)
    entry = read_entry(tmp_path / "e.npz")
    np.testing.assert_array_equal(entry.candidates.units, units)
    assert entry.candidates.units.dtype == np.int32
    np.testing.assert_array_equal(entry.candidates.members, members)
    np.testing.assert_array_equal(entry.scores, scores)
    assert entry.seconds == 1.25
    assert entry.candidates.num_candidates == 9 and entry.candidates.num_units == int(units.max()) + 1
    np.testing.assert_array_equal(entry.candidates.masks([2]), core.unpack_masks(units, members)[2:3])
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]  # no temporary left behind


def test_entry_filenames_are_safe_and_reversible(dataset, tmp_path):
    assert entry_filename("img/07") == "img%2F07.npz"
    store = generate_proposals(dataset, "rectangles", tmp_path / "s", progress=False)
    assert store.image_ids() == ["img/00", "img/01", "img/02"]


@pytest.mark.parametrize("workers", [1, 2])
def test_generate_writes_manifest_and_entries(dataset, tmp_path, workers):
    store = generate_proposals(dataset, "rectangles", tmp_path / "s", workers=workers, progress=False, max_candidates=5)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["method"] == "rectangles" and manifest["params"] == {"max_candidates": 5}
    assert manifest["dataset_fingerprint"] == dataset.fingerprint() and manifest["image_count"] == 3
    assert manifest["complete"] is True and manifest["format_version"] == 2
    assert len(store) == 3
    for index, record in enumerate(dataset):
        entry = store.get(record.image_id)
        assert entry.candidates.units.shape == (record.height, record.width)
        np.testing.assert_array_equal(entry.candidates.masks(), core.box_masks(record.boxes, record.height, record.width))
        assert entry.seconds >= 0


def test_generate_resumes_without_recomputing(dataset, tmp_path):
    CALLS.clear()
    generate_proposals(dataset, "test_counting_rectangles", tmp_path / "s", progress=False)
    assert len(CALLS) == 3
    (tmp_path / "s" / "entries" / entry_filename("img/01")).unlink()  # as if interrupted there
    CALLS.clear()
    store = generate_proposals(dataset, "test_counting_rectangles", tmp_path / "s", progress=False)
    assert CALLS == ["24x18"]
    assert len(store) == 3


def test_generate_refuses_a_store_made_differently(dataset, tmp_path):
    generate_proposals(dataset, "rectangles", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="existing store has method 'rectangles'"):
        generate_proposals(dataset, "grabcut", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="existing store has params"):
        generate_proposals(dataset, "rectangles", tmp_path / "s", progress=False, max_candidates=3)
    with pytest.raises(InputError, match="existing store has dataset_fingerprint"):
        generate_proposals(TinyDataset([(20, 30)]), "rectangles", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="unknown"):
        generate_proposals(dataset, "no_such_method", tmp_path / "t", progress=False)
    with pytest.raises(InputError, match="--workers must be at least 1"):
        generate_proposals(dataset, "rectangles", tmp_path / "t", workers=0, progress=False)


def test_open_store_refuses_other_datasets_and_wrong_sizes(dataset, tmp_path):
    generate_proposals(dataset, "rectangles", tmp_path / "s", progress=False)
    other = TinyDataset([(20, 30), (24, 18)], name="other")
    with pytest.raises(InputError, match="store was built for dataset 'tiny'.*generate a store for this dataset"):
        open_store(tmp_path / "s", other)
    # An entry whose image size disagrees with the dataset (e.g. copied from another store).
    store = open_store(tmp_path / "s", dataset)
    path = store.entry_path("img/02")
    write_entry(path, np.zeros((5, 7), np.int32), np.zeros((1, 1), np.int64), np.ones(1, np.float32))
    with pytest.raises(InputError, match="entry is 5x7 but the dataset image is 16x16; regenerate"):
        store.get("img/02")
    with pytest.raises(InputError, match="is not in dataset 'tiny'"):
        write_entry(store.entry_path("stray"), np.zeros((2, 2), np.int32), np.zeros((1, 1), np.int64), np.ones(1, np.float32))
        store.get("stray")


def test_store_reports_missing_damaged_and_foreign_files(dataset, tmp_path):
    with pytest.raises(InputError, match="no proposal store here"):
        ProposalStore(tmp_path / "nothing")
    store = generate_proposals(dataset, "rectangles", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="proposal entry not found; run .*generate"):
        store.get("img/99")
    store.entry_path("img/00").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged proposal entry"):
        store.get("img/00")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format version 99"):
        ProposalStore(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable store manifest"):
        ProposalStore(tmp_path / "s")


def test_proposal_eval_takes_an_entry_of_an_image_without_pixels():
    """An image of size 0 has no units and 0-word member rows (``core.masks_to_units``); the
    candidates' boxes are empty and their overlaps 0 (this raised on the old clamp to one unit)."""
    from boxsup_ext.proposals.evaluate import candidate_boxes, mask_best_overlaps

    candidates = core.Candidates(np.zeros((0, 5), np.int32), np.zeros((3, 0), np.int64))
    assert np.array_equal(candidate_boxes(candidates), np.zeros((3, 4)))
    assert np.array_equal(mask_best_overlaps(candidates, np.zeros((2, 0, 5), bool)), np.zeros(2))
