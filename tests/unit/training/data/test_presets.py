"""imgclf.training.data.presets: the eval preset is imgclf.imaging; the train presets end the
same way."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from imgclf.imaging import Preprocessing, preprocess_image  # noqa: E402
from imgclf.training.data.digits import load_digits_images  # noqa: E402
from imgclf.training.data.presets import EvalPreset, TrainPreset  # noqa: E402

DIGITS = Preprocessing(input_size=(32, 32), resize_size=32)
PHOTO = Preprocessing(
    input_size=(24, 24), resize_size=28, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
)


def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8))


@pytest.mark.parametrize(("spec", "which"), [(DIGITS, "digit"), (PHOTO, "photo")])
def test_eval_preset_is_the_serving_preprocessing(spec: Preprocessing, which: str) -> None:
    img = load_digits_images()[0][3] if which == "digit" else photo()
    out = EvalPreset(spec)(img)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, *spec.input_size)
    assert np.array_equal(out.numpy(), preprocess_image(img, spec))


def test_train_preset_none_is_the_eval_preset() -> None:
    img = photo()
    assert torch.equal(TrainPreset(PHOTO, "none")(img), EvalPreset(PHOTO)(img))


@pytest.mark.parametrize(("spec", "augmentation"), [(DIGITS, "digits"), (PHOTO, "imagenet")])
def test_train_presets_augment_then_normalise_the_same_way(
    spec: Preprocessing, augmentation: str
) -> None:
    img = load_digits_images()[0][5] if augmentation == "digits" else photo()
    preset = TrainPreset(spec, augmentation)  # type: ignore[arg-type]
    torch.manual_seed(0)
    a = preset(img)
    torch.manual_seed(0)
    b = preset(img)
    assert torch.equal(a, b)
    assert a.shape == (3, *spec.input_size) and a.dtype == torch.float32
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    pixels = a * std + mean  # undo the normalisation: back to [0, 1] in 1/255 steps
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)
    torch.manual_seed(1)
    assert not torch.equal(preset(img), a)  # it does augment


def test_digits_augmentation_keeps_the_background_black() -> None:
    img = load_digits_images()[0][0]
    torch.manual_seed(0)
    out = TrainPreset(DIGITS, "digits")(img)
    black = (0 - torch.tensor(DIGITS.mean)) / torch.tensor(DIGITS.std)
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1]].T
    assert torch.allclose(corners, black.expand_as(corners), atol=1e-5)
