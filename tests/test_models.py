from __future__ import annotations

import warnings

import pytest
import torch

from boxsup_ext.models import (
    build_model,
    load_model_from_checkpoint,
    load_vgg16_imagenet,
    model_meta,
    predict_logits,
)
from boxsup_ext.checkpoints import atomic_save_torch
from boxsup_ext.models.vgg import VGG16_CONV_INDICES
from boxsup_ext.utils import InputError

_VGG_CHANNELS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                 (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def torchvision_vgg16_state(seed: int = 0) -> dict:
    """A state dict with torchvision vgg16's key names and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in zip(VGG16_CONV_INDICES, _VGG_CHANNELS):
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g)
    # Large fc layers: a cheap but position-dependent fill, so the subsampling can be checked.
    state["classifier.0.weight"] = torch.arange(4096 * 25088, dtype=torch.float32).view(4096, 25088)
    state["classifier.0.bias"] = torch.arange(4096, dtype=torch.float32)
    state["classifier.3.weight"] = torch.arange(4096 * 4096, dtype=torch.float32).view(4096, 4096)
    state["classifier.3.bias"] = -torch.arange(4096, dtype=torch.float32)
    state["classifier.6.weight"] = torch.zeros(1000, 4096)
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("name, stride", [("tiny_fcn", 4), ("vgg16_largefov", 8)])
@pytest.mark.parametrize("size", [(33, 47), (64, 64)])
def test_output_shape_and_stride(name, stride, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(name, 5).eval()
    assert model.output_stride == stride
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, -(-size[0] // stride), -(-size[1] // stride))
    logits = predict_logits(model, torch.randn(3, *size))
    assert logits.shape == (5, *size) and logits.dtype == torch.float32


def test_vgg_from_scratch_warns():
    with pytest.warns(UserWarning, match="training from scratch"):
        build_model("vgg16_largefov", 21)


def test_vgg16_imagenet_loading_torchvision_keys(tmp_path):
    state = torchvision_vgg16_state()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = build_model("vgg16_largefov", 21, pretrained=str(path))
    for index in VGG16_CONV_INDICES:
        assert torch.equal(model.features[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(model.features[index].bias, state[f"features.{index}.bias"])
    # DeepLab's conversion: every 4th fc6 filter, 7x7 kernel sampled at 0, 3, 6; fc7 every 4th in and out.
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert model.fc6.weight.shape == (1024, 512, 3, 3)
    assert torch.equal(model.fc6.weight[5, 7, 1, 2], fc6[20, 7, 3, 6])
    assert torch.equal(model.fc6.bias, state["classifier.0.bias"][::4])
    assert model.fc7.weight[3, 9, 0, 0] == state["classifier.3.weight"][12, 36]
    assert torch.equal(model.fc7.bias, state["classifier.3.bias"][::4])
    assert model.classifier.weight.shape == (21, 1024, 1, 1)
    assert model.classifier.bias.abs().sum() == 0 and 0 < model.classifier.weight.std() < 0.02

    fresh = build_model("vgg16_largefov", 21, pretrained=str(path), fc_init="fresh")
    assert torch.equal(fresh.features[0].weight, state["features.0.weight"])
    assert not torch.equal(fresh.fc6.bias, state["classifier.0.bias"][::4])


def test_vgg16_loading_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        build_model("vgg16_largefov", 3, pretrained=str(tmp_path / "missing.pth"))
    bad = {"features.0.weight": torch.zeros(64, 3, 3, 3)}
    torch.save(bad, tmp_path / "partial.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = build_model("vgg16_largefov", 3)
    with pytest.raises(InputError, match="lacks key 'features.0.bias'"):
        load_vgg16_imagenet(target, str(tmp_path / "partial.pth"))
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5)}, tmp_path / "shape.pth")
    with pytest.raises(InputError, match=r"has shape \(64, 3, 5, 5\), expected \(64, 3, 3, 3\)"):
        load_vgg16_imagenet(target, str(tmp_path / "shape.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable torch state dict"):
        load_vgg16_imagenet(target, str(tmp_path / "junk.pth"))


def test_build_model_errors():
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        build_model("resnet", 3)
    with pytest.raises(InputError, match=r"takes no argument\(s\) \['fc_channels'\]"):
        build_model("tiny_fcn", 3, fc_channels=8)
    with pytest.raises(InputError, match="at least 2"):
        build_model("tiny_fcn", 1)


def test_replace_classifier_keeps_backbone():
    model = build_model("tiny_fcn", 81, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.replace_classifier(60)
    assert model.num_classes == 60 and model.classifier.out_channels == 60
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, before[key])
    assert model(torch.randn(1, 3, 16, 16)).shape[1] == 60


def test_checkpoint_roundtrip(tmp_path):
    model = build_model("tiny_fcn", 4, width=6, dropout=0.2)
    meta = model_meta(model, class_names=["background", "a", "b", "c"])
    atomic_save_torch({"model": model.state_dict(), "model_meta": meta}, tmp_path / "best.pt")
    loaded, loaded_meta = load_model_from_checkpoint(tmp_path / "best.pt")
    assert loaded_meta == meta and loaded_meta["kwargs"] == {"width": 6, "dropout": 0.2}
    assert not loaded.training
    x = torch.randn(1, 3, 20, 20)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(InputError, match="does not exist"):
        load_model_from_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not written by boxsup_ext.train"):
        load_model_from_checkpoint(tmp_path / "other.pt")
