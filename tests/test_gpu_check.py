"""The device check's CPU variant: the same script `make gpu-check` runs on a GPU, at small sizes."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_cpu_variant_passes_and_reports(tmp_path):
    path = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["failures"] == {} and set(report["sections"]) == set(gpu_check.SECTIONS)
    sections = report["sections"]
    assert sections["parity"]["cases"] == 30 and sections["errors"]["kinds"] >= 17
    assert sections["determinism"]["runs_equal"] and sections["bench"]["voc"]["ms"] > 0
    assert sections["end_to_end"]["train_images_per_s"] > 0


def test_gpu_check_refuses_bad_arguments(capsys):
    assert gpu_check.main(["--device", "cpu", "--sections", "parity,bogus"]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err


@pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_check_without_a_gpu_says_so(capsys):
    assert gpu_check.main([]) == 2
    assert "--device cpu --quick" in capsys.readouterr().err
