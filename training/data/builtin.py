"""Built-in labelled datasets of real images that ship inside installed packages (no download).

- ``digits``: scikit-learn's 1797 handwritten digits (8x8), ten classes
  (see imgclf.training.data.digits).
- ``lfw_faces``: scikit-image's ``lfw_subset``, 100 faces from Labeled Faces in the Wild and 100
  non-face patches of natural photos (25x25 grey), two classes ``face`` and ``not_face``.

Torch-free (numpy, scikit-learn, scikit-image, Pillow): evaluation and the serving tests use
the same images and the same held-out split. ``sklearn.datasets.fetch_*`` and torchvision's
datasets download, so they are not offered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgclf.training.data.digits import DIGITS_SEED, DIGITS_VAL_FRACTION, load_digits_images
from imgclf.training.data.folders import stratified_split

Loaded = tuple[list[Image.Image], np.ndarray, list[str]]


def load_lfw_faces() -> Loaded:
    """The 200 ``lfw_subset`` images as RGB uint8: the first 100 are faces, the rest are not."""
    from skimage import data

    arrays = data.lfw_subset()  # (200, 25, 25) float64 in [0, 1]
    pixels = np.floor(arrays * 255.0 + 0.5).astype(np.uint8)
    images = [Image.fromarray(p).convert("RGB") for p in pixels]
    labels = np.asarray([0] * 100 + [1] * 100, dtype=np.int64)
    return images, labels, ["face", "not_face"]


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that ships with an installed package, and how to train on it by default."""

    load: Callable[[], Loaded]
    description: str
    input_size: int
    """Default model input side (the images are upscaled to it)."""
    augmentation: str
    val_fraction: float = DIGITS_VAL_FRACTION
    split_seed: int = DIGITS_SEED


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        load_digits_images,
        "scikit-learn handwritten digits, 1797 8x8 images, 10 classes",
        input_size=32,
        augmentation="digits",
    ),
    "lfw_faces": BuiltinDataset(
        load_lfw_faces,
        "scikit-image lfw_subset, 200 25x25 images, face / not_face",
        input_size=32,
        augmentation="flip",
    ),
}


def builtin_dataset(name: str) -> BuiltinDataset:
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown built-in dataset {name!r}; choose from {', '.join(BUILTIN_DATASETS)}"
        ) from None


def load_builtin_split(
    name: str, split: str = "val", val_fraction: float | None = None, seed: int | None = None
) -> Loaded:
    """The images, labels and class names of a built-in dataset: its ``train`` or ``val`` split
    (the one training uses), or ``all``."""
    spec = builtin_dataset(name)
    images, labels, class_names = spec.load()
    if split == "all":
        return images, labels, class_names
    fraction = spec.val_fraction if val_fraction is None else val_fraction
    train_idx, val_idx = stratified_split(
        labels, fraction, spec.split_seed if seed is None else seed
    )
    idx = val_idx if split == "val" else train_idx
    return [images[i] for i in idx], labels[idx], class_names
