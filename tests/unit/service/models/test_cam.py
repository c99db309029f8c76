"""Class activation maps from the bundled ONNX model, read without torch or `onnx`."""

from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from imgclf.imaging import Preprocessing, preprocess_image
from imgclf.modelmeta import ModelMetadata
from imgclf.models import cam
from tests.conftest import BUNDLED_MODELS

MODEL = BUNDLED_MODELS / "efficientnet_lite0" / "1" / "model.onnx"


@functools.cache
def bundled() -> tuple[bytes, cam.ActivationHead, ort.InferenceSession, Preprocessing]:
    data = MODEL.read_bytes()
    head = cam.find_head(data)
    session = cam.explaining_session(data, head)
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    return data, head, session, meta.preprocessing


def run(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(logits [1, classes], features [1, C, h, w]) of the bundled model for one image."""
    _, head, session, spec = bundled()
    logits, features = session.run(
        ["logits", head.feature], {"input": preprocess_image(image, spec)[None]}
    )
    return logits, features


def test_the_bundled_head_is_found_from_the_graph() -> None:
    _, head, session, _ = bundled()
    assert head.feature == "/bn2/act/Clip_output_0"
    assert head.weight.shape == (1000, 1280) and head.bias.shape == (1000,)
    assert [o.name for o in session.get_outputs()] == ["logits", head.feature]


def test_raw_map_means_plus_bias_are_the_logits() -> None:
    """For a GAP + linear head the map's spatial mean plus the bias is the class's logit:
    the weight rows, their orientation and the feature tensor are the right ones."""
    from skimage import data

    logits, features = run(Image.fromarray(data.chelsea()))
    top = np.argsort(logits[0])[::-1][:5][None]
    head = bundled()[1]
    raw = cam.raw_maps(features, head.weight, top)
    assert raw.shape == (1, 5, 7, 7)
    np.testing.assert_allclose(
        raw.mean(axis=(2, 3))[0] + head.bias[top[0]], logits[0, top[0]], rtol=1e-4, atol=1e-4
    )


def composite(halves: list[Image.Image], side: int) -> Image.Image:
    """A side x side image: the two photos squeezed into its left and right halves."""
    out = Image.new("RGB", (side, side))
    for i, half in enumerate(halves):
        out.paste(half.convert("RGB").resize((side // 2, side)), (i * side // 2, 0))
    return out


def share_on_left(maps: np.ndarray, side: int, spec: Preprocessing) -> np.ndarray:
    """[k]: the share of each map's mass [k, h, w] on the left half of a side x side image.
    Each feature column covers an equal strip of the crop box; a strip's mass counts by the
    share of the strip left of the middle."""
    left, _, right, _ = cam.crop_box(side, side, spec)
    edges = np.linspace(left, right, maps.shape[2] + 1)
    left_share = np.clip((side / 2 - edges[:-1]) / (edges[1:] - edges[:-1]), 0.0, 1.0)
    columns = maps.sum(axis=1)  # [k, w]
    return (columns * left_share).sum(axis=1) / columns.sum(axis=1)


def test_each_class_map_points_at_its_own_half_of_a_composite() -> None:
    from skimage import data

    side = 448
    halves = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    classes = [int(np.argmax(run(half.resize((side // 2, side)))[0][0])) for half in halves]
    assert classes[0] != classes[1]
    _, features = run(composite(halves, side))
    head, spec = bundled()[1], bundled()[3]
    maps = cam.class_maps(features, head.weight, np.array([classes]))[0]
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    on_left = share_on_left(maps, side, spec)
    print("share of each map on the left half:", on_left)
    assert on_left[0] > 0.7 and 1.0 - on_left[1] > 0.7, on_left


def test_crop_box_is_the_center_crop_in_original_pixels() -> None:
    spec = Preprocessing(input_size=(224, 224), resize_size=256)
    assert cam.crop_box(448, 448, spec) == pytest.approx((28.0, 28.0, 420.0, 420.0))
    assert cam.crop_box(512, 256, spec) == pytest.approx((144.0, 16.0, 368.0, 240.0))
    assert cam.crop_box(300, 600, spec) == pytest.approx(
        (16 * 300 / 256, 144 * 600 / 512, 240 * 300 / 256, 368 * 600 / 512)
    )


def test_other_heads_are_refused_with_the_reason() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    with pytest.raises(cam.HeadNotSupported) as refused:
        cam.find_head(model.SerializeToString())
    message = str(refused.value)
    assert "head is not global pooling + one linear layer" in message
    assert "Relu, not global pooling" in message and "Gemm <- Relu" in message


def test_matmul_add_softmax_after_reduce_mean_is_a_head() -> None:
    """A foreign layout: ReduceMean over H, W, Reshape, MatMul + Add, Softmax; weights as
    float_data, not raw_data."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)  # [C, classes]
    b = rng.standard_normal(3).astype(np.float32)
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
        helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.tolist()),
        helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4]),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["feat"]),
        helper.make_node("ReduceMean", ["feat"], ["p"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data = model.SerializeToString()
    head = cam.find_head(data)
    assert head.feature == "feat"
    np.testing.assert_array_equal(head.weight, w.T)
    np.testing.assert_array_equal(head.bias, b)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    session = cam.explaining_session(data, head)
    probs, feat = session.run(None, {"x": x})
    np.testing.assert_array_equal(feat, np.maximum(x, 0))
    logits = cam.raw_maps(feat, head.weight, np.array([[0, 1, 2]])).mean(axis=(2, 3)) + b
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)


def test_the_map_is_grad_cam_of_the_torch_model_it_was_exported_from() -> None:
    """Grad-CAM (Selvaraju et al.) on the torch model the bundled ONNX was exported from
    (timm's tf_efficientnet_lite0, training/bundled.py): the gradient of the class's logit
    averaged over the last feature maps weighs them, ReLU, normalised. For a GAP + linear head
    it is the CAM up to scale; after normalisation the two agree within 1e-4 (about 1.4e-6 seen:
    ONNX Runtime against torch in float32)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from skimage import data

    from imgclf.training.models.weights import load_efficientnet_lite0_imagenet

    model = load_efficientnet_lite0_imagenet().eval()
    image = Image.fromarray(data.coffee())
    logits, features = run(image)
    classes = np.argsort(logits[0])[::-1][:3].copy()
    ours = cam.class_maps(features, bundled()[1].weight, classes[None])[0]

    held: dict[str, torch.Tensor] = {}
    hook = model.bn2.register_forward_hook(lambda _m, _i, out: held.__setitem__("f", out))
    try:
        x = torch.from_numpy(preprocess_image(image, bundled()[3])[None])
        torch_logits = model(x)
    finally:
        hook.remove()
    feature = held["f"]
    np.testing.assert_allclose(feature.detach().numpy(), features, atol=1e-3)
    for j, k in enumerate(classes):
        (grad,) = torch.autograd.grad(torch_logits[0, int(k)], feature, retain_graph=True)
        alpha = grad[0].mean(dim=(1, 2), keepdim=True)
        grad_cam = torch.relu((alpha * feature[0]).sum(dim=0)).detach().numpy()
        grad_cam /= grad_cam.max()
        difference = np.abs(grad_cam - ours[j]).max()
        print(f"class {k}: largest |Grad-CAM - CAM| {difference:.2e}")
        assert difference < 1e-4
