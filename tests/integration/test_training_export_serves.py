"""Three torchvision families go through train -> export (dynamo) -> the real server with zero
configuration, and the server's answers are ONNX Runtime's and PyTorch's.

The models are small random-init variants at 64x64 trained for one epoch on crops of three real
photos, their BatchNorm statistics then recalibrated on those photos (one epoch barely moves
the running statistics, and MobileNet v3's momentum is 0.01: without this their eval-mode
outputs are degenerate, which would make a top-1 comparison meaningless).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("tritonclient.grpc")

from torch.optim.swa_utils import update_bn  # noqa: E402

from imgclf.client import Client  # noqa: E402
from imgclf.client.bench.launcher import start_server  # noqa: E402
from imgclf.imaging import decode_image, resize_and_crop  # noqa: E402
from imgclf.training import evaluate, export, train  # noqa: E402
from imgclf.training.data.datasets import load_image, load_split  # noqa: E402
from imgclf.training.data.presets import EvalPreset  # noqa: E402
from imgclf.training.export import checkpoint_metadata  # noqa: E402
from imgclf.training.models.architectures import create_model  # noqa: E402
from tests.unit.training.trees import (  # noqa: E402
    PHOTOS,
    one_torch_thread,
    photo,
    write_photo_crops_tree,
)

FAMILIES = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
PIXEL_FAMILY = FAMILIES[0]
"""Also exported with its normalisation in the graph (uint8 NHWC input)."""
one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def load_model(ckpt: dict) -> torch.nn.Module:
    model = create_model(ckpt["architecture"], len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def calibrate_bn(checkpoint: Path, tree: Path) -> None:
    """Recompute the BatchNorm running statistics over the training crops (eval preset)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    model = load_model(ckpt)
    preset = EvalPreset(checkpoint_metadata(ckpt, "", 0.0).preprocessing)
    split = load_split("folder", tree)
    batch = torch.stack([preset(load_image(s)) for s in split.train_samples])
    update_bn([(batch,)], model)
    ckpt["model"] = model.state_dict()
    torch.save(ckpt, checkpoint)


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_crops_tree(tmp_path_factory.mktemp("photos"), per_class=8)


@pytest.fixture(scope="module")
def exported(
    photo_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, export.ExportResult]]:
    root = tmp_path_factory.mktemp("families")
    repo = root / "models"
    results = {}
    for family in FAMILIES:
        run = root / family
        argv = ["--data-path", str(photo_tree), "--model", family, "--input-size", "64"]
        argv += ["--epochs", "1", "-b", "8", "--lr", "0.01", "-j", "0", "--no-progress"]
        assert train.main([*argv, "--output-dir", str(run)]) == 0
        calibrate_bn(run / "checkpoint.pth", photo_tree)
        argv = [str(run / "checkpoint.pth"), "--name", family, "--model-repository", str(repo)]
        if family == PIXEL_FAMILY:
            argv.append("--bake-preprocessing")
        args = export.get_args_parser().parse_args(argv)
        results[family], *pixels = export.export_checkpoint(args)
        if pixels:
            results[f"{family}_uint8"] = pixels[0]
    return repo, results


def test_each_family_exports_with_dynamo_and_passes_parity(
    exported: tuple[Path, dict[str, export.ExportResult]],
) -> None:
    _, results = exported
    for family, result in results.items():
        assert result.path.parent.name == "1" and result.path.parent.parent.name == family
        assert result.exporter == "dynamo", family
        assert result.parity.ok and result.parity.batch_sizes == (1, 7, 32), family
        prov = result.metadata.provenance
        assert prov["opset"] == 18 and prov["exporter"] == "torch.onnx dynamo"
        architecture = family.removesuffix("_uint8")
        assert prov["architecture"] == architecture
        assert prov["input_dtype"] == ("uint8" if family.endswith("_uint8") else "float32")
        print(f"{family}: {result.parity}")


def test_server_answers_what_onnx_runtime_and_pytorch_answer(
    exported: tuple[Path, dict[str, export.ExportResult]], photo_tree: Path, tmp_path: Path
) -> None:
    repo, results = exported
    # The whole photos (the crops came from three of them) and the held-out crops, sent as PNG:
    # lossless, so the server decodes the very pixels used here (the server's default JPEG
    # draft decoding of large JPEGs is "same class, not bit-identical").
    images = [photo(name) for name in (*PHOTOS, "astronaut")]
    images += [decode_image(p.read_bytes()) for p in sorted((photo_tree / "val").rglob("*.jpg"))]
    payloads = []
    for img in images:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        payloads.append(buffer.getvalue())

    server = start_server(repo, tmp_path)  # zero configuration: the metadata is all it needs
    pixel_probs: dict[str, np.ndarray] = {}
    try:
        with Client(server.target) as client:
            served = {m.name: m for m in client.list_models().models}
            assert set(served) == {*FAMILIES, f"{PIXEL_FAMILY}_uint8"}
            for family, result in results.items():
                assert list(served[family].labels) == list(PHOTOS)
                pixels = family.endswith("_uint8")  # uint8 NHWC, normalised in the graph
                assert list(served[family].input_shape) == ([64, 64, 3] if pixels else [3, 64, 64])
                reply = client.classify(payloads, model=family, top_k=3)
                server_probs = np.asarray([list(r.probabilities) for r in reply.results])
                onnx_probs = evaluate.OnnxClassifier(result.path).probabilities(images)
                ckpt = torch.load(result.metadata.provenance["checkpoint"], weights_only=True)
                preset = EvalPreset(result.metadata.preprocessing)
                with torch.no_grad():
                    logits = load_model(ckpt)(torch.stack([preset(img) for img in images]))
                torch_top1 = logits.argmax(1).tolist()
                assert server_probs.argmax(1).tolist() == onnx_probs.argmax(1).tolist(), family
                assert onnx_probs.argmax(1).tolist() == torch_top1, family
                np.testing.assert_allclose(server_probs, onnx_probs, atol=1e-5)
                if pixels:
                    pixel_probs[family] = server_probs
                assert [r.top[0].label for r in reply.results] == [PHOTOS[i] for i in torch_top1]

        # The pixel model through the Open Inference Protocol, as a Triton client would call it:
        # its metadata says UINT8 [-1, 64, 64, 3]; the resized, cropped pixels go as they are.
        name = f"{PIXEL_FAMILY}_uint8"
        with triton.InferenceServerClient(server.target) as oip:
            (inp,) = oip.get_model_metadata(name).inputs
            assert (inp.datatype, list(inp.shape)) == ("UINT8", [-1, 64, 64, 3])
            spec = results[name].metadata.preprocessing
            batch = np.stack([np.asarray(resize_and_crop(img, spec)) for img in images])
            # a Triton client sends at most the batch size ModelConfig advertises
            most = oip.get_model_config(name).config.max_batch_size
            answers = []
            for start in range(0, len(batch), most):
                part = batch[start : start + most]
                tensor = triton.InferInput(inp.name, list(part.shape), "UINT8")
                tensor.set_data_from_numpy(part)
                out = oip.infer(
                    name, [tensor], outputs=[triton.InferRequestedOutput("probabilities")]
                )
                answers.append(out.as_numpy("probabilities"))
            np.testing.assert_allclose(np.concatenate(answers), pixel_probs[name], atol=1e-5)

        # imgclf evaluate --server gives the same report as through ONNX Runtime.
        family = FAMILIES[0]
        via_server, via_ort = tmp_path / "server", tmp_path / "ort"
        common = ["--data-path", str(photo_tree), "--no-plot"]
        argv = [family, "--server", server.target, *common, "--output-dir", str(via_server)]
        assert evaluate.main(argv) == 0
        assert evaluate.main([str(repo / family), *common, "--output-dir", str(via_ort)]) == 0
        a = json.loads((via_server / "metrics.json").read_text())
        b = json.loads((via_ort / "metrics.json").read_text())
        assert a["num_images"] == b["num_images"] == 9 and a["accuracy"] == b["accuracy"]
        assert a["per_class"] == b["per_class"]
    finally:
        assert server.stop() == 0
