"""benchmarks.precision_ab: the repository it serves holds the model twice, each name forced
to one precision, both from the same version folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.precision_ab import make_repository
from imgclf.models.repository import read_model_config
from imgclf.repolayout import INT8_FILE, MODEL_FILE

DIGITS = Path(__file__).parents[3] / "models" / "digits"


def test_the_model_twice_one_name_per_precision(tmp_path):
    name, gate = make_repository(tmp_path, DIGITS, None)
    assert name == "digits" and gate["passed"] is True
    assert read_model_config(tmp_path / "digits_fp32").precision == "float"
    assert read_model_config(tmp_path / "digits_int8").precision == "int8"
    for tag in ("fp32", "int8"):
        folder = tmp_path / f"digits_{tag}" / "1"
        assert (folder / MODEL_FILE).read_bytes() == (DIGITS / "1" / MODEL_FILE).read_bytes()
        assert (folder / INT8_FILE).read_bytes() == (DIGITS / "1" / INT8_FILE).read_bytes()


def test_a_folder_without_int8_needs_the_file_named(tmp_path):
    source = tmp_path / "src" / "m" / "1"
    source.mkdir(parents=True)
    (source / MODEL_FILE).write_bytes((DIGITS / "1" / MODEL_FILE).read_bytes())
    with pytest.raises(FileNotFoundError, match="give --int8"):
        make_repository(tmp_path / "repo", tmp_path / "src" / "m", None)
