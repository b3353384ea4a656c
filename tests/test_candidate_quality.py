"""benchmarks/candidate_quality.py on a tiny synthetic set (4 images, 32 x 48): the JSON's layout,
the ground-truth-derived candidates without noise reach every instance exactly (ABO 1.0), the
noisy ones do not, and bad input is one error line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("candidate_quality", REPO / "benchmarks" / "candidate_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    bench = load_bench()
    out = tmp_path_factory.mktemp("cq")
    argv = ["--out", str(out), "--num-train", "4", "--num-val", "1", "--height", "32", "--width", "48", "--json", str(out / "r.json")]
    assert bench.main(argv) == 0
    return bench, out, json.loads((out / "r.json").read_text())


def test_json_layout(measured):
    bench, out, result = measured
    assert list(result["sources"]) == list(bench.SOURCES)
    assert result["dataset"]["images"] == 4 and (result["dataset"]["height"], result["dataset"]["width"]) == (32, 48)
    assert set(result["relabel_settings"]) == {"top5", "greedy"}
    first = result["relabel_settings"]["top5"]
    assert (first["lam"], first["topk"], first["min_iou"], first["clip_to_box"]) == (0.0, 5, 0.5, True)
    assert result["relabel_settings"]["greedy"]["topk"] == 1
    for name, row in result["sources"].items():
        assert set(row["mask"]) == {"count", "abo", "recall@0.5", "recall@0.7"}, name
        assert row["mask"]["count"] > 0
        assert row["candidates_per_image"] > 0 and row["seconds_per_image"] >= 0
        for labels in row["labels"].values():
            assert 0.0 <= labels["miou"] <= 1.0 and labels["seconds_per_image"] > 0
            assert 0.0 <= labels["ignore_share"] <= 1.0
        assert Path(row["store"]).is_dir()
    # the SAM-shaped stores are ordinary stores in --out, made by the script's own method
    assert result["sources"]["sam_shaped"]["method"] == "sam_shaped"
    assert Path(result["sources"]["sam_shaped"]["store"]).parent == out


def test_noise_free_candidates_reach_every_instance(measured):
    _, _, result = measured
    exact, noisy = result["sources"]["sam_shaped_exact"], result["sources"]["sam_shaped"]
    assert exact["mask"]["abo"] == pytest.approx(1.0, abs=1e-12)
    assert exact["mask"]["recall@0.7"] == 1.0
    # greedy relabeling picks the exact mask of every box: the labels are the ground truth
    assert exact["labels"]["greedy"]["miou"] == pytest.approx(1.0, abs=1e-12)
    assert noisy["mask"]["abo"] < 0.95
    boxes = noisy["mask"]["count"] / result["dataset"]["images"]
    assert noisy["candidates_per_image"] <= boxes * (3 + noisy["params"]["jitter"])


def test_package_registers_no_ground_truth_method():
    code = "import boxsup_ext.proposals as p; print('sam_shaped' in p.available_methods())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("argv, words", [
    (["--flip", "1.5"], "--flip must be in [0, 1]"),
    (["--sources", "selective_search,sam"], "--sources"),
    (["--data", "/nonexistent/folder"], "no dataset/ folder"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, words):
    from boxsup_ext.utils import run_cli

    bench = load_bench()
    assert run_cli(bench.main, ["--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
