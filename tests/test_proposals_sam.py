"""The ``sam`` proposal method with a tiny randomly initialised transformers SamModel saved in the
library's on-disk format: the command-line store, its determinism, training and evaluation on it,
the preprocessing against the library's processor, and the one-line errors."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from boxsup_ext import core  # noqa: E402
from boxsup_ext.data import open_dataset  # noqa: E402
from boxsup_ext.proposals import get_method  # noqa: E402
from boxsup_ext.proposals import sam as sam_module  # noqa: E402
from boxsup_ext.proposals.__main__ import main as proposals_main  # noqa: E402
from boxsup_ext.proposals.store import ProposalStore  # noqa: E402
from boxsup_ext.proposals.synthetic_setup import prepare_synthetic  # noqa: E402
from boxsup_ext.utils import InputError, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
JITTER = 2
IMAGE_SIZE = 64  # the tiny model's input side (SAM's is 1024)


def save_tiny_sam(folder: Path) -> Path:
    """A randomly initialised SamModel of a few thousand weights (ViT of 2 layers, 32 wide, 64 px
    input, patch 16), written with save_pretrained: config.json + model.safetensors."""
    torch.manual_seed(0)
    config = transformers.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=16, window_size=2, global_attn_indexes=[1],
                           num_pos_feats=16, mlp_dim=64, initializer_range=0.02),
        prompt_encoder_config=dict(hidden_size=32, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32),
    )  # fmt: skip
    transformers.SamModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_synthetic(tmp_path_factory.mktemp("sam_synthetic"), 4, 2, size=48, seed=3, methods=())


def generate(setup, checkpoint, out, *extra):
    argv = ["generate", "--dataset", str(setup.dataset), "--split", "train", "--method", "sam", "--out", str(out),
            "--param", f"checkpoint={checkpoint}", "--param", f"jitter={JITTER}", "--param", "device=cpu", "--no-progress"]
    return proposals_main(argv + list(extra))


@pytest.fixture(scope="module")
def sam_store(setup, tiny_sam, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "sam"
    assert generate(setup, tiny_sam, out) == 0
    return out


def test_store_holds_valid_deterministic_candidates(setup, tiny_sam, sam_store, tmp_path):
    dataset = open_dataset(setup.dataset, "train", kind="synthetic")
    store = ProposalStore(sam_store)
    assert store.method == "sam" and len(store) == 4
    assert store.params == {"checkpoint": str(tiny_sam), "jitter": JITTER, "device": "cpu", "max_candidates": 2000}
    assert store.depends_on == ["boxes", "image"]
    assert generate(setup, tiny_sam, tmp_path / "again") == 0
    again = ProposalStore(tmp_path / "again")
    total = 0
    for record in dataset:
        entry = store.get(record.image_id)
        candidates = entry.candidates
        boxes = len(record.boxes)
        assert 1 <= candidates.num_candidates <= boxes * (3 + JITTER)  # 3 for the box, the best of each jittered one
        masks = candidates.masks()
        assert masks.shape == (candidates.num_candidates, record.height, record.width)
        flat = masks.reshape(candidates.num_candidates, -1)
        assert flat.any(axis=1).all()  # empty masks dropped
        assert np.unique(flat, axis=0).shape[0] == candidates.num_candidates  # repeats dropped
        assert candidates.num_units <= 2 ** candidates.num_candidates  # the common refinement, no more
        assert set(entry.provenance) == {"boxes", "image"}
        other = again.get(record.image_id)
        np.testing.assert_array_equal(candidates.units, other.candidates.units)
        np.testing.assert_array_equal(candidates.members, other.candidates.members)
        np.testing.assert_array_equal(entry.scores, other.scores)
        total += candidates.num_candidates
    assert total > 4


def test_train_one_epoch_and_evaluate_on_the_sam_store(setup, sam_store, tmp_path):
    from boxsup_ext import evaluate
    from boxsup_ext.train import main as train_main

    settings = {
        "train.mode": "boxsup", "train.epochs": 1, "train.batch_size": 2, "train.lr": 0.01, "train.val_every": 1,
        "data.train.0.kind": "synthetic", "data.train.0.root": setup.dataset, "data.train.0.supervision": "box",
        "data.train.0.proposals": sam_store, "data.val.kind": "synthetic", "data.val.root": setup.dataset, "data.val.split": "val",
        "data.crop_size": 48, "data.workers": 0, "model.name": "tiny_fcn", "model.width": 4,
        "run.threads": 1, "run.progress": "false", "run.tensorboard": "false",
    }  # fmt: skip
    run = tmp_path / "run"
    argv = ["--run-dir", str(run)] + [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    assert train_main(argv) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["label_stats"]["relabeled"] == 4 and np.isfinite(log[0]["loss"])
    assert evaluate.main(["--run", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and 0.0 <= metrics["miou"] <= 1.0


def test_jitter_is_seeded_by_the_image_and_stays_inside_it():
    boxes = np.array([[4, 6, 30, 40], [0, 0, 60, 50]], np.float32)
    first = sam_module.jittered_boxes(boxes, 5, 0.2, sam_module.image_rng("a", 0), 50, 60)
    assert first.shape == (2, 5, 4)
    np.testing.assert_array_equal(first, sam_module.jittered_boxes(boxes, 5, 0.2, sam_module.image_rng("a", 0), 50, 60))
    assert not np.array_equal(first, sam_module.jittered_boxes(boxes, 5, 0.2, sam_module.image_rng("b", 0), 50, 60))
    assert not np.array_equal(first, sam_module.jittered_boxes(boxes, 5, 0.2, sam_module.image_rng("a", 1), 50, 60))
    assert first.min() >= 0 and first[..., 0::2].max() <= 60 and first[..., 1::2].max() <= 50
    assert np.all(first[..., 2:] > first[..., :2])
    assert not np.allclose(first[0], boxes[0])  # moved
    # Centres move by at most 20% of the side: the jittered boxes stay near their box.
    centres = (first[0, :, :2] + first[0, :, 2:]) / 2
    assert np.all(np.abs(centres - [17, 23]) <= [0.2 * 26 + 1e-4, 0.2 * 34 + 1e-4])


def test_input_and_masks_match_the_library_processor(tiny_sam):
    processor_class = getattr(transformers, "SamImageProcessorPil", None)
    if processor_class is None:
        pytest.skip("this transformers has no PIL SAM image processor to compare with")
    processor = processor_class(size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    reference = processor(images=image, return_tensors="pt")
    ours, resized = sam_module.model_input(image, IMAGE_SIZE)
    assert list(reference["reshaped_input_sizes"][0]) == list(resized) == [43, 64]
    # PIL resizes 8-bit pixels (rounded) with its own bilinear filter; ours are floats: within 1.5
    # grey levels of 255 (a normalised unit is ~57 levels), 0.3 on average.
    difference = (ours - reference["pixel_values"]).abs() * 57
    assert difference.max() < 1.5 and difference.mean() < 0.3
    logits = torch.randn(5, 16, 16)
    expected = processor.post_process_masks([logits[None]], reference["original_sizes"], reference["reshaped_input_sizes"],
                                            pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})[0][0]
    np.testing.assert_array_equal(sam_module._binarize(logits, IMAGE_SIZE, resized, (30, 45)), expected.numpy())


def test_no_boxes_no_candidates_and_max_candidates(tiny_sam):
    image = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    units, members, scores = get_method("sam").run(image, np.zeros((0, 4)), "x", checkpoint=str(tiny_sam), device="cpu")
    assert units.shape == (20, 24) and members.shape == (0, 1) and scores.shape == (0,)
    boxes = np.array([[2, 2, 20, 18], [5, 1, 24, 20]], np.float32)
    full = get_method("sam").run(image, boxes, "x", checkpoint=str(tiny_sam), device="cpu", jitter=3)
    cut = get_method("sam").run(image, boxes, "x", checkpoint=str(tiny_sam), device="cpu", jitter=3, max_candidates=3)
    assert cut[1].shape[0] == 3 < full[1].shape[0]
    np.testing.assert_array_equal(np.sort(cut[2]), np.sort(full[2])[-3:])  # the highest predicted IoUs
    full_masks = core.unpack_masks(*full[:2])
    for mask in core.unpack_masks(*cut[:2]):
        assert any(np.array_equal(mask, other) for other in full_masks)
    # One prompt per decoder call: the same candidates up to float rounding of the batched matmuls.
    single = get_method("sam").run(image, boxes, "x", checkpoint=str(tiny_sam), device="cpu", jitter=3, prompt_batch=1)
    np.testing.assert_allclose(single[2], full[2], rtol=1e-4)
    assert (core.unpack_masks(*single[:2]) == full_masks).mean() > 0.99


def test_missing_extra_is_one_line(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError) as caught:
        get_method("sam").run(image, np.array([[0, 0, 4, 4]], np.float32), "x", checkpoint="/nowhere")
    assert str(caught.value) == (
        "--method sam needs the optional dependency: pip install 'boxsup_ext[sam]' (transformers>=5.0)"
    )
    assert run_cli(lambda argv: get_method("sam").run(image, np.zeros((1, 4)), "x", checkpoint="/nowhere")) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_bad_checkpoints_are_one_line(setup, tiny_sam, tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    box = np.array([[0, 0, 4, 4]], np.float32)
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((tiny_sam / "config.json").read_text())
    cases = {"missing": "no such folder", "empty": "no config.json in it", "other": "model_type 'bert', not 'sam'",
             "no_weights": "cannot load it"}  # fmt: skip
    for name, problem in cases.items():
        with pytest.raises(InputError, match=problem) as caught:
            get_method("sam").run(image, box, "x", checkpoint=str(tmp_path / name), device="cpu")
        assert str(caught.value).startswith(str(tmp_path / name)) and "facebook/sam-vit-base" in str(caught.value)
    with pytest.raises(InputError, match="device must be auto, cpu, cuda"):
        get_method("sam").run(image, box, "x", checkpoint=str(tiny_sam), device="tpu")
    with pytest.raises(InputError, match="needs option 'checkpoint'"):
        get_method("sam").check_options({})
    # The command line: exit status 2 and one line on stderr, before any entry is written.
    out = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "boxsup_ext.proposals", "generate", "--dataset", str(setup.dataset),
                           "--method", "sam", "--param", f"checkpoint={tmp_path / 'missing'}", "--out", str(out), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such folder" in lines[0] and str(tmp_path / "missing") in lines[0]
    assert not any((out / "entries").glob("*.npz"))
