from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from boxsup_ext import evaluate
from boxsup_ext.data import load_label_png, open_dataset
from boxsup_ext.data.synthetic import generate
from boxsup_ext.checkpoints import atomic_save_torch
from boxsup_ext.evaluation import evaluator
from boxsup_ext.models import build_model, model_meta
from boxsup_ext.utils import InputError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("syn") / "data", num_train=2, num_val=3, seed=1, height=32, width=40)
    return root, open_dataset(root, "val", kind="synthetic")


def _checkpoint(path: Path, num_classes: int) -> Path:
    """An untrained tiny_fcn checkpoint. Its classifier weights are redrawn larger than the
    trainer's near-zero init so the predictions vary over the image and several classes, which
    keeps the mIoU comparison below from being trivially zero."""
    torch.manual_seed(0)
    model = build_model("tiny_fcn", num_classes, width=4)
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.weight, std=1.0)
    atomic_save_torch({"model": model.state_dict(), "model_meta": model_meta(model), "config": {}, "epoch": 1}, path)
    return path


def _independent_miou(dataset, pred_dir: Path) -> tuple[float, np.ndarray]:
    inter = np.zeros(dataset.num_classes)
    union = np.zeros(dataset.num_classes)
    for i, record in enumerate(dataset):
        pred = load_label_png(pred_dir / f"{record.image_id}.png")
        gt = dataset.load_class_map(i)
        valid = gt != 255
        for c in range(dataset.num_classes):
            inter[c] += np.sum((pred == c) & (gt == c) & valid)
            union[c] += np.sum(((pred == c) | (gt == c)) & valid)
    present = union > 0
    return float(np.mean(inter[present] / union[present])), inter


def test_checkpoint_evaluation_matches_independent_miou_and_resumes(synthetic, tmp_path, monkeypatch, capsys):
    root, dataset = synthetic
    ckpt = _checkpoint(tmp_path / "model.pt", dataset.num_classes)
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(ckpt), "--dataset", str(root), "--kind", "synthetic", "--split", "val",
            "--trimap", "1,3", "--out", str(out), "--no-progress"]
    assert evaluate.main(argv) == 0
    assert "mean IoU" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    assert results["num_images"] == 3 and (out / "table.txt").stat().st_size > 0
    assert (out / "trimap.png").stat().st_size > 1000
    assert len(results["trimap"]["boundary_miou"]) == 2
    miou, inter = _independent_miou(dataset, out / "predictions")
    assert results["miou"] == pytest.approx(miou)
    assert (inter > 0).sum() >= 2 and 0 < miou < 1

    # A second run reuses every stored prediction instead of running the network.
    def no_inference(self, images):
        raise AssertionError("predictions should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(evaluator.LabelPredictor, "labels", no_inference)
        assert evaluate.main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["miou"] == results["miou"] and again["confusion_matrix"] == results["confusion_matrix"]

    # Other settings in the same folder: the stored predictions are evaluate's own, so they are
    # recomputed (no --overwrite needed).
    extended = argv + ["--scales", "0.75,1.0", "--flip", "--crf", "--crf-params", "iterations=3", "--workers", "2"]
    assert evaluate.main(extended) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert results["settings"]["scales"] == [0.75, 1.0] and results["settings"]["flip"]
    assert results["settings"]["crf"]["iterations"] == 3 and results["settings"]["crf"]["bi_xy_std"] == 121
    assert results["miou"] == pytest.approx(_independent_miou(dataset, out / "predictions")[0])


def test_run_directory_defaults_to_the_final_checkpoint(synthetic, tmp_path, capsys):
    """``--run`` scores the run's final checkpoint (latest.pt); best.pt, picked by mIoU on the same
    validation split, only with ``--checkpoint-kind best``, in its own folder and labelled so."""
    root, dataset = synthetic
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _checkpoint(run / "checkpoints" / "latest.pt", dataset.num_classes)
    best = build_model("tiny_fcn", dataset.num_classes, width=4)  # untrained: predicts something else
    atomic_save_torch({"model": best.state_dict(), "model_meta": model_meta(best), "config": {}, "epoch": 1}, run / "checkpoints" / "best.pt")
    config = {"data": {"train": [{"kind": "synthetic", "root": str(root), "split": "train"}],
                       "val": {"kind": "synthetic", "root": str(root), "split": "val"}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert evaluate.main(["--run", str(run), "--no-progress"]) == 0
    results = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert results["num_images"] == 3
    assert results["settings"]["checkpoint"].endswith("latest.pt")
    assert results["settings"]["checkpoint_kind"] == "latest"  # no train_summary.json: not finished
    assert "the run has not finished" in capsys.readouterr().out
    assert json.loads((run / "metrics" / "eval_val.json").read_text())["miou"] == results["miou"]
    assert len(list((run / "eval" / "val" / "predictions").glob("*.png"))) == 3

    (run / "metrics" / "train_summary.json").write_text("{}")
    assert evaluate.main(["--run", str(run), "--no-progress"]) == 0
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["settings"]["checkpoint_kind"] == "final"
    assert "final checkpoint of the run" in (run / "eval" / "val" / "table.txt").read_text()

    assert evaluate.main(["--run", str(run), "--checkpoint-kind", "best", "--no-progress"]) == 0
    chosen = json.loads((run / "eval" / "val-best" / "metrics.json").read_text())
    assert chosen["settings"]["checkpoint"].endswith("best.pt") and chosen["settings"]["checkpoint_kind"] == "best-on-val"
    assert "optimistic" in (run / "eval" / "val-best" / "table.txt").read_text()
    assert chosen["confusion_matrix"] != results["confusion_matrix"]
    assert (run / "metrics" / "eval_val-best.json").is_file()

    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(InputError, match="best.pt does not exist"):
        evaluate.main(["--run", str(run), "--checkpoint-kind", "best", "--no-progress"])
    (run / "checkpoints" / "latest.pt").unlink()
    with pytest.raises(InputError, match="latest.pt does not exist"):
        evaluate.main(["--run", str(run), "--no-progress"])


def test_user_errors(synthetic, tmp_path):
    root, dataset = synthetic
    ckpt = _checkpoint(tmp_path / "wrong.pt", dataset.num_classes + 1)
    with pytest.raises(InputError, match="predicts 7 classes"):
        evaluate.main(["--checkpoint", str(ckpt), "--dataset", str(root), "--kind", "synthetic", "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(InputError, match="--dataset ROOT and --out"):
        evaluate.main(["--checkpoint", str(ckpt)])
    with pytest.raises(InputError, match="not a training run"):
        evaluate.main(["--run", str(tmp_path)])
    with pytest.raises(InputError, match="does not exist"):
        evaluate.main(["--checkpoint", str(tmp_path / "missing.pt"), "--dataset", str(root), "--kind", "synthetic", "--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match="--checkpoint-kind .* use it with --run"):
        evaluate.main(["--checkpoint", str(ckpt), "--dataset", str(root), "--out", str(tmp_path / "o"), "--checkpoint-kind", "best"])
    with pytest.raises(InputError, match="--crf-params needs --crf"):
        evaluate.main(["--checkpoint", str(ckpt), "--dataset", str(root), "--out", str(tmp_path / "o"), "--crf-params", "bi_w=3"])
