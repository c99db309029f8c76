"""benchmarks.cost_split: the uint8 front it puts before a model computes what the server's
normalisation does, and the crop-only resize gives the server's pixels (within rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.cost_split import arithmetic_normalize, box_resize_and_crop, pixel_front
from imgclf.client.bench import inputs
from imgclf.imaging import Preprocessing, decode_8bit, normalize, resize_and_crop
from imgclf.repolayout import INT8_FILE, MODEL_FILE

DIGITS = Path(__file__).parents[3] / "models" / "digits" / "1"


@pytest.mark.parametrize("name", [MODEL_FILE, INT8_FILE])
def test_pixel_front_equals_the_server_normalising(tmp_path, name):
    spec = inputs.spec_from_onnx("digits", DIGITS / MODEL_FILE).preprocessing
    pixel_front(DIGITS / name, tmp_path / "m.onnx", spec.mean, spec.std)
    plain = ort.InferenceSession(str(DIGITS / name), providers=["CPUExecutionProvider"])
    fronted = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = fronted.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3]
    assert dict(fronted.get_modelmeta().custom_metadata_map)["input_layout"] == '"NHWC"'
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    want = plain.run(None, {"input": np.stack([normalize(p, spec) for p in pixels])})[0]
    got = fronted.run(None, {"pixels": pixels})[0]
    np.testing.assert_allclose(got, want, atol=1e-4 if name == MODEL_FILE else 0.05)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_resizing_only_the_crop_gives_the_same_pixels_within_one_level():
    spec = Preprocessing((224, 224), 256, "bicubic")
    for _, data in inputs.jpeg_images((640, 480))[:3]:
        img = decode_8bit(data)
        want = np.asarray(resize_and_crop(img, spec)).astype(int)
        got = np.asarray(box_resize_and_crop(img, spec)).astype(int)
        assert got.shape == want.shape == (224, 224, 3)
        assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.001


def test_the_before_row_computes_the_same_bits_as_the_server():
    spec = Preprocessing((224, 224), 256, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(arithmetic_normalize(pixels, spec), normalize(pixels, spec))
