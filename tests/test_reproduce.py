"""benchmarks/reproduce.py end to end in its seconds-long smoke mode: the tables' structure, the
JSON's statistics, the figures, and that a rerun into the same folder reuses every run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_mean_std_and_equal_steps():
    reproduce = load_reproduce()
    stat = reproduce.mean_std([0.5, 0.7, None, 0.6])
    assert stat["n"] == 3 and math.isclose(stat["mean"], 0.6) and math.isclose(stat["std"], 0.1)
    assert reproduce.mean_std([None]) is None and reproduce.mean_std([0.4])["std"] == 0.0
    assert reproduce.pm(stat) == "60.00 ± 10.00"
    # 20 epochs of 160 images at batch 4 = 800 steps = 133 epochs of 23 images (6 steps each)
    assert reproduce.equal_steps(20, 160, 23) == 133 and reproduce.equal_steps(20, 160, 160) == 20
    table = {"a": {"val_miou": {"mean": 0.5, "std": 0.01}}, "b": {"val_miou": {"mean": 0.52, "std": 0.01}}}
    assert reproduce.compare(table, "a", "b", "a < b")["holds"]
    assert not reproduce.compare(table, "b", "a", "b < a")["holds"]


def test_smoke_run_writes_tables_json_and_figures_and_reuses_runs(tmp_path, capsys):
    reproduce = load_reproduce()
    out = tmp_path / "reproduce"
    assert reproduce.main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "total time" in printed
    text = (out / "tables.md").read_text()
    for heading in ("## Table 1: supervision", "## Table 2: estimated masks", "## Table 3", "## Figure 4", "## The paper's ordering"):
        assert heading in text
    report = json.loads((out / "results.json").read_text())
    table = report["table"]
    assert {"mask", "boxsup", "semi", "rectangles", "grabcut", "boxsup_greedy"} <= set(table)
    assert any(k.startswith("t3_mask_") for k in table) and any(k.startswith("t3_semi_") for k in table)
    n_train = report["settings"]["num_train"]
    assert table["semi"]["n_mask"] == round(n_train / 7) and table["semi"]["n_box"] == n_train - table["semi"]["n_mask"]
    for key, row in table.items():
        assert 0 <= row["val_miou"]["mean"] <= 1 and row["val_miou"]["n"] == 1, key
        assert f"{100 * row['val_miou']['mean']:.2f} ± 0.00" in text, key
    # estimated labels are scored where labels are estimated, never for the mask upper bound
    assert table["mask"]["label_miou"] is None
    for key in ("boxsup", "semi", "rectangles", "grabcut", "boxsup_greedy"):
        assert 0 < table[key]["label_miou"]["mean"] <= 1, key
    # Table 3 compares at (nearly) equal SGD steps
    small = table[f"t3_mask_{table['semi']['n_mask']}"]
    assert abs(small["steps"] - table["semi"]["steps"]) <= max(small["steps"], table["semi"]["steps"]) * 0.15
    assert table["boxsup"]["trimap"]["widths"] == [1, 2]
    claims = [c["claim"] for c in report["orderings"]]
    assert "rectangles < grabcut" in claims and "box <= semi" in claims
    assert report["provenance"]["commit"] and "cores" in report["provenance"]["machine"]
    assert report["provenance"]["commit"] in text
    for name in ("mask_evolution", "training_curves", "trimap", "table3"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    # a rerun trains nothing
    assert reproduce.main(["--smoke", "--out", str(out)]) == 0
    rerun = json.loads((out / "results.json").read_text())
    assert all(r["reused"] for r in rerun["runs"])
    assert rerun["table"]["boxsup"]["val_miou"] == table["boxsup"]["val_miou"]


def test_bad_arguments(tmp_path):
    from boxsup_ext.utils import InputError

    reproduce = load_reproduce()
    with pytest.raises(InputError, match="--seeds"):
        reproduce.main(["--smoke", "--seeds", "0", "--out", str(tmp_path)])


def test_headline_smoke_runs_both_regimes_and_reports_the_bar(tmp_path):
    reproduce = load_reproduce()
    out = tmp_path / "headline"
    assert reproduce.main(["--headline", "--smoke", "--out", str(out), "--variant", "vote:relabel.agreement=0.8"]) == 0
    report = json.loads((out / "headline.json").read_text())
    table = report["table"]
    for regime in ("scratch", "pretrained"):
        for row in ("mask", "boxsup", "rectangles", "paper", "vote"):
            assert table[f"smoke_{regime}_{row}"]["val_miou"]["n"] == 1, (regime, row)
        assert set(report["checks"][f"smoke_{regime}"]) >= {"share_of_mask", "over_rectangles", "worst_seed_below_mean", "holds"}
    # the pretrained regime's runs start from the pretraining step's backbone; the paper row is the paper's recipe
    backbone = report["backbone"]
    assert backbone and (tmp_path / "headline" / "pretrained").is_dir()
    assert f"model.pretrained={backbone}" in table["smoke_pretrained_boxsup"]["overrides"]
    assert not any(o.startswith("model.pretrained") for o in table["smoke_scratch_boxsup"]["overrides"])
    assert "relabel.lam=3.0" in table["smoke_scratch_paper"]["overrides"]
    assert "relabel.agreement=0.8" in table["smoke_scratch_vote"]["overrides"]
    text = (out / "headline.md").read_text()
    assert "| paper |" in text and "of mask" in text
    with pytest.raises(reproduce.InputError, match="--variant"):
        reproduce.parse_variants(["no colon"])
