"""imgclf bench --variants: the flags, the repository it serves (the model once per variant,
each forced to its precision), the per-round ratios and the table; no server, no timing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from imgclf.client.bench import cli, variants
from imgclf.models.repository import read_model_config
from imgclf.repolayout import CONFIG_FILE, INT8_FILE, MODEL_FILE

DIGITS = Path(__file__).parents[5] / "models" / "digits"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_variants_flag_takes_two_or_more_known_variants_once_each():
    assert parse("--variants", "fp32,int8").variants == ["fp32", "int8"]
    assert parse("--variants", "int8, fp32").variants == ["int8", "fp32"]
    assert parse().variants is None
    for bad in ("fp32", "fp32,fp32", "fp32,bf16", ""):
        with pytest.raises(SystemExit):
            parse("--variants", bad)


def test_variants_need_a_started_server_and_only_served_points():
    with pytest.raises(ValueError, match="--start-server"):
        variants.check_args(parse("--variants", "fp32,int8"))
    for extra in (["--limit"], ["--floor"], ["--model-path", "m.onnx"]):
        args = parse("--variants", "fp32,int8", "--start-server", *extra)
        with pytest.raises(ValueError, match="served points only"):
            variants.check_args(args)
    variants.check_args(parse("--variants", "fp32,int8", "--start-server"))


def test_the_model_once_per_variant_each_forced_to_its_precision(tmp_path):
    names = variants.make_repository(tmp_path, DIGITS, ["fp32", "int8"])
    assert names == {"fp32": "digits_fp32", "int8": "digits_int8"}
    assert read_model_config(tmp_path / "digits_fp32").precision == "float"
    assert read_model_config(tmp_path / "digits_int8").precision == "int8"
    for name in names.values():
        folder = tmp_path / name / "1"
        assert (folder / MODEL_FILE).read_bytes() == (DIGITS / "1" / MODEL_FILE).read_bytes()
        assert (folder / INT8_FILE).read_bytes() == (DIGITS / "1" / INT8_FILE).read_bytes()
    assert variants.gate_of(DIGITS / "1" / INT8_FILE)["passed"] is True


def test_the_model_config_travels_and_int8_file_replaces_the_folders(tmp_path):
    src = tmp_path / "src" / "m"
    (src / "3").mkdir(parents=True)
    (src / "3" / MODEL_FILE).write_bytes(b"float")
    (src / CONFIG_FILE).write_text(json.dumps({"max_batch_size": 4, "precision": "auto"}))
    other = tmp_path / "other.onnx"
    other.write_bytes(b"int8")
    with pytest.raises(FileNotFoundError, match="give --int8-file"):
        variants.make_repository(tmp_path / "r0", src, ["fp32", "int8"])
    variants.make_repository(tmp_path / "r", src, ["fp32", "int8"], other)
    assert (tmp_path / "r" / "m_int8" / "3" / INT8_FILE).read_bytes() == b"int8"
    config = json.loads((tmp_path / "r" / "m_int8" / CONFIG_FILE).read_text())
    assert config == {"max_batch_size": 4, "precision": "int8"}


def test_an_int8_only_model_has_no_fp32_to_compare_with(tmp_path):
    (tmp_path / "src" / "m" / "1").mkdir(parents=True)
    (tmp_path / "src" / "m" / "1" / INT8_FILE).write_bytes(b"int8")
    with pytest.raises(FileNotFoundError, match="no fp32 variant"):
        variants.make_repository(tmp_path / "r", tmp_path / "src" / "m", ["fp32", "int8"])


def point(load: str, ips: float, p50: float, cores: float | None) -> dict:
    return {
        "load": load,
        "summary": {"throughput_ips": ips, "latency_ms": {"p50": p50, "p99": 2 * p50}},
        "server": {"server_cpu_cores": cores},
    }


def test_ratios_are_per_round_then_median():
    rounds = [
        {"fp32": [point("c=16", 40, 100, 1.6)], "int8": [point("c=16", 60, 50, 1.8)]},
        {"fp32": [point("c=16", 20, 200, 1.0)], "int8": [point("c=16", 40, 100, 1.6)]},
        {"fp32": [point("c=16", 50, 80, 2.0)], "int8": [point("c=16", 55, 80, None)]},
    ]
    fp32, int8 = variants.compare(rounds, ["fp32", "int8"])
    assert fp32["images_per_s_ratios"] == [1.0, 1.0, 1.0]
    assert int8["images_per_s_ratios"] == pytest.approx([1.5, 2.0, 1.1])
    assert int8["images_per_s_ratio"] == pytest.approx(1.5)  # not 51.7 / 40 of the medians
    assert int8["images_per_s"] == 55
    assert int8["p50_ms_ratios"] == [0.5, 0.5, 1.0]
    # CPU per image: 1000 * cores / img/s; a round without the server's CPU counts for none.
    assert int8["cpu_ms_per_image_ratios"] == pytest.approx([30 / 40, 40 / 50, None])
    assert int8["cpu_ms_per_image_ratio"] == pytest.approx(0.775)


def test_the_table_names_each_variant_and_a_failed_gate():
    rounds = [{"fp32": [point("c=1", 10, 100, 0.5)], "int8": [point("c=1", 15, 70, 0.5)]}] * 2
    result = {
        "model": "m", "variants": ["fp32", "int8"], "input": "jpeg", "rounds_run": 2,
        "int8_file": "/tmp/x.onnx", "int8_gate": {"passed": False},
        "load_average": {"start": "1.00 1.00 1.00", "end": "2.00 1.00 1.00"},
        "comparison": variants.compare(rounds, ["fp32", "int8"]),
    }  # fmt: skip
    out = variants.text(result)
    assert "FAILED: speed only" in out and "load average 1.00 1.00 1.00" in out
    row = next(line for line in out.splitlines() if line.startswith("c=1") and "int8" in line)
    assert row.split()[2:4] == ["15.0", "15.0..15.0"] and "1.50" in row.split()
