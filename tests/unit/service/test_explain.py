"""imgclf.explain through the data plane, over the tiny real ONNX model: its feature tensor is
its input (Identity -> GlobalAveragePool -> Gemm), so the expected maps follow from the input
alone, and the boxes from the photo's geometry (EXIF rotation, draft decoding)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from imgclf.dataplane import ClassifyResult, Core, ImageInput
from imgclf.errors import ExplainUnsupported, InvalidInput
from imgclf.explain import ExplainRequest
from imgclf.imaging import Preprocessing, preprocess_bytes
from imgclf.modelmeta import ModelMetadata
from imgclf.models import cam
from tests.images import encode
from tests.unit.service.support import TINY_SIZE, make_core, make_repo, serving, solid

TOLERANCE = 1e-6


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path)
    make_repo(tmp_path, name="flat", head="flatten")
    make_repo(tmp_path, name="off")
    (tmp_path / "off" / "config.json").write_text('{"explain": false}')
    return tmp_path


def run(core: Core, model: str, images: list[ImageInput], **kw: Any) -> ClassifyResult:
    async def main() -> ClassifyResult:
        async with serving(core):
            return await core.classify(model, images, **kw)

    return asyncio.run(main())


def tiny_spec(repo: Path) -> Preprocessing:
    session = ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"))
    return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map).preprocessing


def tiny_head(repo: Path) -> cam.ActivationHead:
    return cam.find_head((repo / "tiny" / "1" / "model.onnx").read_bytes())


def test_tensor_maps_equal_the_maps_of_the_input_and_cover_the_whole_input(repo: Path) -> None:
    tensor = np.random.default_rng(0).random((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    core = make_core(repo)
    result = run(core, "tiny", [ImageInput(tensor=tensor)], explain=ExplainRequest(top_k=2))
    (c,) = result.results
    e = c.explanation
    assert e is not None and (e.width, e.height) == (TINY_SIZE, TINY_SIZE)
    classes = [m.index for m in e.maps]
    assert classes == [s.index for s in c.top[:2]]
    want = cam.class_maps(tensor[None], tiny_head(repo).weight, np.asarray([classes]))[0]
    np.testing.assert_allclose(np.stack([m.values for m in e.maps]), want, atol=TOLERANCE)
    assert all(m.box == (0.0, 0.0, TINY_SIZE, TINY_SIZE) for m in e.maps)
    assert [m.probability for m in e.maps] == [s.probability for s in c.top[:2]]
    explained = core.metrics.registry.get_sample_value(
        "imgclf_explained_images_total", {"model": "tiny", "version": "1"}
    )
    assert explained == 1


def test_encoded_image_box_is_the_crop_in_the_photos_pixels(repo: Path) -> None:
    photo = encode(np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8), "PNG")
    core = make_core(repo)
    result = run(core, "tiny", [ImageInput(encoded=photo)], explain=ExplainRequest(classes=(2, 0)))
    e = result.results[0].explanation
    assert e is not None and (e.width, e.height) == (40, 30)
    spec = tiny_spec(repo)
    assert e.maps[0].box == pytest.approx(cam.crop_box(40, 30, spec))
    assert e.maps[0].box == pytest.approx((2 * 40 / 21, 0, 18 * 40 / 21, 30))  # 21x16, crop 16
    tensor = preprocess_bytes(photo, spec)[None]
    want = cam.class_maps(tensor, tiny_head(repo).weight, np.asarray([[2, 0]]))[0]
    np.testing.assert_allclose(np.stack([m.values for m in e.maps]), want, atol=TOLERANCE)
    assert [m.index for m in e.maps] == [2, 0]


def test_exif_rotation_gives_the_upright_size(repo: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x30, shown rotated a quarter turn: 30x40
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, "JPEG", exif=exif)
    result = run(make_core(repo), "tiny", [ImageInput(encoded=buf.getvalue())],
                 explain=ExplainRequest(top_k=1))  # fmt: skip
    e = result.results[0].explanation
    assert e is not None and (e.width, e.height) == (30, 40)
    assert e.maps[0].box[3] <= 40 and e.maps[0].box[2] == pytest.approx(30)


def test_draft_decoding_still_gives_the_box_in_the_full_photos_pixels(repo: Path) -> None:
    photo = encode(np.random.default_rng(2).integers(0, 255, (600, 800, 3), np.uint8), "JPEG")
    core = make_core(repo, jpeg_draft=True)
    result = run(core, "tiny", [ImageInput(encoded=photo)], explain=ExplainRequest(top_k=1))
    e = result.results[0].explanation
    assert e is not None and (e.width, e.height) == (800, 600)
    spec = tiny_spec(repo)
    assert e.maps[0].box == pytest.approx(cam.crop_box(800, 600, spec))


def test_plain_requests_get_no_maps_and_the_same_probabilities(repo: Path) -> None:
    image = ImageInput(encoded=solid((20, 200, 40)))
    core = make_core(repo)

    async def main() -> tuple[ClassifyResult, ClassifyResult]:
        async with serving(core):
            plain = await core.classify("tiny", [image])
            explained = await core.classify("tiny", [image], explain=ExplainRequest(top_k=1))
            return plain, explained

    plain, explained = asyncio.run(main())
    assert plain.results[0].explanation is None
    assert explained.results[0].explanation is not None
    np.testing.assert_array_equal(
        plain.results[0].probabilities, explained.results[0].probabilities
    )


@pytest.mark.parametrize(
    ("model", "explain", "error", "words"),
    [
        ("flat", ExplainRequest(top_k=1), ExplainUnsupported, "is Identity, not global pooling"),
        ("off", ExplainRequest(top_k=1), ExplainUnsupported, "turned off in its config.json"),
        ("tiny", ExplainRequest(top_k=6), InvalidInput, "between 1 and 5"),
        ("tiny", ExplainRequest(classes=(0, 1, 2, 0, 1, 2)), InvalidInput, "between 1 and 5"),
        ("tiny", ExplainRequest(classes=(3,)), InvalidInput, "classes 0 to 2"),
        ("tiny", ExplainRequest(classes=(-1,)), InvalidInput, "classes 0 to 2"),
    ],
)
def test_refusals_before_any_work(
    repo: Path, model: str, explain: ExplainRequest, error: type[Exception], words: str
) -> None:
    core = make_core(repo)
    with pytest.raises(error, match=words) as info:
        run(core, model, [ImageInput(encoded=solid((1, 2, 3)))], explain=explain)
    reason = "explain_unsupported" if error is ExplainUnsupported else "bad_explain"
    assert info.value.reason == reason
    failures = core.metrics.registry.get_sample_value(
        "imgclf_request_failures_total", {"model": model, "version": "1", "reason": reason}
    )
    assert failures == 1
    batches = core.metrics.registry.get_sample_value(
        "imgclf_batch_size_count", {"model": model, "version": "1"}
    )
    assert batches is None  # no batch ran


def external_data_model(path: Path) -> Path:
    """The tiny model's head behind a Mul by a 3 KB constant stored in an external data file
    beside the model (the head's weights stay in the model file)."""
    size = TINY_SIZE
    weight = np.eye(3, dtype=np.float32) * 4
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "gain"], ["nchw"]),
            helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(np.ones((1, 3, size, size), np.float32), "gain"),
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(labels=["red", "green", "blue"], input_size=(size, size),
                         resize_size=size, mean=(0.0,) * 3, std=(1.0,) * 3)  # fmt: skip
    helper.set_model_props(model, meta.to_props())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location="gain.bin",
              size_threshold=1024)  # fmt: skip
    return path


def test_a_graph_whose_edited_copy_does_not_load_serves_without_maps(tmp_path: Path) -> None:
    external_data_model(tmp_path / "ext" / "1" / "model.onnx")
    assert (tmp_path / "ext" / "1" / "gain.bin").stat().st_size == 3 * TINY_SIZE * TINY_SIZE * 4
    # (Shared weights do not load such a model at all: their optimised copy lies elsewhere too.)
    image = [ImageInput(encoded=solid((10, 220, 30)))]
    result = run(make_core(tmp_path, share_weights=False), "ext", image)
    assert result.results[0].top[0].label == "green"  # serves as before
    with pytest.raises(ExplainUnsupported, match="feature output did not load"):
        run(make_core(tmp_path, share_weights=False), "ext", image, explain=ExplainRequest(top_k=1))
