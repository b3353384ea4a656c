"""Smoke tests: every script in python/ runs with the public API and exits cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "python").glob("*.py"))
SMALL_ARGS = {
    "proposal_costs_example.py": ["--height", "40", "--width", "50"],
    "relabel_synthetic.py": ["--out", "{tmp}/synthetic", "--images", "3"],
    "custom_proposal_method.py": ["--out", "{tmp}", "--images", "2"],
}
DOCS = ROOT / "docs"


def test_examples_exist():
    assert EXAMPLES, "python/ should hold example scripts"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_referenced_from_the_docs(script):
    docs = "".join(path.read_text() for path in sorted(DOCS.glob("*.md")))
    assert f"python/{script.name}" in docs, f"no page of docs/ refers to python/{script.name}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in SMALL_ARGS.get(script.name, [])]
    result = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), "an example should print what it did"
