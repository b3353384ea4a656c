"""The ResNet DeepLab models: shapes, torchvision ImageNet files, batch-norm modes, one training epoch.

The full-size networks run at tiny spatial sizes (33-65 px) so the whole file stays within seconds."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.config import load_config
from boxsup_ext.models import (
    build_model,
    convert_sync_batchnorm,
    load_model_from_checkpoint,
    model_from_config,
    predict_logits,
)
from boxsup_ext.proposals.synthetic_setup import prepare_synthetic
from boxsup_ext.train import main as train_main
from boxsup_ext.train import make_optimizer
from boxsup_ext.utils import InputError

RESNETS = [
    ("resnet50_deeplabv2", 8),
    ("resnet101_deeplabv2", 8),
    ("resnet50_deeplabv3plus", 4),
    ("resnet101_deeplabv3plus", 4),
]


def build(name: str, num_classes: int = 5, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no ImageNet weights: "training from scratch"
        return build_model(name, num_classes, **kwargs)


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name, stride", RESNETS)
def test_output_shape_and_stride(name, stride):
    model = build(name).eval()
    assert model.output_stride == stride and model.num_classes == 5
    with torch.no_grad():
        for size in [(65, 65), (33, 47)] if name.startswith("resnet50") else [(33, 47)]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 5, -(-size[0] // stride), -(-size[1] // stride)) and out.dtype == torch.float32
    logits = predict_logits(model, torch.randn(3, 33, 47))
    assert logits.shape == (5, 33, 47)
    model.replace_classifier(7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape[1] == 7 and model.num_classes == 7


def test_torchvision_layout_and_strides():
    v2 = build("resnet101_deeplabv2")
    keys = set(v2.backbone.state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer3.22.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert key in keys
    assert "layer3.23.conv1.weight" not in keys and len(v2.backbone.layer3) == 23
    # v1.5: the stride sits on conv2; DeepLab-v2 dilates all of layer3 (2) and layer4 (4), stride 8.
    assert v2.backbone.layer2[0].conv2.stride == (2, 2) and v2.backbone.layer2[0].conv1.stride == (1, 1)
    assert {b.conv2.dilation for b in v2.backbone.layer3} == {(2, 2)} and {b.conv2.stride for b in v2.backbone.layer3} == {(1, 1)}
    assert {b.conv2.dilation for b in v2.backbone.layer4} == {(4, 4)}
    assert [conv.dilation[0] for conv in v2.classifier.branches] == [6, 12, 18, 24]
    v3 = build("resnet50_deeplabv3plus")
    assert v3.backbone.layer3[0].conv2.stride == (2, 2) and v3.backbone.layer4[0].conv2.dilation == (2, 2)
    assert [b[0].dilation[0] for b in v3.aspp.branches] == [1, 6, 12, 18] and v3.aspp.project[0].out_channels == 256
    assert v3.low_level[0].out_channels == 48 and isinstance(v3.classifier, nn.Conv2d)
    os8 = build("resnet50_deeplabv3plus", encoder_stride=8).eval()
    assert [b[0].dilation[0] for b in os8.aspp.branches] == [1, 12, 24, 36]
    with torch.no_grad():
        assert os8(torch.randn(1, 3, 33, 47)).shape == (1, 5, 9, 12)


def torchvision_file(tmp_path, depth: int, drop_num_batches: bool = False, seed: int = 3):
    """A torchvision-style resnet state dict: a random backbone's keys (torchvision's names) + ``fc``."""
    torch.manual_seed(seed)
    model = build(f"resnet{depth}_deeplabv2")
    state = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.uniform_(0.5, 1.5)  # not the fresh 0 / 1, so loading them is seen
    if drop_num_batches:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / f"resnet{depth}-test.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("drop_num_batches", [False, True])
def test_imagenet_file_loads_into_backbone(tmp_path, drop_num_batches):
    path, state = torchvision_file(tmp_path, 50, drop_num_batches)
    for name in ("resnet50_deeplabv2", "resnet50_deeplabv3plus"):
        model = build_model(name, 21, pretrained=str(path))
        loaded = model.backbone.state_dict()
        assert set(loaded) >= {k for k in state if not k.startswith("fc.")}
        for key, value in state.items():
            if not key.startswith("fc."):
                assert torch.equal(loaded[key], value), key
        assert "pretrained" not in model.build_args["kwargs"]


def test_imagenet_file_errors_are_one_line(tmp_path):
    path, state = torchvision_file(tmp_path, 50)
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "layer2.1.conv2.weight"}, "lacks key 'layer2.1.conv2.weight'"),
        "shape": ({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, r"key 'conv1.weight' has shape \(64, 3, 3, 3\), expected \(64, 3, 7, 7\)"),
        "unexpected": ({**state, "layer5.0.conv1.weight": torch.zeros(1)}, "unexpected key 'layer5.0.conv1.weight'"),
    }
    for label, (broken, message) in cases.items():
        file = tmp_path / f"{label}.pth"
        torch.save(broken, file)
        with pytest.raises(InputError, match=message) as err:
            build_model("resnet50_deeplabv2", 21, pretrained=str(file))
        text = str(err.value)
        assert "\n" not in text and text.startswith("model.pretrained") and str(file) in text and "resnet50-0676ba61.pth" in text
    with pytest.raises(InputError, match="looks like a resnet50") as err:
        build_model("resnet101_deeplabv2", 21, pretrained=str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no such file"):
        build_model("resnet101_deeplabv2", 21, pretrained=str(tmp_path / "absent.pth"))


def one_step(model: nn.Module, bn: str) -> None:
    config = load_config(None, [f"model.bn={bn}", "train.lr=0.01"])
    optimizer, _ = make_optimizer(model, config)
    model.train()
    images, labels = torch.randn(2, 3, 25, 25), torch.randint(0, 5, (2, 25, 25))
    logits = F.interpolate(model(images), size=(25, 25), mode="bilinear", align_corners=False)
    F.cross_entropy(logits, labels).backward()
    optimizer.step()


def test_frozen_bn_survives_train_and_a_step():
    model = build("resnet50_deeplabv2")  # bn: frozen by default
    assert model.bn == "frozen"
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    conv_before = model.backbone.layer1[0].conv1.weight.clone()
    one_step(model, "frozen")
    assert model.training and all(not m.training for m in batch_norms(model.backbone))
    assert all(not p.requires_grad for m in batch_norms(model.backbone) for p in m.parameters())
    after = model.backbone.state_dict()
    for key, value in before.items():
        if ".bn" in key or key.startswith("bn1") or "downsample.1" in key:
            assert torch.equal(after[key], value), key
    assert not torch.equal(model.backbone.layer1[0].conv1.weight, conv_before)
    # DeepLab-v3+: the backbone's batch norm is frozen, the fresh head's trains.
    v3 = build("resnet50_deeplabv3plus").train()
    assert all(not m.training for m in batch_norms(v3.backbone)) and all(m.training for m in batch_norms(v3.aspp))
    assert all(m.weight.requires_grad for m in batch_norms(v3.decoder))
    v3.eval().train()
    assert not v3.backbone.layer4[2].bn3.training and v3.low_level[1].training


def test_train_bn_updates_statistics_and_classifier_lr():
    model = build("resnet50_deeplabv2", bn="train")
    mean_before = model.backbone.bn1.running_mean.clone()
    weight_before = model.backbone.layer2[0].bn2.weight.clone()
    one_step(model, "train")
    assert all(m.training for m in batch_norms(model))
    assert not torch.equal(model.backbone.bn1.running_mean, mean_before)
    assert not torch.equal(model.backbone.layer2[0].bn2.weight, weight_before)
    config = load_config(None, ["train.lr=0.01", "train.classifier_lr_mult=10"])
    optimizer, _ = make_optimizer(model, config)
    # DeepLab-v2: the four ASPP convs are the classifier and get lr x 10.
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in model.classifier.parameters()}
    assert len(optimizer.param_groups[1]["params"]) == 8 and optimizer.param_groups[1]["lr"] == pytest.approx(0.1)


def test_sync_conversion():
    model = build("resnet50_deeplabv3plus", bn="sync")
    count = len(batch_norms(model))
    converted = convert_sync_batchnorm(model, torch.device("cuda"))  # converting needs no process group nor GPU
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == count
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert converted.build_args["kwargs"]["bn"] == "sync"
    with pytest.raises(InputError, match="needs CUDA"):
        convert_sync_batchnorm(build("resnet50_deeplabv2", bn="sync"), torch.device("cpu"))
    frozen = build("resnet50_deeplabv2")
    assert convert_sync_batchnorm(frozen, torch.device("cuda")) is frozen and not any(
        isinstance(m, nn.SyncBatchNorm) for m in frozen.modules())
    single = build("resnet50_deeplabv2", bn="sync")  # one process: plain batch norm
    assert sum(type(m) is nn.BatchNorm2d for m in single.modules()) == len(batch_norms(single))


def test_bn_config_choices():
    config = load_config(None, ["model.name=resnet50_deeplabv2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_from_config(config.model, 3)
    assert model.bn == "frozen" and "bn" not in model.build_args["kwargs"]
    with pytest.raises(InputError, match="model.bn=train applies to the ResNet models only"):
        model_from_config(load_config(None, ["model.name=tiny_fcn", "model.bn=train"]).model, 3)
    with pytest.raises(InputError, match="model.bn must be frozen, train, sync or empty"):
        load_config(None, ["model.bn=group"])
    with pytest.raises(InputError, match="model.bn must be one of frozen, train, sync"):
        build("resnet50_deeplabv2", bn="batch")
    with pytest.raises(InputError, match="model.encoder_stride must be 8 or 16"):
        load_config(None, ["model.encoder_stride=32"])
    for name in ("tiny_fcn", "resnet50_deeplabv2"):  # no encoder stride to choose: a changed value is refused, not ignored
        with pytest.raises(InputError, match=f"model.encoder_stride=8 applies to DeepLab-v3\\+ only; {name} "):
            model_from_config(load_config(None, [f"model.name={name}", "model.encoder_stride=8"]).model, 3)
    with pytest.warns(UserWarning, match="frozen batch norm keeps the initial statistics"):
        build_model("resnet50_deeplabv2", 3)


def test_autocast_and_single_image_batch():
    model = build("resnet50_deeplabv3plus").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 25, 25))
    assert out.shape == (2, 5, 7, 7) and out.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build("resnet50_deeplabv2").train()(torch.randn(1, 3, 25, 25))
    assert out.shape == (1, 5, 4, 4)
    with pytest.raises(InputError, match="at least 2 images per process"):
        model(torch.randn(1, 3, 33, 33))


def test_one_epoch_of_training(tmp_path):
    setup = prepare_synthetic(tmp_path / "synthetic", 4, 2, size=32, seed=1, methods=("selective_search",))
    run_dir = tmp_path / "run"
    settings = {
        "train.mode": "boxsup", "train.epochs": 1, "train.batch_size": 2, "train.lr": 0.001,
        "data.train.0.kind": "synthetic", "data.train.0.root": setup.dataset, "data.train.0.supervision": "box",
        "data.train.0.proposals": setup.stores["selective_search"], "data.val.kind": "synthetic",
        "data.val.root": setup.dataset, "data.crop_size": 32, "data.workers": 0, "model.name": "resnet50_deeplabv2",
        "relabel.snapshot_epochs": "[1]", "run.threads": 1, "run.progress": "false", "run.tensorboard": "false",
    }
    args = ["--run-dir", str(run_dir)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(args) == 0
    (entry,) = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert entry["epoch"] == 1 and torch.isfinite(torch.tensor(entry["loss"])) and 0 <= entry["val_miou"] <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, meta = load_model_from_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert meta["name"] == "resnet50_deeplabv2" and meta["output_stride"] == 8 and model.bn == "frozen"
