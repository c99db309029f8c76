"""imgclf.settings: IMGCLF_* environment, then CLI flags on top."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pydantic
import pytest

from imgclf.settings import ServerSettings, add_settings_arguments, settings_from_args


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("IMGCLF_"):
            monkeypatch.delenv(name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgclf serve")
    add_settings_arguments(p)
    return p


def from_cli(*argv: str) -> ServerSettings:
    return settings_from_args(parser().parse_args(list(argv)))


def test_defaults():
    s = ServerSettings()
    assert s.model_repository == Path("models")
    assert (s.host, s.grpc_port, s.metrics_port) == ("127.0.0.1", 8001, 8002)
    assert s.providers == "auto"
    assert s.warmup is True
    assert s.metrics_bind == "127.0.0.1"


def test_environment_read(monkeypatch):
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("IMGCLF_GRPC_PORT", "9001")
    monkeypatch.setenv("IMGCLF_PROVIDERS", "cpu")
    monkeypatch.setenv("IMGCLF_WARMUP", "false")
    monkeypatch.setenv("IMGCLF_MAX_QUEUE_DELAY_MS", "0.5")
    monkeypatch.setenv("IMGCLF_METRICS_HOST", "0.0.0.0")
    s = ServerSettings()
    assert s.model_repository == Path("/srv/models")
    assert s.grpc_port == 9001
    assert s.providers == "cpu"
    assert s.warmup is False
    assert s.max_queue_delay_ms == 0.5
    assert s.metrics_bind == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "value"),
    [("IMGCLF_GRPC_PORT", "70000"), ("IMGCLF_PROVIDERS", "gpu"), ("IMGCLF_MAX_BATCH_SIZE", "-1")],
)
def test_invalid_environment_rejected(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError):
        ServerSettings()


def test_no_flags_means_environment_and_defaults(monkeypatch):
    monkeypatch.setenv("IMGCLF_MAX_BATCH_SIZE", "4")
    s = from_cli()
    assert s == ServerSettings()
    assert s.max_batch_size == 4


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("IMGCLF_GRPC_PORT", "9001")
    monkeypatch.setenv("IMGCLF_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("IMGCLF_WARMUP", "true")
    monkeypatch.setenv("IMGCLF_PROVIDERS", "cuda")
    s = from_cli("--grpc-port", "9100", "--no-warmup", "--providers", "cpu")
    assert s.grpc_port == 9100
    assert s.warmup is False
    assert s.providers == "cpu"
    assert s.max_batch_size == 4  # not given on the command line: the environment stays


def test_a_boolean_flag_takes_true_or_false_as_the_environment_does(capsys):
    assert from_cli("--http-ui", "false").http_ui is False
    both = from_cli("--http-ui", "off", "--warmup", "yes")
    assert (both.http_ui, both.warmup) == (False, True)
    assert from_cli("--no-http-ui").http_ui is False
    assert from_cli("--http-ui").http_ui is True
    assert from_cli().http_ui is True
    with pytest.raises(SystemExit):
        parser().parse_args(["--http-ui", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_flag_types():
    s = from_cli(
        "--model-repository", "/data/models",
        "--max-queue-delay-ms", "1.5",
        "--metrics-host", "0.0.0.0",
        "--log-level", "DEBUG",
        "--warmup",
        "--max-pixels", "1000",
    )  # fmt: skip
    assert s.model_repository == Path("/data/models")
    assert s.max_queue_delay_ms == 1.5
    assert s.metrics_host == "0.0.0.0"
    assert s.log_level == "DEBUG"
    assert s.warmup is True
    assert s.max_pixels == 1000


def test_bad_choice_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--providers", "gpu"])
    assert "invalid choice" in capsys.readouterr().err


def test_flag_value_validated():
    with pytest.raises(pydantic.ValidationError):
        from_cli("--grpc-port", "-1")


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert field.description, f"{name} has no docstring"
        assert " ".join(field.description.split()) in flat, name
    assert "{auto,cpu,cuda,tensorrt}" in text
    assert "--no-warmup" in text
