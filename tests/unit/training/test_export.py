"""training.export: a real (tiny) export, its parity check, and that broken parity fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from service.modelmeta import ModelMetadata  # noqa: E402
from training import export as export_mod  # noqa: E402
from training.architectures import build_model  # noqa: E402
from training.digits import digits_split, load_digits_images  # noqa: E402
from training.presets import EvalPreset  # noqa: E402

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


@pytest.fixture(scope="module")
def val_inputs() -> torch.Tensor:
    """Six real held-out digits through the eval preset."""
    images, labels, _ = load_digits_images()
    _, val_idx = digits_split(labels)
    preset = EvalPreset(METADATA.preprocessing)
    return torch.stack([preset(images[i]) for i in val_idx[:6]])


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
    parity = exported.parity
    assert parity.ok and parity.batch_sizes == (1, 6) and parity.num_images == 6
    assert parity.max_abs_diff <= export_mod.PARITY_ATOL


def test_batch_axis_is_dynamic(
    exported: export_mod.ExportResult, tiny_model: torch.nn.Module, val_inputs: torch.Tensor
) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    assert inp.type == "tensor(float)"
    for batch in (1, 3):
        x = val_inputs[:batch]
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
    assert prov["opset"] == 17 and prov["torch_version"] == torch.__version__
    assert prov["onnx_version"] == onnx.__version__ and "exported_at" in prov
    assert prov["parity_atol"] == export_mod.PARITY_ATOL


def test_impossible_tolerance_fails_and_writes_nothing(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(export_mod.ParityError):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, atol=-1.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []


def test_perturbed_onnx_output_fails(
    tiny_model: torch.nn.Module,
    val_inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda s, x: real(s, x) + 1e-2)
    with pytest.raises(export_mod.ParityError, match=r"max \|diff\| 0\.01"):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs)
    assert not (tmp_path / "model.onnx").exists()


def test_top1_disagreement_fails_even_within_tolerance(
    tiny_model: torch.nn.Module,
    val_inputs: torch.Tensor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = export_mod.run_onnx

    def swap_top_two(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        out = real(session, x)
        rows = np.arange(len(out))
        order = np.argsort(-out, axis=1)
        first, second = order[:, 0], order[:, 1]
        out[rows, first], out[rows, second] = out[rows, second], out[rows, first]
        return out

    monkeypatch.setattr(export_mod, "run_onnx", swap_top_two)
    with pytest.raises(export_mod.ParityError, match=r"top-1 mismatches [1-9]"):
        export_mod.export_model(tiny_model, METADATA, tmp_path, val_inputs, atol=1e3)


def test_label_count_must_match_outputs(
    tiny_model: torch.nn.Module, val_inputs: torch.Tensor, tmp_path: Path
) -> None:
    import dataclasses

    wrong = dataclasses.replace(METADATA, labels=["a", "b"])
    with pytest.raises(export_mod.ExportError, match="10 outputs but 2 labels"):
        export_mod.export_model(tiny_model, wrong, tmp_path, val_inputs)


def test_next_version(tmp_path: Path) -> None:
    assert export_mod.next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "notes"):
        (tmp_path / name).mkdir()
    assert export_mod.next_version(tmp_path) == 4
