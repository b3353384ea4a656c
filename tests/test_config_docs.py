"""docs/configuration.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from boxsup_ext import config as config_module
from boxsup_ext.config_docs import configuration_markdown, field_docs, main

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hint):
            keys += _leaf_keys(hint, key)
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            keys += [key] + _leaf_keys(typing.get_args(hint)[0], f"{key}.N")
        else:
            keys.append(key)
    return keys


def test_configuration_md_is_up_to_date():
    assert DOC.read_text() == configuration_markdown(), (
        "docs/configuration.md is stale; regenerate: python -m boxsup_ext.config_docs > docs/configuration.md"
    )


def test_every_key_has_a_row_with_its_default():
    text = configuration_markdown()
    for key in _leaf_keys(config_module.Config):
        assert f"| `{key}` |" in text
    assert "| `train.epochs` | int | `45` |" in text and "| `data.val.split` | str | `\"val\"` |" in text
    assert "| `relabel.snapshot_epochs` | list[int] | `[1, 2, 5, 10, 20, 45]` |" in text


def test_an_undocumented_field_is_reported(monkeypatch):
    field_docs.cache_clear()
    real = field_docs.__wrapped__
    monkeypatch.setattr("boxsup_ext.config_docs.field_docs",
                        lambda cls: {k: v for k, v in real(cls).items() if not (cls is config_module.RunConfig and k == "seed")})
    with pytest.raises(ValueError, match=r"config field run.seed \(RunConfig.seed\) has no docstring"):
        configuration_markdown()


def test_check_flag_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text(configuration_markdown().replace("`45`", "`44`"))
    assert main(["--check", str(stale)]) == 1
    assert "is stale; regenerate it with: python -m boxsup_ext.config_docs" in capsys.readouterr().err
    assert main(["--check", str(DOC)]) == 0
