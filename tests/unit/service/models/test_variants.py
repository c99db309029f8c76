"""imgclf.models.variants and load_model's choice between model.onnx and model.int8.onnx, over the
real tiny model and its real static INT8 quantisation (ONNX Runtime on CPU)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclf.metrics.prometheus import Metrics
from imgclf.models.loader import load_model
from imgclf.models.repository import read_model_config
from imgclf.models.variants import choose_variant, cpu_flags, has_vnni
from imgclf.repolayout import INT8_FILE, MODEL_FILE, versions
from imgclf.training.onnx.quantize import Calibration, quantize_int8
from tests.unit.service.support import TINY_SIZE, make_repo, server_settings

VNNI = frozenset({"avx2", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})
CPU = "CPUExecutionProvider"


def add_int8(version_dir: Path) -> Path:
    """A real INT8 (QDQ) quantisation of the folder's tiny model, beside it."""
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-2, 2, size=(8, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    return quantize_int8(
        version_dir / MODEL_FILE, calibration, Calibration("minmax"), version_dir / INT8_FILE
    )


@pytest.fixture
def both(tmp_path: Path) -> Path:
    make_repo(tmp_path)
    add_int8(tmp_path / "tiny" / "1")
    return tmp_path


def test_vnni_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "avx512_vnni"})
    assert has_vnni(frozenset({"avx_vnni"}))
    assert not has_vnni(AVX2)
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_auto_serves_int8_on_a_vnni_cpu_and_float_elsewhere(both):
    folder = both / "tiny" / "1"
    assert choose_variant(folder, "auto", CPU, VNNI).path.name == INT8_FILE
    no_vnni = choose_variant(folder, "auto", CPU, AVX2)
    assert (no_vnni.path.name, no_vnni.reason) == (MODEL_FILE, "this CPU has no VNNI: float model")
    assert choose_variant(folder, "auto", "CUDAExecutionProvider", VNNI).variant == "float"


def test_a_forced_precision_wins_and_a_missing_one_is_an_error(both, tmp_path):
    folder = both / "tiny" / "1"
    assert choose_variant(folder, "int8", CPU, AVX2).variant == "int8"
    assert choose_variant(folder, "float", CPU, VNNI).variant == "float"
    (folder / INT8_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"forced by config\.json"):
        choose_variant(folder, "int8", CPU, VNNI)


def test_an_int8_only_folder_is_a_version_and_serves_anywhere(both):
    folder = both / "tiny" / "1"
    (folder / MODEL_FILE).unlink()
    (entry,) = versions(both / "tiny")
    assert entry.path.name == INT8_FILE
    assert choose_variant(folder, "auto", "CUDAExecutionProvider", VNNI).variant == "int8"
    model = load_model(entry, read_model_config(both / "tiny"), server_settings(both), Metrics())
    assert model.precision == "int8"


def test_the_int8_file_changes_the_version_fingerprint(both):
    (entry,) = versions(both / "tiny")
    before = entry.fingerprint()
    shutil.copy(both / "tiny" / "1" / MODEL_FILE, both / "tiny" / "1" / INT8_FILE)
    assert entry.fingerprint() != before


@pytest.mark.parametrize("forced", ["int8", "float"])
def test_load_model_serves_the_forced_variant_and_says_so(both, forced, caplog):
    (both / "tiny" / "config.json").write_text(json.dumps({"precision": forced}))
    (entry,) = versions(both / "tiny")
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="imgclf.models.loader"):
        model = load_model(entry, read_model_config(both / "tiny"), server_settings(both), metrics)
    precision = "int8" if forced == "int8" else "fp32"
    file = INT8_FILE if forced == "int8" else MODEL_FILE
    assert model.precision == precision
    assert model.served_file == file
    assert f"precision {precision} ({file}: {forced} forced by config.json)" in caplog.text
    # Both variants answer, and the INT8 one close to the float one on a real input.
    batch = np.full((1, 3, TINY_SIZE, TINY_SIZE), 0.5, dtype=np.float32)
    assert model.engine.run(batch).shape == (1, 3)


def test_the_int8_variant_computes_what_the_float_one_does(both):
    (entry,) = versions(both / "tiny")
    settings = server_settings(both)
    outputs = {}
    for forced in ("int8", "float"):
        (both / "tiny" / "config.json").write_text(json.dumps({"precision": forced}))
        model = load_model(entry, read_model_config(both / "tiny"), settings, Metrics())
        batch = np.random.default_rng(1).uniform(-2, 2, (4, 3, TINY_SIZE, TINY_SIZE))
        outputs[forced] = model.engine.run(batch.astype(np.float32))
    assert not np.array_equal(outputs["int8"], outputs["float"])  # really another graph
    np.testing.assert_allclose(outputs["int8"], outputs["float"], atol=0.1)


def test_the_bundled_digits_int8_variant_loads_and_logs_its_gate(tmp_path, caplog):
    bundled = Path(__file__).parents[4] / "models" / "digits"
    shutil.copytree(bundled, tmp_path / "digits")
    (tmp_path / "digits" / "config.json").write_text(json.dumps({"precision": "int8"}))
    (entry,) = versions(tmp_path / "digits")
    config = read_model_config(tmp_path / "digits")
    with caplog.at_level(logging.INFO, logger="imgclf.models.loader"):
        model = load_model(entry, config, server_settings(tmp_path), Metrics())
    assert model.precision == "int8" and model.served_file == INT8_FILE
    gate = model.metadata.provenance["accuracy_gate"]
    assert gate["passed"] and model.metadata.provenance["calibration"]["method"] == "minmax"
    assert (
        f"model digits version 1 int8: 8-bit weights, calibrated minmax on 300 images (seed 0), "
        f"gate on "
        f"{gate['images']} images: top-1 agreement {gate['agreement']:.2f} %"
    ) in caplog.text


def test_auto_serves_a_7_bit_int8_file_on_an_avx2_cpu_without_vnni(tmp_path):
    import onnx

    make_repo(tmp_path)
    folder = tmp_path / "tiny" / "1"
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-2, 2, size=(8, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    int8 = quantize_int8(
        folder / MODEL_FILE, calibration, Calibration("minmax", weight_bits=7), folder / INT8_FILE
    )
    assert choose_variant(folder, "auto", CPU, AVX2).variant == "float"  # says nothing yet
    proto = onnx.load(str(int8))
    onnx.helper.set_model_props(proto, {"weight_bits": "7"})  # what imgclf export writes
    onnx.save(proto, str(int8))
    choice = choose_variant(folder, "auto", CPU, AVX2)
    assert (choice.variant, choice.reason) == (
        "int8", "7-bit INT8 weights: exact at full speed on this CPU without VNNI"
    )  # fmt: skip
    assert choose_variant(folder, "auto", CPU, frozenset({"neon", "asimd"})).variant == "float"
    assert choose_variant(folder, "auto", "CUDAExecutionProvider", AVX2).variant == "float"
    assert choose_variant(folder, "float", CPU, AVX2).variant == "float"  # config.json wins


def test_the_load_log_says_the_weight_bits_and_the_fine_tuning():
    from imgclf.models.variants import describe_gate

    calibration = {"method": "minmax", "images": 300, "seed": 1, "weight_bits": 7,
                   "quantization_aware_training": {"epochs": 3, "lr": 1e-05}}  # fmt: skip
    gate = {"images": 360, "agreement": 99.72, "float_accuracy": 98.06, "int8_accuracy": 97.78}
    assert describe_gate({"calibration": calibration, "accuracy_gate": gate}) == (
        "7-bit weights, fine-tuned quantisation-aware 3 epochs, calibrated minmax on 300 images "
        "(seed 1), gate on 360 images: top-1 agreement 99.72 %, top-1 98.06 % float -> 97.78 % int8"
    )
    assert describe_gate({"calibration": calibration}) == ""
