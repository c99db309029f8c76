"""A real server on the bundled digits version folder (model.onnx + model.int8.onnx), INT8
forced by config.json: the variant served is the one every door reports, and it classifies
the held-out digits as well as the gate said."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from imgclf.client import Client
from imgclf.client.bench.launcher import serving
from imgclf.training.data.digits import digits_split, load_digits_images
from tests.images import encode

DIGITS = Path(__file__).parents[2] / "models" / "digits"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(DIGITS, repo / "digits")
    (repo / "digits" / "config.json").write_text(json.dumps({"precision": "int8"}))
    with serving(repo) as s:
        yield s


def test_every_door_says_int8(server) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "served-models", "--server", server.target],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "digits  versions=[1]" in out and "precision=int8" in out
    assert "'passed': True" in out and "'method': 'minmax'" in out
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'imgclf_model_info{model="digits",precision="int8"' in metrics
    with triton.InferenceServerClient(server.target) as client:
        config = client.get_model_config("digits").config
    assert config.parameters["precision"].string_value == "int8"
    assert config.default_model_filename == "model.int8.onnx"
    log = server.log()
    assert "precision int8 (model.int8.onnx: int8 forced by config.json)" in log
    assert "model digits version 1 int8: 8-bit weights, calibrated minmax on 300 images" in log


def test_the_int8_model_classifies_the_held_out_digits(server) -> None:
    images, labels, _ = load_digits_images()
    _, val_idx = digits_split(labels)
    pngs = [encode(images[i], "PNG") for i in val_idx]
    with Client(server.target) as client:
        predicted = [
            r.top[0].label
            for start in range(0, len(pngs), 16)
            for r in client.classify(pngs[start : start + 16], model="digits", top_k=1).results
        ]
    expected = [str(labels[i]) for i in val_idx]
    accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)
    assert accuracy >= 0.99, f"INT8 held-out accuracy through gRPC: {accuracy:.4f}"
