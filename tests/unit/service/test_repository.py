"""service.repository: scanning models/<name>/<version>/model.onnx and the config files."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from service.repository import ModelConfig, scan, versions_of


def put_model(root: Path, name: str, version: str) -> Path:
    """A version folder with a model file (scan never opens it, so any bytes do)."""
    path = root / name / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"onnx")
    return path


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_newest_numeric_version_wins(tmp_path):
    for v in ("1", "2", "10", "9"):
        put_model(tmp_path, "resnet", v)
    (tmp_path / "resnet" / "11").mkdir()  # newer, but holds no model
    put_model(tmp_path, "resnet", "latest")  # not numeric
    put_model(tmp_path, "resnet", "12-rc")
    (tmp_path / "resnet" / "13").write_text("a file, not a folder")

    (entry,) = scan(tmp_path)

    assert entry.name == "resnet"
    assert entry.version == 10  # numeric order, not lexical ("9" > "10")
    assert entry.path == tmp_path / "resnet" / "10" / "model.onnx"
    assert entry.read_config() == ModelConfig()
    assert entry.read_sidecar() == {}


def test_versions_of(tmp_path):
    for v in ("3", "1", "20"):
        put_model(tmp_path, "m", v)
    (tmp_path / "m" / "5").mkdir()
    (tmp_path / "m" / "6" / "model.onnx").mkdir(parents=True)  # a folder named model.onnx
    assert versions_of(tmp_path / "m") == [20, 3, 1]


def test_models_sorted_and_empty_ones_skipped(tmp_path):
    put_model(tmp_path, "zeta", "1")
    put_model(tmp_path, "alpha", "2")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-text" / "1").mkdir(parents=True)
    (tmp_path / "only-text" / "1" / "notes.txt").write_text("no model here")
    (tmp_path / "stray.onnx").write_bytes(b"onnx")
    assert [(e.name, e.version) for e in scan(tmp_path)] == [("alpha", 2), ("zeta", 1)]


def test_missing_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_model_config_read(tmp_path):
    put_model(tmp_path, "m", "1")
    write_json(
        tmp_path / "m" / "config.json",
        {"max_batch_size": 16, "max_queue_delay_ms": 0, "max_queue_size": 32, "providers": "cpu"},
    )
    (entry,) = scan(tmp_path)
    assert entry.read_config() == ModelConfig(
        max_batch_size=16, max_queue_delay_ms=0.0, max_queue_size=32, providers="cpu"
    )


@pytest.mark.parametrize("config", [{"max_batch_sise": 4}, {"max_batch_size": 0}])
def test_model_config_errors(tmp_path, config):
    put_model(tmp_path, "m", "1")
    write_json(tmp_path / "m" / "config.json", config)
    (entry,) = scan(tmp_path)  # a bad config fails that model's load, not the scan
    with pytest.raises(pydantic.ValidationError):
        entry.read_config()


def test_config_must_be_an_object(tmp_path):
    put_model(tmp_path, "m", "1")
    write_json(tmp_path / "m" / "config.json", [1, 2])
    (entry,) = scan(tmp_path)
    with pytest.raises(ValueError, match="must hold a JSON object"):
        entry.read_config()


def test_sidecar_of_the_chosen_version_only(tmp_path):
    put_model(tmp_path, "m", "1")
    put_model(tmp_path, "m", "2")
    write_json(tmp_path / "m" / "1" / "config.json", {"labels": ["old"]})
    write_json(tmp_path / "m" / "2" / "config.json", {"labels": ["a", "b"], "input_size": 224})
    (entry,) = scan(tmp_path)
    assert entry.version == 2
    assert entry.read_sidecar() == {"labels": ["a", "b"], "input_size": 224}
    assert entry.read_config() == ModelConfig()  # the version's config.json is not serving config


def test_zero_padded_version_folder(tmp_path):
    """A version folder named "007" is version 7; the entry must point at that folder."""
    model = put_model(tmp_path, "m", "007")
    write_json(tmp_path / "m" / "007" / "config.json", {"labels": ["a"]})
    (entry,) = scan(tmp_path)
    assert entry.version == 7
    assert entry.path == model
    assert entry.path.is_file()
    assert entry.read_sidecar() == {"labels": ["a"]}
