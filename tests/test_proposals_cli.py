"""The proposal CLI (generate / eval / methods) end to end on the built-in synthetic dataset, and
the evaluation arithmetic against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boxsup_ext.data.synthetic import generate as generate_synthetic
from boxsup_ext import core
from boxsup_ext.proposals.__main__ import main, parse_params
from boxsup_ext.proposals.evaluate import box_iou, candidate_boxes, mask_best_overlaps
from boxsup_ext.utils import InputError, run_cli


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=1, num_val=4, seed=11, height=72, width=96)
    return root


def run_eval(root, store, out):
    assert main(["eval", "--dataset", str(root), "--split", "val", "--store", str(store), "--json", str(out), "--no-progress"]) == 0
    return json.loads(out.read_text())


def test_generate_and_eval_three_methods(synthetic_root, tmp_path, capsys):
    results = {}
    for method, extra in (("rectangles", []), ("grabcut", ["--param", "iterations=3"]), ("selective_search", ["--workers", "2"])):
        store = tmp_path / method
        argv = ["generate", "--dataset", str(synthetic_root), "--split", "val", "--method", method, "--out", str(store), "--no-progress"]
        assert main(argv + extra) == 0
        assert "4 entries" in capsys.readouterr().out
        results[method] = run_eval(synthetic_root, store, tmp_path / f"{method}.json")
        assert f"method {method}" in capsys.readouterr().out
    for method, result in results.items():
        assert result["images"] == 4 and result["method"] == method
        for kind in ("mask", "box"):
            assert result[kind]["count"] > 0
            assert 0.0 <= result[kind]["recall@0.7"] <= result[kind]["recall@0.5"] <= 1.0
            assert 0.0 < result[kind]["abo"] <= 1.0
        assert result["candidates_per_image"] >= 1 and result["bytes_per_image"] > 0
    # Rectangles are the boxes themselves: perfect box overlap, one candidate per box.
    assert results["rectangles"]["box"]["abo"] == pytest.approx(1.0)
    assert results["grabcut"]["params"] == {"iterations": 3, "max_candidates": 2000}
    # The point of region proposals: segments fit the objects better than boxes do.
    assert results["selective_search"]["mask"]["abo"] > results["rectangles"]["mask"]["abo"]
    assert results["selective_search"]["candidates_per_image"] > results["grabcut"]["candidates_per_image"]


def test_generate_resume_and_eval_limit(synthetic_root, tmp_path, capsys):
    store = tmp_path / "rect"
    argv = ["generate", "--dataset", str(synthetic_root), "--split", "val", "--method", "rectangles", "--out", str(store), "--no-progress"]
    assert main(argv) == 0
    entries = sorted((store / "entries").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in entries}
    entries[0].unlink()
    assert main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (store / "entries").iterdir()}
    assert set(after) == set(stamps)
    assert all(after[name] == stamps[name] for name in stamps if name != entries[0].name)
    result = run_eval(synthetic_root, store, tmp_path / "r.json")
    assert result["images"] == 4
    assert main(["eval", "--dataset", str(synthetic_root), "--store", str(store), "--limit", "2", "--no-progress"]) == 0
    assert "images 2" in capsys.readouterr().out


def test_cli_errors_are_one_line(synthetic_root, tmp_path, capsys):
    assert run_cli(main, ["generate", "--dataset", str(synthetic_root), "--method", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "proposal method 'nope' is unknown" in capsys.readouterr().err
    assert run_cli(main, ["eval", "--dataset", str(synthetic_root), "--store", str(tmp_path / "missing")]) == 2
    assert "no proposal store here" in capsys.readouterr().err
    # A store built on the train split is refused for the val split.
    assert main(["generate", "--dataset", str(synthetic_root), "--split", "train", "--method", "rectangles", "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    assert run_cli(main, ["eval", "--dataset", str(synthetic_root), "--split", "val", "--store", str(tmp_path / "t")]) == 2
    assert "generate a store for this dataset" in capsys.readouterr().err
    assert run_cli(main, ["generate", "--dataset", str(synthetic_root), "--out", str(tmp_path / "y"), "--param", "novalue"]) == 2
    assert "must look like key=value" in capsys.readouterr().err
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"grabcut", "mcg", "rectangles", "selective_search"} <= set(listed) and listed == sorted(listed)


def test_parse_params_reads_yaml_values():
    assert parse_params(["ks=[100, 200]", "colour-spaces=hsv,lab", "sigma=0.5", "mat_dir=/a/b"]) == {
        "ks": [100, 200], "colour_spaces": "hsv,lab", "sigma": 0.5, "mat_dir": "/a/b"}
    with pytest.raises(InputError, match="not valid YAML"):
        parse_params(["ks=[1,"])


def test_overlaps_match_brute_force():
    rng = np.random.default_rng(4)
    h, w = 14, 19
    masks = rng.random((6, h, w)) < 0.3
    masks[5] = False  # an empty candidate
    candidates = core.Candidates(*core.masks_to_units(masks))
    truth = rng.random((3, h, w)) < 0.4
    expected = [max((c & t).sum() / max((c | t).sum(), 1) for c in masks) for t in truth]
    np.testing.assert_allclose(mask_best_overlaps(candidates, truth), expected)
    boxes = candidate_boxes(candidates)
    for mask, box in zip(masks, boxes):
        if mask.any():
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        else:
            np.testing.assert_array_equal(box, [0, 0, 0, 0])


def test_box_iou_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_proposal_benchmark_runs_small(tmp_path, capsys):
    import runpy
    from pathlib import Path

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "proposal_bench.py"), run_name="bench")
    out = tmp_path / "bench.json"
    assert bench["main"](["--images", "1", "--height", "48", "--width", "64", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["image_size"] == [48, 64] and figures["images"] == 1
    assert figures["candidates_per_image"] >= 1 and figures["store_bytes_per_image"] > 0
    assert "s/image wall" in capsys.readouterr().out
