"""relabel.lam_warmup_epochs: lam ramps linearly from 0 over the first N epochs, validated at config
load, applied by the trainer's relabel of each epoch (also after a resume)."""

from __future__ import annotations

import pytest

from boxsup_ext import train as train_module
from boxsup_ext.config import load_config
from boxsup_ext.relabel import RelabelSettings, warmed_lam
from boxsup_ext.proposals.synthetic_setup import prepare_synthetic
from boxsup_ext.training import labels as label_rounds
from boxsup_ext.utils import InputError


def test_warmed_lam_is_linear_from_zero():
    assert [warmed_lam(3.0, 4, e) for e in range(1, 8)] == [0.0, 0.75, 1.5, 2.25, 3.0, 3.0, 3.0]
    assert [warmed_lam(0.3, 0, e) for e in (1, 2, 50)] == [0.3, 0.3, 0.3]
    assert warmed_lam(1.0, 1, 1) == 0.0 and warmed_lam(1.0, 1, 2) == 1.0
    with pytest.raises(ValueError):
        warmed_lam(1.0, 2, 0)


def test_from_config_uses_the_epoch_in_boxsup_modes_only():
    config = load_config(None, ["relabel.lam=2", "relabel.lam_warmup_epochs=4", "relabel.topk=3"])
    lams = [RelabelSettings.from_config(config.relabel, "boxsup", e).lam for e in (1, 3, 5, 9)]
    assert lams == [0.0, 1.0, 2.0, 2.0]
    greedy = RelabelSettings.from_config(config.relabel, "boxsup_greedy", 2)
    assert greedy.lam == 0.5 and greedy.topk == 1
    assert RelabelSettings.from_config(config.relabel, "rectangles", 9).lam == 0.0
    # without a warm-up the epoch changes nothing (the paper's behaviour)
    plain = load_config(None, ["relabel.lam=3"])
    assert {RelabelSettings.from_config(plain.relabel, "boxsup", e).lam for e in (1, 2, 45)} == {3.0}


@pytest.mark.parametrize("value", ["-1", "1.5", "two"])
def test_bad_warmup_is_rejected_at_load(value):
    with pytest.raises(InputError, match="lam_warmup_epochs"):
        load_config(None, [f"relabel.lam_warmup_epochs={value}"])


def test_trainer_relabels_with_the_ramped_lam_and_again_on_resume(tmp_path, monkeypatch):
    setup = prepare_synthetic(tmp_path / "data", 4, 2, size=32, seed=3, methods=("selective_search",))
    seen: list[tuple[int, float]] = []
    real = label_rounds.relabel_batch

    def spy(model, batch, settings, seed, epoch, device):
        seen.append((epoch, settings.lam))
        return real(model, batch, settings, seed, epoch, device)

    monkeypatch.setattr(label_rounds, "relabel_batch", spy)
    settings = {
        "train.mode": "boxsup", "train.batch_size": 2, "train.lr": 0.01, "train.val_every": 0,
        "data.train.0.kind": "synthetic", "data.train.0.root": setup.dataset, "data.train.0.supervision": "box",
        "data.train.0.proposals": setup.stores["selective_search"], "data.val.kind": "synthetic",
        "data.val.root": setup.dataset, "data.crop_size": 32, "data.workers": 0, "model.name": "tiny_fcn",
        "model.width": 4, "relabel.lam": 1.0, "relabel.lam_warmup_epochs": 2, "relabel.batch_images": 8,
        "relabel.snapshot_epochs": "[]", "run.threads": 1, "run.progress": "false", "run.tensorboard": "false",
        "run.run_dir": tmp_path / "run",
    }
    overrides = [f"{key}={value}" for key, value in settings.items()]
    train_module.train(load_config(None, overrides + ["train.epochs=2"]))
    assert seen == [(1, 0.0), (2, 0.5)]
    seen.clear()
    train_module.train(load_config(None, overrides + ["train.epochs=4"]), resume=True)
    assert seen == [(3, 1.0), (4, 1.0)]
