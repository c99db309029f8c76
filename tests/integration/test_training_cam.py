"""Class activation maps of a second architecture: torchvision's ShuffleNet V2 (x0.5) trained
from scratch by `imgclf train` on crops of two real photos (scikit-image's cat, chelsea, and
cup of coffee), exported by `imgclf export` (dynamo; and the legacy exporter with a softmax
baked in: another graph of the same head), its maps computed from the ONNX graph alone
(imgclf.models.cam).

At 224x224 its last feature map is 7x7, as EfficientNet-Lite0's. Five epochs of AdamW on 64
crops per class (batches of 8) reach 12/12 on the held-out crops. ShuffleNet rather than
ResNet-18: at about the same training time ResNet-18 (at 128x128, a 4x4 map) gave maps that
depended on the training seed (with seeds 1 and 3 of 0 to 3 one class had no positive map on
the composite); ShuffleNet's kept 0.80 or more on its own half with each seed tried (0, 1, 2).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from imgclf.imaging import Preprocessing, preprocess_image  # noqa: E402
from imgclf.modelmeta import ModelMetadata  # noqa: E402
from imgclf.models import cam  # noqa: E402
from imgclf.training import export, train  # noqa: E402
from imgclf.training.models.architectures import create_model  # noqa: E402
from tests.unit.service.models.test_cam import composite, share_on_left  # noqa: E402
from tests.unit.training.trees import one_torch_thread, photo  # noqa: E402

pytestmark = pytest.mark.slow

PHOTOS = ("chelsea", "coffee")
MODEL = "shufflenet_v2_x0_5"
SIZE = 224
OWN_HALF = 0.7
"""Share of a class's map mass on its own photo's half of the composite that the test asks
for (0.5: a map that ignores where the photo is; seen with training seeds 0 to 2: 0.80 to 1)."""
one_thread = contextlib.contextmanager(one_torch_thread)


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    model: Path
    """Dynamo export, logits out."""
    legacy: Path
    """Legacy (TorchScript) export of the same checkpoint, probabilities out."""


def write_crops_tree(root: Path, per_class: int, val: int, seed: int = 0) -> Path:
    """root/{train,val}/<photo>/*.jpg: random square crops of 40 % to all of each photo's
    shorter side (so that whole photos are in the training distribution too)."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        img = photo(name)
        for split, count in (("train", per_class), ("val", val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                side = int(min(img.size) * rng.uniform(0.4, 1.0))
                left = int(rng.integers(0, img.width - side + 1))
                top = int(rng.integers(0, img.height - side + 1))
                img.crop((left, top, left + side, top + side)).save(folder / f"{k:02d}.jpg")
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("cam_" + MODEL)
    tree = write_crops_tree(root / "photos", per_class=64, val=6)
    argv = ["--data-path", str(tree), "--model", MODEL, "--input-size", str(SIZE)]
    argv += ["--epochs", "5", "-b", "8", "--opt", "adamw", "--lr", "0.003", "-j", "0"]
    with one_thread():
        assert train.main([*argv, "--no-progress", "--output-dir", str(root / "run")]) == 0
        checkpoint = root / "run" / "best.pth"
        repo = ["--model-repository", str(root / "models"), "--batch-sizes", "1", "2"]
        assert export.main([str(checkpoint), "--name", "photos", *repo]) == 0
        legacy = ["--legacy-exporter", "--softmax", "--num-samples", "2"]
        assert export.main([str(checkpoint), "--name", "photos", *repo, *legacy]) == 0
    versions = root / "models" / "photos"
    return Exported(checkpoint, versions / "1" / "model.onnx", versions / "2" / "model.onnx")


class Explainer:
    """An exported model's explaining session, run on one PIL image."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        self.head = cam.find_head(data)
        self.session = cam.explaining_session(data, self.head)
        props = self.session.get_modelmeta().custom_metadata_map
        self.props = dict(props)
        self.meta = ModelMetadata.from_props(props)
        self.spec: Preprocessing = self.meta.preprocessing

    def run(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(scores [1, classes], features [1, C, h, w])."""
        output = self.session.get_outputs()[0].name
        x = preprocess_image(image, self.spec)[None]
        scores, features = self.session.run(
            [output, self.head.feature], {self.session.get_inputs()[0].name: x}
        )
        return scores, features


def test_the_export_records_the_head_it_found(exported: Exported) -> None:
    """Both exporters' graphs (dynamo: ReduceMean with axes as an input, Gemm; legacy:
    ReduceMean with axes as an attribute, Gemm, Softmax) are read as the same head, and the
    export says so in the metadata."""
    dynamo, legacy = Explainer(exported.model), Explainer(exported.legacy)
    assert dynamo.head.weight.shape == (2, 1024)
    np.testing.assert_array_equal(dynamo.head.weight, legacy.head.weight)
    np.testing.assert_array_equal(dynamo.head.bias, legacy.head.bias)
    for model in (dynamo, legacy):
        recorded = json.loads(model.props["class_activation_maps"])
        assert recorded == f"from {model.head.feature} (1024 features, 2 classes)"
    assert json.loads(legacy.props["output"]) == "probabilities"


@pytest.mark.parametrize("order", [PHOTOS, PHOTOS[::-1]], ids="|".join)
def test_each_class_map_points_at_its_own_half(exported: Exported, order: tuple[str, ...]) -> None:
    model = Explainer(exported.model)
    side = 2 * SIZE
    halves = [photo(name) for name in order]
    classes = [int(np.argmax(model.run(h.resize((side // 2, side)))[0][0])) for h in halves]
    assert [model.meta.labels[c] for c in classes] == list(order)
    _, features = model.run(composite(halves, side))
    assert features.shape[2:] == (7, 7)
    maps = cam.class_maps(features, model.head.weight, np.array([classes]))[0]
    on_left = share_on_left(maps, side, model.spec)
    print(f"{'|'.join(order)}: share of each map on the left half: {on_left}")
    assert on_left[0] > OWN_HALF and 1.0 - on_left[1] > OWN_HALF, on_left


def test_the_map_is_grad_cam_of_the_trained_checkpoint(exported: Exported) -> None:
    """Grad-CAM on the checkpoint's torch model (conv5's output, the last feature maps,
    weighed by the spatial mean of the class logit's gradient, ReLU, normalised) equals the
    ONNX map within 1e-4."""
    model = Explainer(exported.model)
    image = composite([photo(name) for name in PHOTOS], 2 * SIZE)
    _, features = model.run(image)
    ours = cam.class_maps(features, model.head.weight, np.array([[0, 1]]))[0]

    ckpt = torch.load(exported.checkpoint, weights_only=True)
    net = create_model(ckpt["architecture"], len(ckpt["class_names"])).eval()
    net.load_state_dict(ckpt["model"])
    held: dict[str, torch.Tensor] = {}
    hook = net.conv5.register_forward_hook(lambda _m, _i, out: held.__setitem__("f", out))
    try:
        logits = net(torch.from_numpy(preprocess_image(image, model.spec)[None]))
    finally:
        hook.remove()
    feature = held["f"]
    np.testing.assert_allclose(feature.detach().numpy(), features, rtol=1e-3, atol=1e-3)
    for k in (0, 1):
        (grad,) = torch.autograd.grad(logits[0, k], feature, retain_graph=True)
        alpha = grad[0].mean(dim=(1, 2), keepdim=True)
        grad_cam = torch.relu((alpha * feature[0]).sum(dim=0)).detach().numpy()
        grad_cam /= grad_cam.max()
        difference = np.abs(grad_cam - ours[k]).max()
        print(f"class {k}: largest |Grad-CAM - CAM| {difference:.2e}")
        assert difference < 1e-4


def test_a_plain_session_of_the_export_gives_the_same_scores(exported: Exported) -> None:
    """The extra output changes nothing the model answers."""
    model = Explainer(exported.model)
    plain = ort.InferenceSession(str(exported.model), providers=["CPUExecutionProvider"])
    image = composite([photo(name) for name in PHOTOS], 2 * SIZE)
    x = preprocess_image(image, model.spec)[None]
    (scores,) = plain.run(None, {plain.get_inputs()[0].name: x})
    np.testing.assert_array_equal(scores, model.run(image)[0])
