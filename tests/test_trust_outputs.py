"""Catalogue of output-side faults (issue 9): what the commands write, where, with which
permissions, what they refuse to replace, and the one line a user sees when an output path or a
device is wrong. Every case runs the real command through ``run_cli`` (exit status 2, one line on
stderr naming the path or argument and what to do) and checks that nothing was written."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from boxsup_ext.checkpoints import atomic_save_torch
from boxsup_ext import evaluate, figures, predict
from boxsup_ext.data import load_label_png, open_dataset, save_label_png
from boxsup_ext.data.synthetic import generate
from boxsup_ext.models import build_model, model_meta
from boxsup_ext.proposals.__main__ import main as proposals_main
from boxsup_ext.utils import (
    InputError,
    OutputManifest,
    atomic_write_bytes,
    atomic_write_json,
    ensure_output_dir,
    run_cli,
)
from test_eval_cli import _checkpoint

MANIFEST = ".boxsup-outputs.json"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("syn") / "data", num_train=1, num_val=2, seed=3, height=24, width=32)
    return root, open_dataset(root, "val", kind="synthetic").num_classes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", synthetic[1])


def _photo(path: Path, seed: int = 0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path.read_bytes()


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show a refused command wrote nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(main, argv, capsys, *needles: str) -> str:
    """Run a CLI main through run_cli; it must exit 2 with one stderr line holding every needle."""
    capsys.readouterr()
    status = run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- file permissions (10)

WRITERS = {
    "json": lambda path: atomic_write_json(path, {"a": 1}),
    "bytes": lambda path: atomic_write_bytes(path, b"data"),
    "torch": lambda path: atomic_save_torch({"w": torch.zeros(2)}, path),
    "png": lambda path: save_label_png(path, np.zeros((3, 4), np.uint8)),
}


@pytest.mark.parametrize("family", sorted(WRITERS))
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, family, mask, expected):
    umask(mask)
    target = tmp_path / f"out.{family}"
    WRITERS[family](target)
    assert _mode(target) == expected
    # Replacing an existing file keeps that file's permission bits (a group-writable file stays
    # group-writable whatever the umask), and no temp file is left.
    for kept in (0o600 if expected != 0o600 else 0o644, 0o664, 0o640):
        target.chmod(kept)
        WRITERS[family](target)
        assert _mode(target) == kept
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    # A new file beside it still follows the umask.
    WRITERS[family](tmp_path / f"new.{family}")
    assert _mode(tmp_path / f"new.{family}") == expected


def test_predict_outputs_honour_the_umask(tmp_path, checkpoint, umask):
    umask(0o022)
    _photo(tmp_path / "in" / "x.jpg")
    assert predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    modes = {p.name: _mode(p) for p in (tmp_path / "out").iterdir()}
    assert modes == {".boxsup-outputs.json": 0o644, "x.png": 0o644, "x_overlay.png": 0o644}


def test_store_and_evaluation_outputs_honour_the_umask(tmp_path, synthetic, checkpoint, umask):
    root, _ = synthetic
    umask(0o027)
    store = tmp_path / "store"
    assert proposals_main(["generate", "--dataset", str(root), "--split", "val", "--method", "rectangles",
                           "--out", str(store), "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert evaluate.main([str(a) for a in _eval_argv(root, checkpoint, out, "--trimap", "1")]) == 0
    files = [p for p in [*store.rglob("*"), *out.rglob("*")] if p.is_file()]
    assert len(files) > 8 and {p.name: _mode(p) for p in files if _mode(p) != 0o640} == {}


# --------------------------------------------------------------------------- predict never overwrites (3)


def test_predict_never_replaces_a_users_file(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    photo = _photo(out / "x.png", seed=1)
    _photo(tmp_path / "in" / "x.jpg", seed=2)
    before = _tree(out)
    argv = ["--checkpoint", checkpoint, tmp_path / "in" / "x.jpg", "--out", out]
    _refused(predict.main, argv, capsys, out / "x.png", "--overwrite")
    assert _tree(out) == before and (out / "x.png").read_bytes() == photo

    assert run_cli(predict.main, [str(a) for a in argv + ["--overwrite"]]) == 0
    label = load_label_png(out / "x.png")
    assert label.shape == (12, 16) and (out / "x.png").read_bytes() != photo

    # Its own outputs are replaced on a rerun without asking ...
    assert run_cli(predict.main, [str(a) for a in argv]) == 0
    np.testing.assert_array_equal(load_label_png(out / "x.png"), label)
    # ... unless the user has since changed one: then it is the user's file.
    (out / "x_overlay.png").write_bytes(photo)
    _refused(predict.main, argv, capsys, out / "x_overlay.png", "--overwrite")
    assert (out / "x_overlay.png").read_bytes() == photo


def test_predict_cli_keeps_a_users_photo(tmp_path, checkpoint):
    """The headline case as a user meets it: the real process, its exit status and its stderr."""
    out = tmp_path / "out"
    photo = _photo(out / "x.png", seed=7)
    _photo(tmp_path / "x.jpg", seed=8)
    command = [sys.executable, "-m", "boxsup_ext.predict", "--checkpoint", str(checkpoint), str(tmp_path / "x.jpg"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert str(out / "x.png") in done.stderr and "--overwrite" in done.stderr
    assert _tree(out) == {"x.png": photo}
    done = subprocess.run(command + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_label_png(out / "x.png").shape == (12, 16)


def test_predict_refuses_before_writing_anything_when_only_the_overlay_collides(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    notes = out / "a_overlay.png"
    _photo(notes, seed=4)
    _photo(tmp_path / "in" / "a.png", seed=5)
    before = _tree(out)
    _refused(predict.main, ["--checkpoint", checkpoint, tmp_path / "in", "--out", out], capsys, notes, "--overwrite")
    assert _tree(out) == before
    # Without overlays the label map alone is free to write.
    assert predict.main(["--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--no-overlay"]) == 0
    assert (out / "a.png").is_file() and _tree(out)["a_overlay.png"] == before["a_overlay.png"]


def test_predict_into_its_input_folder_skips_its_own_outputs(tmp_path, checkpoint, capsys):
    folder = tmp_path / "photos"
    _photo(folder / "a.jpg", seed=6)
    argv = ["--checkpoint", str(checkpoint), str(folder), "--out", str(folder)]
    assert predict.main(argv) == 0
    assert predict.main(argv) == 0  # a rerun predicts a.jpg again, not a.png / a_overlay.png
    assert "wrote 1 label maps" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == [".boxsup-outputs.json", "a.jpg", "a.png", "a_overlay.png"]


def test_predict_names_never_collide_with_overlays(tmp_path):
    _photo(tmp_path / "in" / "x.png")
    _photo(tmp_path / "in" / "x_overlay.png")
    _photo(tmp_path / "other" / "x.png")
    names = [name for _, name in predict.collect_inputs([tmp_path / "in", tmp_path / "other" / "x.png"])]
    files = [f for name in names for f in predict.output_files(name)]
    assert len(files) == len(set(files)) == 6


def test_manifest_with_garbage_vouches_for_nothing(tmp_path):
    (tmp_path / ".boxsup-outputs.json").write_text("{not json")
    (tmp_path / "x.png").write_bytes(b"mine")
    with pytest.raises(InputError, match=r"x.png exists and is not a file tool wrote there \(see .boxsup-outputs.json\); pass --overwrite"):
        OutputManifest(tmp_path, "tool").check(["x.png"])
    OutputManifest(tmp_path, "tool", overwrite=True).check(["x.png"])


def test_predict_unreadable_input_leaves_no_claim_on_its_name(tmp_path, checkpoint, capsys):
    """An input that could not be read wrote nothing: its output name must not stay "ours", or a
    file the user later puts there would be replaced without --overwrite."""
    out = tmp_path / "out"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(b"not an image yet")
    _photo(tmp_path / "in" / "y.png", seed=3)
    argv = ["--checkpoint", checkpoint, tmp_path / "in", "--out", out]
    assert run_cli(predict.main, [str(a) for a in argv]) == 1
    files = json.loads((out / ".boxsup-outputs.json").read_text())["files"]
    assert sorted(files) == ["y.png", "y_overlay.png"] and all(isinstance(v, str) for v in files.values())
    photo = _photo(out / "x.png", seed=9)  # the user's own file, under the name x.png would have had
    _photo(tmp_path / "in" / "x.png", seed=10)  # and the input is readable now
    _refused(predict.main, argv, capsys, out / "x.png", "--overwrite")
    assert (out / "x.png").read_bytes() == photo


def test_manifest_entry_without_hash_vouches_only_for_an_absent_file(tmp_path):
    """A name recorded without a hash (an older or damaged record) does not make an existing file
    there ours, and is dropped when the manifest is saved again."""
    atomic_write_json(tmp_path / MANIFEST, {"command": "tool", "files": {"c.png": None, "d.png": None}})
    (tmp_path / "c.png").write_bytes(b"the user's")
    manifest = OutputManifest(tmp_path, "tool")
    with pytest.raises(InputError, match="c.png exists and is not a file tool wrote there"):
        manifest.check(["c.png"])
    manifest.check(["d.png"])  # absent: free to write
    manifest.write_files({"a.png": b"ours"})
    manifest.save()
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == {"a.png": hashlib.sha256(b"ours").hexdigest()}


def test_manifest_records_hashes_before_the_files_land(tmp_path, monkeypatch):
    """A kill between writing a file and saving the manifest leaves a file the rerun still knows
    as its own: the hash, new and old, is on disk before the rename."""
    from boxsup_ext.utils import outputs as outputs_module

    manifest = OutputManifest(tmp_path, "tool")
    manifest.write_files({"a.png": b"first"})
    manifest.save()
    real = outputs_module.atomic_write_bytes
    seen = []

    def write_then_die(path, data):
        seen.append(json.loads((tmp_path / MANIFEST).read_text())["files"])
        real(path, data)
        raise KeyboardInterrupt  # killed before anything else is recorded

    monkeypatch.setattr(outputs_module, "atomic_write_bytes", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        OutputManifest(tmp_path, "tool").write_files({"a.png": b"second", "b.png": b"new"})
    assert (tmp_path / "a.png").read_bytes() == b"second"
    rerun = OutputManifest(tmp_path, "tool")
    assert rerun.made_by_us("a.png")
    rerun.check(["a.png", "b.png"])
    (tmp_path / "a.png").write_bytes(b"edited by the user")
    assert not OutputManifest(tmp_path, "tool").made_by_us("a.png")


# --------------------------------------------------------------------------- evaluate never overwrites


def _eval_argv(root, checkpoint, out, *extra):
    return ["--checkpoint", checkpoint, "--dataset", root, "--kind", "synthetic", "--out", out, "--no-progress", *extra]


def test_evaluate_never_replaces_a_users_file(tmp_path, synthetic, checkpoint, capsys):
    root, _ = synthetic
    out = tmp_path / "eval"
    out.mkdir()
    (out / "table.txt").write_text("my notes\n")
    _refused(evaluate.main, _eval_argv(root, checkpoint, out), capsys, out / "table.txt", "--overwrite")
    assert _tree(out) == {"table.txt": b"my notes\n"}
    assert run_cli(evaluate.main, [str(a) for a in _eval_argv(root, checkpoint, out, "--overwrite")]) == 0
    assert "mean IoU" in (out / "table.txt").read_text()
    assert run_cli(evaluate.main, [str(a) for a in _eval_argv(root, checkpoint, out)]) == 0  # its own files


def test_evaluate_does_not_score_foreign_pngs_as_predictions(tmp_path, synthetic, checkpoint, capsys):
    """PNGs in DIR/predictions without the settings record were not made by evaluate: reading them
    back as predictions would be a silent wrong score."""
    root, num_classes = synthetic
    out = tmp_path / "eval"
    dataset = open_dataset(root, "val", kind="synthetic")
    for record in dataset:
        save_label_png(out / "predictions" / f"{record.image_id}.png", np.zeros((24, 32), np.uint8))
    before = _tree(out)
    _refused(evaluate.main, _eval_argv(root, checkpoint, out), capsys, out / "predictions", "--overwrite")
    assert _tree(out) == before


def test_evaluate_does_not_reuse_predictions_of_a_replaced_checkpoint(tmp_path, synthetic, capsys):
    """A run's latest.pt is rewritten each epoch under the same name; predictions stored for the
    old weights must not be scored as the new model's."""
    root, num_classes = synthetic
    ckpt = _checkpoint(tmp_path / "latest.pt", num_classes)
    out = tmp_path / "eval"
    assert evaluate.main([str(a) for a in _eval_argv(root, ckpt, out)]) == 0
    first = json.loads((out / "metrics.json").read_text())["confusion_matrix"]
    model = build_model("tiny_fcn", num_classes, width=4)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.arange(num_classes, dtype=torch.float32))  # always the last class
    atomic_save_torch({"model": model.state_dict(), "model_meta": model_meta(model), "config": {}, "epoch": 2}, ckpt)
    # The stored PNGs are evaluate's own (recorded beside settings.json): recomputed, no --overwrite.
    assert run_cli(evaluate.main, [str(a) for a in _eval_argv(root, ckpt, out)]) == 0
    second = np.array(json.loads((out / "metrics.json").read_text())["confusion_matrix"])
    assert second.tolist() != first and second[:, :-1].sum() == 0


def test_evaluating_a_run_twice_recomputes_its_own_predictions_only(tmp_path, synthetic, capsys):
    """``evaluate --run`` scores latest.pt, replaced every epoch: the second evaluation replaces
    the first one's predictions without --overwrite, but a PNG evaluate did not write is refused."""
    root, num_classes = synthetic
    run = tmp_path / "run"
    ckpt = _checkpoint(run / "checkpoints" / "latest.pt", num_classes)
    config = {"data": {"train": [{"kind": "synthetic", "root": str(root), "split": "train"}],
                       "val": {"kind": "synthetic", "root": str(root), "split": "val"}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    argv = ["--run", str(run), "--no-progress"]
    assert run_cli(evaluate.main, argv) == 0
    preds = run / "eval" / "val" / "predictions"
    first = _tree(preds)
    model = build_model("tiny_fcn", num_classes, width=4)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.arange(num_classes, dtype=torch.float32))  # always the last class
    atomic_save_torch({"model": model.state_dict(), "model_meta": model_meta(model), "config": {}, "epoch": 2}, ckpt)
    assert run_cli(evaluate.main, argv) == 0
    second = _tree(preds)
    assert sorted(second) == sorted(first) and all(second[n] != first[n] for n in first if n.endswith(".png"))
    assert all((load_label_png(preds / n) == num_classes - 1).all() for n in second if n.endswith(".png"))

    # A foreign PNG beside evaluate's own is refused, whether or not the checkpoint changed.
    foreign = preds / "not_an_image_id.png"
    save_label_png(foreign, np.zeros((24, 32), np.uint8))
    before = _tree(run / "eval")
    _refused(evaluate.main, argv, capsys, "not_an_image_id.png", "did not write", "--overwrite")
    _checkpoint(ckpt, num_classes)
    _refused(evaluate.main, argv, capsys, "not_an_image_id.png", "did not write", "--overwrite")
    assert _tree(run / "eval") == before
    # A prediction of evaluate's that the user edited is not its own any more either.
    foreign.unlink()
    save_label_png(next(preds.glob("*.png")), np.ones((24, 32), np.uint8))
    _refused(evaluate.main, argv, capsys, "did not write", "--overwrite")
    assert run_cli(evaluate.main, argv + ["--overwrite"]) == 0


# --------------------------------------------------------------------------- output paths (11)


def _unwritable_dirs(tmp_path: Path) -> list[Path]:
    """Folders this process cannot write to. Root ignores permission bits, so as root take system
    folders the kernel refuses anyway: /proc/sys (access() says no) and /sys (access() says yes,
    mkdir says EPERM)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return [folder]
    found = [Path(p) for p in ("/proc/sys", "/sys") if os.path.isdir(p)]
    if not found:
        pytest.skip("running as root without /proc/sys or /sys to fail writing into")
    return found


def _out_cases(tmp_path: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """``--out`` values that cannot be output folders, and what the message must say."""
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    return {
        "file-as-folder": (a_file, ("is a file, not a folder",)),
        "under-a-file": (a_file / "sub" / "deeper", ("cannot be created", str(a_file), "is a file")),
    }


def _commands(root, checkpoint, photo_dir, results, run):
    """Each command that takes an output path, as argv builders taking the bad ``--out``."""
    return {
        "predict": (predict.main, lambda out: ["--checkpoint", checkpoint, photo_dir, "--out", out]),
        "evaluate": (evaluate.main, lambda out: _eval_argv(root, checkpoint, out)),
        "evaluate-run": (evaluate.main, lambda out: ["--run", run, "--out", out, "--no-progress"]),
        "generate": (proposals_main, lambda out: ["generate", "--dataset", root, "--split", "val", "--method", "rectangles", "--out", out, "--no-progress"]),
        "figures-trimap": (figures.main, lambda out: ["trimap", "--results", results, "--out", Path(out) / "t.png"]),
        "figures-compare": (figures.main, lambda out: ["compare", "--results", results, "--out", Path(out) / "c.png"]),
        "figures-curves": (figures.main, lambda out: ["curves", "--run", run, "--out", Path(out) / "c.png"]),
        "figures-mask-evolution": (figures.main, lambda out: ["mask-evolution", "--run", run, "--images", "train_000000", "--dataset", root,
                                                              "--kind", "synthetic", "--split", "train", "--out", Path(out) / "m.png"]),
    }


@pytest.fixture
def workspace(tmp_path, synthetic, checkpoint):
    root, _ = synthetic
    _photo(tmp_path / "photos" / "p.jpg")
    results = tmp_path / "results" / "metrics.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"miou": 0.5, "per_class_iou": {"a": 0.5}, "trimap": {"widths": [1], "boundary_miou": [0.4], "interior_miou": [0.6]}}))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.link(checkpoint, run / "checkpoints" / "latest.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"val": {"kind": "synthetic", "root": str(root), "split": "val"}}}))
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    return _commands(root, checkpoint, tmp_path / "photos", results, run)


COMMANDS = ["predict", "evaluate", "evaluate-run", "generate", "figures-trimap", "figures-compare", "figures-curves", "figures-mask-evolution"]


@pytest.mark.parametrize("case", ["file-as-folder", "under-a-file"])
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_output_folder_is_one_line_and_writes_nothing(tmp_path, workspace, capsys, command, case):
    bad, needles = _out_cases(tmp_path)[case]
    main, argv = workspace[command]
    before = _tree(tmp_path)
    _refused(main, argv(bad), capsys, bad, *needles)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_output_folder_is_one_line_and_writes_nothing(tmp_path, workspace, capsys, command):
    main, argv = workspace[command]
    for locked in _unwritable_dirs(tmp_path):
        before = _tree(tmp_path)
        _refused(main, argv(locked / "boxsup_out"), capsys, locked, "not writable", "choose a folder you can write to")
        assert _tree(tmp_path) == before and not (locked / "boxsup_out").exists()


def test_figures_out_that_is_a_folder(tmp_path, workspace, capsys):
    main, argv = workspace["figures-trimap"]
    folder = tmp_path / "figs"
    folder.mkdir()
    args = argv(folder)[:-1] + [folder]
    _refused(main, args, capsys, f"--out {folder} is a folder", "t")
    assert list(folder.iterdir()) == []


def test_binary_log_is_one_line(tmp_path, workspace, capsys):
    main, argv = workspace["figures-curves"]
    run = Path(argv(tmp_path)[2])
    (run / "log.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    _refused(main, argv(tmp_path / "figs"), capsys, run / "log.jsonl", "not readable as text")
    assert not (tmp_path / "figs").exists()


def test_evaluate_predictions_path_is_a_file(tmp_path, synthetic, checkpoint, capsys):
    root, _ = synthetic
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions").write_text("not a folder\n")
    before = _tree(tmp_path)
    _refused(evaluate.main, _eval_argv(root, checkpoint, out), capsys, out / "predictions", "is a file")
    assert _tree(tmp_path) == before


def test_ensure_output_dir_creates_and_checks(tmp_path):
    made = ensure_output_dir(tmp_path / "a" / "b", "run directory")
    assert made.is_dir()
    assert ensure_output_dir(tmp_path / "c", create=False) == tmp_path / "c" and not (tmp_path / "c").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match=r"^run directory .*f is a file, not a folder"):
        ensure_output_dir(tmp_path / "f", "run directory")


# --------------------------------------------------------------------------- devices (15)


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cuda_requested_without_cuda_says_so(tmp_path, workspace, no_cuda, capsys, command):
    main, argv = workspace[command]
    before = _tree(tmp_path)
    err = _refused(main, argv(tmp_path / "out") + ["--device", "cuda"], capsys,
                   "--device cuda", "CUDA requested but not available", "--device cpu")
    assert "checkpoint" not in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "device, needles",
    [("cuda:7", ("cuda:7", "CUDA device(s)")), ("gpu0", ("'gpu0' is not a torch device",)), ("meta", ("--device meta",))],
)
def test_bad_devices(tmp_path, workspace, monkeypatch, capsys, device, needles):
    if device.startswith("cuda"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    main, argv = workspace["evaluate"]
    _refused(main, argv(tmp_path / "out") + ["--device", device], capsys, *needles)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- inference settings (12, predict part)


@pytest.mark.parametrize("scales, needle", [("1e6", "above 4"), ("inf", "above 4"), ("nan", "positive"), ("1,-1", "positive")])
def test_test_scales_that_cannot_run(tmp_path, workspace, capsys, scales, needle):
    main, argv = workspace["predict"]
    _refused(main, argv(tmp_path / "out") + ["--scales", scales], capsys, "--scales", needle)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- checkpoint read errors name the real cause (8)


def test_checkpoint_loader_errors_name_the_cause(tmp_path, checkpoint):
    from boxsup_ext.checkpoints import load_checkpoint_file

    folder = tmp_path / "ckdir"
    folder.mkdir()
    with pytest.raises(InputError, match=r"cannot read checkpoint .*ckdir \(Is a directory\)"):
        load_checkpoint_file(folder)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(Path(checkpoint).read_bytes()[:1000])
    with pytest.raises(InputError, match=r"cut.pt is not readable .*is the file complete"):
        load_checkpoint_file(truncated)
    junk = tmp_path / "junk.pt"  # neither a torch archive nor a pickle: not "objects other than tensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk.pt is not a torch checkpoint \(neither a torch archive nor a pickle"):
        load_checkpoint_file(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.pt is empty or cut short"):
        load_checkpoint_file(empty)
    if os.geteuid() != 0:
        locked = tmp_path / "locked.pt"
        locked.write_bytes(Path(checkpoint).read_bytes())
        locked.chmod(0o000)
        with pytest.raises(InputError, match=r"cannot read checkpoint .*locked.pt \(Permission denied\)"):
            load_checkpoint_file(locked)


def test_checkpoint_loader_lets_unrelated_errors_through(tmp_path, checkpoint, monkeypatch):
    """Only torch's archive errors mean "incomplete file"; anything else (out of memory, a bug) is
    not dressed up as one."""
    from boxsup_ext import checkpoints

    for error in (MemoryError(), RuntimeError("CUDA error: out of memory")):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(checkpoints.torch, "load", fail)
        with pytest.raises(type(error)):
            checkpoints.load_checkpoint_file(checkpoint)


def test_checkpoint_loader_reads_bytes(checkpoint):
    from boxsup_ext.checkpoints import load_checkpoint_file, read_model_checkpoint

    data = Path(checkpoint).read_bytes()
    assert set(load_checkpoint_file(data)) == set(load_checkpoint_file(checkpoint))
    assert "model_meta" in read_model_checkpoint(data)
    with pytest.raises(InputError, match=r"checkpoint x.pt is not readable"):
        load_checkpoint_file(data[:1000], name="x.pt")


def test_save_checkpoint_errors_name_the_cause(tmp_path, monkeypatch):
    import errno

    from boxsup_ext import checkpoints

    target = tmp_path / "latest.pt"
    cases = {
        "full": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), r"latest.pt \(No space left on device\); is the disk full\?"),
        "denied": (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), r"latest.pt \(Permission denied\)"),
        "short": (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"), r"latest.pt \(it could not be written in full\); is the disk full\?"),
    }
    for error, message in cases.values():
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(checkpoints, "atomic_save_torch", fail)
        with pytest.raises(InputError, match=message) as caught:
            checkpoints.save_checkpoint(target, {"w": torch.zeros(1)})
        if isinstance(error, PermissionError):
            assert "disk full" not in str(caught.value)
    # Errors that are not about writing the file are not dressed up as a full disk.
    for error in (RuntimeError("CUDA error: an illegal memory access"), MemoryError()):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(checkpoints, "atomic_save_torch", fail)
        with pytest.raises(type(error)):
            checkpoints.save_checkpoint(target, {"w": torch.zeros(1)})


# --------------------------------------------------------------------------- the hash is of the weights evaluated (5)


def test_evaluate_hashes_the_bytes_it_loaded(tmp_path, synthetic, monkeypatch):
    """Training replaces latest.pt while evaluate runs: the stored hash must be that of the weights
    the predictions came from, not of whatever the file holds a moment later."""
    import hashlib

    root, num_classes = synthetic
    ckpt = _checkpoint(tmp_path / "latest.pt", num_classes)
    loaded = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    real = evaluate.load_predictor

    def load_then_replace(*args, **kwargs):
        result = real(*args, **kwargs)
        model = build_model("tiny_fcn", num_classes, width=4)  # the trainer's next epoch lands
        atomic_save_torch({"model": model.state_dict(), "model_meta": model_meta(model), "config": {}, "epoch": 2}, ckpt)
        return result

    monkeypatch.setattr(evaluate, "load_predictor", load_then_replace)
    out = tmp_path / "eval"
    assert evaluate.main([str(a) for a in _eval_argv(root, ckpt, out)]) == 0
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() != loaded
    assert json.loads((out / "metrics.json").read_text())["settings"]["checkpoint_sha256"] == loaded
    assert json.loads((out / "predictions" / "settings.json").read_text())["checkpoint_sha256"] == loaded
