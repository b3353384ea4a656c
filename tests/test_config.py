from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from boxsup_ext.config import Config, config_to_dict, load_config, save_config
from boxsup_ext.utils import InputError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_settings():
    config = load_config()
    assert (config.train.batch_size, config.train.lr, config.train.lr_step, config.train.epochs) == (20, 0.001, 15, 45)
    assert (config.train.momentum, config.train.weight_decay) == (0.9, 0.0005)
    assert (config.relabel.lam, config.relabel.topk, config.relabel.iou) == (3.0, 5, "box")
    assert config.data.crop_size == 321 and config.model.name == "vgg16_largefov"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.01\ndata:\n  train:\n  - {root: /a, supervision: box}\n")
    config = load_config(path, ["train.lr=1e-3", "relabel.snapshot_epochs=[1, 3]", "data.train.0.limit=5",
                                "data.train.1.root=/b", "train.amp=true", "train.epochs=9"])
    assert config.train.epochs == 9 and config.train.lr == pytest.approx(1e-3) and config.train.amp is True
    assert config.relabel.snapshot_epochs == [1, 3]
    assert [s.root for s in config.data.train] == ["/a", "/b"]
    assert config.data.train[0].limit == 5 and config.data.train[1].supervision == "auto"
    # an int given for a float key is accepted as a float
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)


def test_save_and_reload_roundtrip(tmp_path):
    config = load_config(None, ["train.mode=boxsup_greedy", "model.name=tiny_fcn"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(config)
    assert isinstance(again, Config)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.epoch=3"], r"unknown config key 'train\.epoch'"),
        (["nosuch.key=1"], r"unknown config key 'nosuch'"),
        (["train.epochs=three"], r"train\.epochs' must be int"),
        (["train.amp=1"], r"train\.amp' must be bool"),
        (["train.mode=magic"], r"train\.mode must be one of"),
        (["relabel.topk=0"], r"relabel\.topk must be at least 1"),
        (["data.train.5.root=/x"], r"index 5 is out of range"),
        (["train.epochs"], r"--set expects key=value"),
        (["data.train.0.supervision=semi"], r"needs data\.train\.0\.mask_list"),
        # Values that trained garbage or asked for terabytes before issue 9 (each names its key).
        (["model.dropout=1.5"], r"model\.dropout must be in \[0, 1\], got 1\.5"),
        (["model.dropout=-0.1"], r"model\.dropout must be in \[0, 1\]"),
        (["train.momentum=-0.9"], r"train\.momentum must be 0 or more"),
        (["run.seed=-1"], r"run\.seed must be 0 or more, got -1"),
        (["train.lr=inf"], r"train\.lr must be a finite number, got inf"),
        (["train.lr=.nan"], r"train\.lr must be a finite number, got nan"),
        (["train.weight_decay=-inf"], r"train\.weight_decay must be a finite number"),
        (["relabel.lam=nan"], r"relabel\.lam must be a finite number"),
        (["data.crop_size=1000000"], r"data\.crop_size must be at most 4096 pixels .*GB"),
        (["data.scale_max=1000"], r"data\.scale_max must be at most 8"),
        (["model.num_classes=1"], r"model\.num_classes must be 0 \(from the dataset\) or at least 2, got 1"),
        (["model.num_classes=-2"], r"model\.num_classes must be 0 \(from the dataset\) or at least 2, got -2"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, match):
    with pytest.raises(InputError, match=match) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"unknown config key 'train\.learning_rate'.*valid keys here: mode, epochs"):
        load_config(path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.train.mode in ("boxsup", "boxsup_greedy", "mask", "rectangles", "grabcut")


def test_demo_trains_with_the_shipped_synthetic_config(tmp_path):
    from boxsup_ext.demo import DEMO_CONFIG, demo_config

    assert DEMO_CONFIG == REPO / "configs" / "synthetic_boxsup.yaml"
    shipped = config_to_dict(load_config(DEMO_CONFIG))
    demo = config_to_dict(demo_config(tmp_path / "dataset", {"rectangles": tmp_path / "store"}, "rectangles", tmp_path / "run",
                                      ["train.epochs=3"]))
    for section in ("model", "relabel"):
        assert demo[section] == shipped[section], section
    assert demo["train"] == {**shipped["train"], "mode": "rectangles", "epochs": 3}
    assert demo["data"]["train"][0] == {**shipped["data"]["train"][0], "root": str(tmp_path / "dataset"), "proposals": str(tmp_path / "store")}
    assert demo["data"]["val"]["root"] == str(tmp_path / "dataset")
    assert demo["run"]["run_dir"] == str(tmp_path / "run") and demo["run"]["progress"] is False
    assert yaml.safe_load(DEMO_CONFIG.read_text())["train"]["mode"] == "boxsup"
