"""imgclf.training.export / onnx_export / parity: a real (tiny) export with the dynamo exporter, its
parity check, the variants (softmax, float16, uint8 with the normalisation baked in), and
that broken parity or a failing exporter fails loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from imgclf.modelmeta import ModelMetadata  # noqa: E402
from imgclf.training import export as export_mod  # noqa: E402
from imgclf.training.data.digits import digits_split, load_digits_images  # noqa: E402
from imgclf.training.data.presets import EvalPreset  # noqa: E402
from imgclf.training.evaluate import OnnxClassifier  # noqa: E402
from imgclf.training.export import ExportOptions  # noqa: E402
from imgclf.training.models.weights import build_model  # noqa: E402
from imgclf.training.onnx import parity  # noqa: E402
from imgclf.training.onnx import variants as onnx_export  # noqa: E402
from imgclf.training.onnx.graphs import FP16, FP32, UINT8, export_graph  # noqa: E402
from imgclf.training.onnx.heads import activation_head  # noqa: E402

METADATA = ModelMetadata(
    labels=[str(d) for d in range(10)],
    input_size=(32, 32),
    resize_size=32,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    provenance={"architecture": "digits_cnn_w4", "dataset": "digits", "val_accuracy": 0.1},
)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn_w4", 10).eval()


LEGACY = ExportOptions(exporter="legacy")


@pytest.fixture(scope="module")
def val_images() -> list:
    """Six real held-out digits."""
    images, labels, _ = load_digits_images()
    _, val_idx = digits_split(labels)
    return [images[i] for i in val_idx[:6]]


@pytest.fixture(scope="module")
def val_inputs(val_images: list) -> torch.Tensor:
    """The six digits through the eval preset."""
    preset = EvalPreset(METADATA.preprocessing)
    return torch.stack([preset(img) for img in val_images])


@pytest.fixture(scope="module")
def exported(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> export_mod.ExportResult:
    out = tmp_path_factory.mktemp("models") / "digits" / "1"
    return export_mod.export_model(tiny_model, METADATA, out, val_inputs)


def test_export_writes_a_checked_model_that_passed_parity(
    exported: export_mod.ExportResult,
) -> None:
    assert exported.path.name == "model.onnx" and exported.path.is_file()
    assert not list(exported.path.parent.glob(".*tmp"))
    onnx.checker.check_model(str(exported.path), full_check=True)
    report = exported.parity
    assert report.ok and report.batch_sizes == (1, 7, 32) and report.num_images == 6
    assert report.max_abs_diff <= parity.PARITY_ATOL
    assert exported.exporter == "dynamo"


def test_batch_axis_is_dynamic(
    exported: export_mod.ExportResult, tiny_model: torch.nn.Module, val_inputs: torch.Tensor
) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    assert inp.type == "tensor(float)"
    for batch in (1, 7, 33):
        x = val_inputs[torch.arange(batch) % len(val_inputs)]
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = tiny_model(x).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_metadata_round_trips(exported: export_mod.ExportResult) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    meta = ModelMetadata.from_props(props)
    assert meta == exported.metadata
    assert meta.labels == METADATA.labels and meta.preprocessing == METADATA.preprocessing
    prov = meta.provenance
    assert prov["architecture"] == "digits_cnn_w4" and prov["val_accuracy"] == 0.1
    assert prov["opset"] == 18 and prov["exporter"] == "torch.onnx dynamo"
    assert prov["torch_version"] == torch.__version__.split("+")[0]
    assert prov["onnx_version"] == onnx.__version__ and "exported_at" in prov
    assert prov["parity_atol"] == parity.PARITY_ATOL and prov["parity_batch_sizes"] == [1, 7, 32]
    assert prov["input_dtype"] == "float32" and meta.output == "logits"
    assert prov["class_activation_maps"] == "from relu_4 (16 features, 10 classes)"


def test_a_head_without_maps_is_recorded_with_the_reason(val_inputs: torch.Tensor) -> None:
    """A hidden layer after the pooling (as MobileNet V3's head): the metadata says why no
    class activation maps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10),
    ).eval()  # fmt: skip
    raw = export_graph(model, val_inputs[:2], 17, "legacy", "logits")
    said = activation_head(raw)
    assert said.startswith("none: head is not global pooling + one linear layer: "), said
    assert "the layer before the linear one is Relu" in said


def test_impossible_tolerance_fails_and_writes_nothing(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path: Path
) -> None:
    options = ExportOptions(exporter="legacy", atol=-1.0, rtol=0.0)
    with pytest.raises(export_mod.ParityError):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, options)
    assert list(tmp_path.iterdir()) == []


def test_perturbed_onnx_output_fails(
    tiny_model: torch.nn.Module,
    val_inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = parity.run_onnx
    monkeypatch.setattr(parity, "run_onnx", lambda s, x: real(s, x) + 1e-2)
    with pytest.raises(export_mod.ParityError, match=r"max \|diff\| 0\.01"):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, LEGACY)
    assert not (tmp_path / "model.onnx").exists()


def test_top1_disagreement_fails_even_within_tolerance(
    tiny_model: torch.nn.Module,
    val_inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = parity.run_onnx

    def swap_top_two(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        out = real(session, x)
        rows = np.arange(len(out))
        order = np.argsort(-out, axis=1)
        first, second = order[:, 0], order[:, 1]
        out[rows, first], out[rows, second] = out[rows, second], out[rows, first]
        return out

    monkeypatch.setattr(parity, "run_onnx", swap_top_two)
    options = ExportOptions(exporter="legacy", atol=1e3)
    with pytest.raises(export_mod.ParityError, match=r"top-1 mismatches [1-9]"):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, options)


def test_label_count_must_match_outputs(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path: Path
) -> None:
    import dataclasses

    wrong = dataclasses.replace(METADATA, labels=["a", "b"])
    with pytest.raises(export_mod.ExportError, match="10 outputs but 2 labels"):
        export_mod.export_model(tiny_model, wrong, tmp_path, val_inputs, LEGACY)


def test_next_version(tmp_path: Path) -> None:
    assert export_mod.next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "notes"):
        (tmp_path / name).mkdir()
    assert export_mod.next_version(tmp_path) == 4


def test_variants_softmax_float16_and_uint8(
    tiny_model: torch.nn.Module, val_images: list, tmp_path: Path
) -> None:
    out_dirs = {v: tmp_path / f"digits{v.suffix}" / "1" for v in (FP32, FP16, UINT8)}
    options = ExportOptions(exporter="legacy", softmax=True)
    results = onnx_export.export_variants(tiny_model, METADATA, out_dirs, val_images, options)
    assert [r.variant for r in results] == ["fp32", "fp16", "uint8"]
    assert all(r.parity.ok for r in results) and results[1].parity.top1_only
    sessions = [
        ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]) for r in results
    ]
    types = [(s.get_inputs()[0].type, s.get_inputs()[0].shape[1:]) for s in sessions]
    assert types == [
        ("tensor(float)", [3, 32, 32]),
        ("tensor(float16)", [3, 32, 32]),
        ("tensor(uint8)", [32, 32, 3]),
    ]
    assert [s.get_outputs()[0].name for s in sessions] == ["probabilities"] * 3
    meta = ModelMetadata.from_props(sessions[1].get_modelmeta().custom_metadata_map)
    assert meta.output == "probabilities" and meta.provenance["input_dtype"] == "float16"
    props = sessions[2].get_modelmeta().custom_metadata_map
    assert props["input_layout"] == '"NHWC"' and props["input_dtype"] == '"uint8"'
    served = ModelMetadata.from_props(props)  # what the server reads: a pixel-input model
    assert served.pixel_input and served.sample_shape == (*served.input_size, 3)
    for r in results:  # a softmax after the head, float16 weights, normalisation in front
        said = r.metadata.provenance["class_activation_maps"]
        assert said.startswith("from ") and said.endswith(" (16 features, 10 classes)"), said

    # Every variant classifies the real digits as PyTorch does (probabilities summing to 1).
    with torch.no_grad():
        want = torch.softmax(
            tiny_model(torch.stack([EvalPreset(METADATA.preprocessing)(i) for i in val_images])), 1
        )
    for result in results:
        got = OnnxClassifier(result.path).probabilities(val_images)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=2e-3)
        assert (got.argmax(1) == want.numpy().argmax(1)).all(), result.variant
        tolerance = 2e-3 if result.variant == "fp16" else 1e-5
        np.testing.assert_allclose(got, want.numpy(), atol=tolerance)


def test_dynamo_below_opset_18_is_refused(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(export_mod.ExportError, match=r"opset >= 18.*--legacy-exporter"):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, ExportOptions(opset=17))
    assert list(tmp_path.iterdir()) == []


def test_a_dynamo_failure_is_never_silent(
    tiny_model: torch.nn.Module,
    val_inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = onnx_export.export_graph

    def dynamo_breaks(module, example, opset, exporter, output_name):
        if exporter == "dynamo":
            raise RuntimeError("unsupported operator aten::frobnicate")
        return real(module, example, opset, exporter, output_name)

    monkeypatch.setattr(onnx_export, "export_graph", dynamo_breaks)
    with pytest.raises(export_mod.ExportError, match=r"frobnicate.*--legacy-exporter"):
        export_mod.export_model(tiny_model, METADATA, tmp_path / "a", val_inputs)
    assert not (tmp_path / "a").exists()

    options = ExportOptions(fallback_to_legacy=True)
    result = export_mod.export_model(tiny_model, METADATA, tmp_path / "b", val_inputs, options)
    assert "WARNING: the dynamo exporter failed" in capsys.readouterr().out
    prov = result.metadata.provenance
    assert result.exporter == "legacy" and prov["exporter"] == "torch.onnx torchscript (legacy)"
    assert "frobnicate" in prov["exporter_fallback"] and prov["opset"] == 17
