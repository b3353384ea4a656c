from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from boxsup_ext import figures  # noqa: E402
from boxsup_ext.utils import InputError  # noqa: E402

C0 = (0x1F, 0x77, 0xB4)  # matplotlib's first line colour
C1 = (0xFF, 0x7F, 0x0E)


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _count_colour(image: np.ndarray, rgb, tol: int = 3) -> int:
    return int((np.abs(image.astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


def _write_log(run: Path, epochs: int, offset: float = 0.0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("data: {}\n")
    lines = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "loss": 2.0 / epoch + offset, "lr": 0.001, "time_s": 1.0, "relabel_s": 0.1}
        if epoch % 2 == 0:
            record["val_miou"] = 0.3 + 0.05 * epoch
        record["label_miou"] = 0.5 + 0.02 * epoch
        lines.append(json.dumps(record))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")


def _results(miou: float, widths=(1, 2, 4)) -> dict:
    return {
        "miou": miou,
        "pixel_accuracy": 0.9,
        "num_images": 3,
        "per_class_iou": {"background": 0.9, "square": miou, "disc": None},
        "trimap": {
            "widths": list(widths),
            "boundary_miou": [miou / 2 + 0.05 * i for i in range(len(widths))],
            "interior_miou": [miou + 0.01 * i for i in range(len(widths))],
            "boundary_pixels": [10, 20, 40],
        },
    }


def test_curves_two_runs(tmp_path, capsys):
    _write_log(tmp_path / "a", 4)
    _write_log(tmp_path / "b", 3, offset=0.5)
    out = tmp_path / "fig" / "curves.png"
    assert figures.main(["curves", "--run", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--dpi", "50"]) == 0
    image = _png(out)
    assert image.shape == (160, 600, 3)  # 12 x 3.2 inches at 50 dpi
    assert _count_colour(image, C0) > 20 and _count_colour(image, C1) > 20
    assert "val_miou 3" in capsys.readouterr().out  # a: epochs 2, 4; b: epoch 2


def test_curves_without_values_is_an_input_error(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(InputError, match="no loss or mIoU"):
        figures.main(["curves", "--run", str(run), "--out", str(tmp_path / "x.png")])


def test_trimap_plot(tmp_path):
    for name, miou in (("single", 0.6), ("multi", 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_results(miou)))
    out = tmp_path / "trimap.png"
    figures.main(["trimap", "--results", str(tmp_path / "single"), str(tmp_path / "multi" / "metrics.json"), "--out", str(out), "--dpi", "60"])
    image = _png(out)
    assert image.shape == (216, 300, 3)
    assert _count_colour(image, C0) > 30 and _count_colour(image, C1) > 30


def test_trimap_needs_trimap_results(tmp_path):
    result = _results(0.5)
    del result["trimap"]
    (tmp_path / "metrics.json").write_text(json.dumps(result))
    with pytest.raises(InputError, match="--trimap"):
        figures.main(["trimap", "--results", str(tmp_path), "--out", str(tmp_path / "t.png")])


def test_compare_table(tmp_path):
    paths = []
    for name, miou in (("boxsup", 0.62), ("mask", 0.68)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "metrics.json")
        paths[-1].write_text(json.dumps(_results(miou)))
    plain, wide, tall = tmp_path / "plain.png", tmp_path / "wide.png", tmp_path / "tall.png"
    figures.main(["compare", "--results", *map(str, paths), "--out", str(plain), "--dpi", "50"])
    figures.main(["compare", "--results", *map(str, paths), "--names", "BoxSup,Mask", "--per-class", "--out", str(wide), "--dpi", "50"])
    figures.main(["compare", "--results", *map(str, paths + paths[:1]), "--out", str(tall), "--dpi", "50"])
    small, big, three = _png(plain), _png(wide), _png(tall)
    # Two rows plus the header at 0.3 inch each and 0.15 inch margins; a third row adds 0.3 inch.
    assert small.shape[0] == round(50 * (0.3 * 3 + 0.3)) and three.shape[0] - small.shape[0] in (14, 15, 16)
    # Columns fit their text: per-class columns widen the table by at least their names' length.
    assert big.shape[1] - small.shape[1] >= 50 * 0.075 * len("backgroundsquaredisc")
    assert three.shape[1] == small.shape[1]
    assert _count_colour(small, (0xDD, 0xE6, 0xF0), tol=2) > 200  # the header row's shading
    with pytest.raises(InputError, match="one per input"):
        figures.main(["compare", "--results", *map(str, paths), "--names", "x", "--out", str(plain)])


def test_missing_results_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        figures.main(["compare", "--results", str(tmp_path / "nope.json"), "--out", str(tmp_path / "c.png")])


def test_mask_evolution_from_run_snapshots(tmp_path):
    import yaml

    from boxsup_ext.data import open_dataset, save_label_png
    from boxsup_ext.data.synthetic import generate

    root = generate(tmp_path / "data", num_train=3, num_val=1, seed=2, height=32, width=40)
    dataset = open_dataset(root, "train", kind="synthetic")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"train": [{"kind": "synthetic", "root": str(root), "split": "train"}]}}))
    shown = [dataset[0].image_id, dataset[2].image_id]
    for epoch in (1, 2, 3):
        for index in range(len(dataset)):
            record = dataset[index]
            label = np.zeros((record.height, record.width), np.uint8)
            if epoch > 1:  # epoch 1 stays background; later epochs paint the boxes
                for (x0, y0, x1, y1), c in zip(record.boxes.astype(int), record.labels):
                    label[y0:y1, x0:x1] = c
            save_label_png(run / "labels" / "snapshots" / f"epoch_{epoch:03d}" / f"{record.image_id}.png", label)
    out = tmp_path / "evolution.png"
    assert figures.main(["mask-evolution", "--run", str(run), "--images", ",".join(shown), "--epochs", "1,3", "--out", str(out), "--dpi", "50"]) == 0
    image = _png(out)
    assert image.shape == (215, 400, 3)  # 2 rows x 4 panels (image, ground truth, 2 epochs), 2 in each
    colours = figures.colorize(np.array([[c for c in dataset[0].labels]], np.uint8))[0]
    for colour in colours:
        assert _count_colour(image, colour, tol=4) > 20
    # Default epochs: all three snapshots; an epoch without snapshots is refused.
    figures.main(["mask-evolution", "--run", str(run), "--images", shown[0], "--out", str(out), "--dpi", "50"])
    assert _png(out).shape == (115, 500, 3)
    with pytest.raises(InputError, match="available"):
        figures.main(["mask-evolution", "--run", str(run), "--images", shown[0], "--epochs", "7", "--out", str(out)])
    with pytest.raises(InputError, match="not in dataset"):
        figures.main(["mask-evolution", "--run", str(run), "--images", "nope", "--out", str(out)])


def test_curves_tolerate_a_torn_last_log_line(tmp_path):
    _write_log(tmp_path / "run", 2)
    with open(tmp_path / "run" / "log.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "loss": 0.')  # a run killed mid-write
    out = tmp_path / "c.png"
    figures.main(["curves", "--run", str(tmp_path / "run"), "--out", str(out), "--dpi", "40"])
    assert _png(out).shape == (128, 480, 3)
    (tmp_path / "run" / "log.jsonl").write_text('{"epoch": 1, "loss": 1.0}\nnot json\n{"epoch": 2, "loss": 0.5}\n')
    with pytest.raises(InputError, match="log.jsonl:2 is not valid JSON"):
        figures.main(["curves", "--run", str(tmp_path / "run"), "--out", str(out)])
