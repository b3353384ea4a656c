"""``python -m boxsup_ext.pretrain``: image-level backbone pretraining of tiny_fcn, loaded by model.pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from boxsup_ext.data.synthetic import PRESETS
from boxsup_ext.models import build_model
from boxsup_ext.pretrain import build_parser, main, mean_average_precision, pretrain
from boxsup_ext.utils import InputError, run_cli

TINY = ["--width", "4", "--images", "12", "--val-images", "6", "--size", "32", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "tiny4.pt"
    assert main(["--out", str(out)] + TINY) == 0
    return out


def test_file_loads_into_tiny_fcn_backbone(pretrained):
    state = torch.load(pretrained, weights_only=True)
    assert type(state) is dict and all(isinstance(v, torch.Tensor) for v in state.values())
    model = build_model("tiny_fcn", 6, width=4, pretrained=str(pretrained))
    own = model.features.state_dict()
    assert set(state) == {f"features.{k}" for k in own} and "features.0.1.running_mean" in state
    assert all(torch.equal(own[k], state[f"features.{k}"]) for k in own)
    assert model.classifier.bias.abs().sum() == 0  # the classifier stays fresh
    assert "pretrained" not in model.build_args["kwargs"]  # an init-only argument: checkpoints do not need the file
    record = json.loads(pretrained.with_name(pretrained.name + ".json").read_text())
    assert record["width"] == 4 and record["preset"] == "pretrain" and record["torch_version"] == torch.__version__
    assert record["class_names"] == list(PRESETS["pretrain"].class_names) and 0 <= record["val_map"] <= 1


def test_same_arguments_same_bytes(pretrained, tmp_path):
    again = tmp_path / "again.pt"
    assert main(["--out", str(again)] + TINY) == 0
    assert again.read_bytes() == pretrained.read_bytes()
    other = tmp_path / "other.pt"
    assert main(["--out", str(other), "--seed", "1"] + TINY) == 0
    assert other.read_bytes() != pretrained.read_bytes()


def test_existing_out_needs_force(pretrained, capsys):
    before = pretrained.read_bytes()
    assert run_cli(main, ["--out", str(pretrained)] + TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; pass --force" in err and str(pretrained) in err
    assert pretrained.read_bytes() == before
    assert main(["--out", str(pretrained), "--force"] + TINY) == 0
    assert pretrained.read_bytes() == before  # replaced by the same bytes


def test_wrong_width_is_one_line_naming_key_and_shape(pretrained):
    with pytest.raises(InputError) as info:
        build_model("tiny_fcn", 6, width=8, pretrained=str(pretrained))
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.pretrained:") and str(pretrained) in message
    assert "'features.0.0.weight' has shape (4, 3, 3, 3), expected (8, 3, 3, 3)" in message
    assert "model.width=4" in message


def test_bad_files_are_one_line(pretrained, tmp_path):
    state = torch.load(pretrained, weights_only=True)
    cases = {
        "missing": None,
        "junk": b"not a state dict",
        "list": [torch.zeros(1)],
        "lacking": {k: v for k, v in state.items() if k != "features.5.1.running_var"},
        "extra": dict(state, **{"classifier.weight": torch.zeros(6, 8, 1, 1)}),
    }
    expected = {
        "missing": "no such file", "junk": "not a readable torch state dict", "list": "holds a list, not a state dict",
        "lacking": "lacks key 'features.5.1.running_var'", "extra": "unexpected key 'classifier.weight'",
    }  # fmt: skip
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(InputError, match=expected[name]) as info:
            build_model("tiny_fcn", 6, width=4, pretrained=str(path))
        assert "\n" not in str(info.value) and "model.pretrained" in str(info.value) and "boxsup_ext.pretrain" in str(info.value)


def test_default_classes_are_disjoint_from_segmentation_presets():
    assert build_parser().parse_args(["--out", "x.pt"]).preset == "pretrain"
    used = set(PRESETS["pretrain"].class_names) - {"background"}
    assert used and not used & (set(PRESETS["easy"].class_names) | set(PRESETS["hard"].class_names))


def test_bad_arguments_are_input_errors(tmp_path):
    for extra, match in ((["--preset", "nope"], "--preset"), (["--width", "0"], "--width"), (["--lr", "nan"], "--lr"),
                         (["--seed", "-1"], "--seed")):
        with pytest.raises(InputError, match=match):
            pretrain(build_parser().parse_args(["--out", str(tmp_path / "x.pt")] + TINY + extra))
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(InputError, match="is a folder"):
        pretrain(build_parser().parse_args(["--out", str(tmp_path)] + TINY))


def test_mean_average_precision():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], np.float32)
    assert mean_average_precision(targets * 2 - 1, targets) == 1.0
    scores = np.array([[0.1, 0.0], [0.9, 0.0], [0.2, 0.0], [0.3, 0.0]], np.float32)
    # class 0: positives ranked 3rd and 4th -> (1/3 + 2/4) / 2; class 1 ties rank its one positive 2nd
    assert mean_average_precision(scores, targets) == pytest.approx(((1 / 3 + 2 / 4) / 2 + 1 / 2) / 2)


def test_trainer_starts_from_pretrained_backbone(pretrained, tmp_path, monkeypatch):
    from boxsup_ext.config import load_config
    from boxsup_ext.models import tiny
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic
    from boxsup_ext.train import train

    loaded = []  # the backbone the trainer starts from, right after the file was loaded into it
    real = tiny.load_tiny_backbone

    def recording(model, source):
        real(model, source)
        loaded.append((source, {k: v.clone() for k, v in model.features.state_dict().items()}))

    monkeypatch.setattr(tiny, "load_tiny_backbone", recording)

    setup = prepare_synthetic(tmp_path / "synthetic", 4, 2, size=48, seed=1, methods=("rectangles",))
    config = load_config(assignments={
        "train.mode": "rectangles", "train.epochs": 1, "train.batch_size": 2, "train.val_every": 1,
        "data.train.0.kind": "synthetic", "data.train.0.root": str(setup.dataset), "data.train.0.supervision": "box",
        "data.train.0.proposals": str(setup.stores["rectangles"]), "data.val.kind": "synthetic",
        "data.val.root": str(setup.dataset), "data.crop_size": 48, "data.workers": 0, "model.name": "tiny_fcn",
        "model.width": 4, "model.pretrained": str(pretrained), "run.run_dir": str(tmp_path / "run"), "run.threads": 1,
        "run.progress": False, "run.tensorboard": False,
    })  # fmt: skip
    summary = train(config)
    assert summary
    state = torch.load(pretrained, weights_only=True)
    (source, features), = loaded
    assert source == str(pretrained) and all(torch.equal(v, state[f"features.{k}"]) for k, v in features.items())
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and "pretrained" not in checkpoint["model_meta"]["kwargs"]


def test_resume_does_not_read_the_pretrained_file_again(pretrained, tmp_path, monkeypatch):
    """The checkpoint holds every weight: --resume must neither load model.pretrained again nor
    need it to still exist."""
    import shutil

    from boxsup_ext.config import load_config
    from boxsup_ext.models import tiny
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic
    from boxsup_ext.train import train

    loads = []
    real = tiny.load_tiny_backbone
    monkeypatch.setattr(tiny, "load_tiny_backbone", lambda model, source: (loads.append(source), real(model, source)))
    weights = Path(shutil.copy(pretrained, tmp_path / "backbone.pt"))
    setup = prepare_synthetic(tmp_path / "synthetic", 4, 2, size=48, seed=1, methods=("rectangles",))
    settings = {
        "train.mode": "rectangles", "train.epochs": 1, "train.batch_size": 2, "train.val_every": 0,
        "data.train.0.kind": "synthetic", "data.train.0.root": str(setup.dataset), "data.train.0.supervision": "box",
        "data.train.0.proposals": str(setup.stores["rectangles"]), "data.val.root": "", "data.crop_size": 48,
        "data.workers": 0, "model.name": "tiny_fcn", "model.width": 4, "model.pretrained": str(weights),
        "run.run_dir": str(tmp_path / "run"), "run.threads": 1, "run.progress": False, "run.tensorboard": False,
    }  # fmt: skip
    train(load_config(assignments=settings))
    assert loads == [str(weights)]
    weights.unlink()
    summary = train(load_config(assignments={**settings, "train.epochs": 2}), resume=True)
    assert loads == [str(weights)] and summary
    assert torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["epoch"] == 2


def test_global_torch_state_is_restored(tmp_path):
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        pretrain(build_parser().parse_args(["--out", str(tmp_path / "x.pt"), "--threads", "1"] + TINY), log=lambda _: None)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.get_num_threads() == threads
