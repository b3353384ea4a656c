"""The one device rule (``boxsup_ext.devices.resolve_device``) that run.device, --device and the
SAM method's device option share."""

from __future__ import annotations

import pytest
import torch

from boxsup_ext.devices import resolve_device
from boxsup_ext.utils import InputError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("value", [None, "", "auto", " Auto ", "cpu", "CPU"])
def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu(no_cuda, value):
    assert resolve_device(value) == torch.device("cpu")


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize(
    "value, message",
    [
        ("cuda", r"run\.device=cuda: CUDA requested but not available on this machine; use run\.device=cpu"),
        ("cuda:1", r"run\.device=cuda:1: CUDA requested"),
        ("tpu", r"run\.device='tpu' is not a torch device; run\.device must be auto, cpu, cuda or cuda:N"),
        ("meta", r"run\.device=meta holds no data"),
    ],
)
def test_refusals_name_the_option(no_cuda, value, message):
    with pytest.raises(InputError, match=message):
        resolve_device(value, "run.device")
