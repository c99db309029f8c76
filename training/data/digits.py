"""The built-in dataset: scikit-learn's handwritten digits as RGB images, and its one split.

Torch-free on purpose (numpy, scikit-learn and Pillow only): the serving tests send the held-out
split to the server as PNG bytes, so this module is the single definition of that split.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgclf.training.data.folders import stratified_split

DIGITS_VAL_FRACTION = 0.2
DIGITS_SEED = 0


def load_digits_images() -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """All 1797 digits as 8x8 RGB images, their labels (int64) and the class names "0".."9".

    sklearn stores each pixel as an integer 0..16; it becomes round(v * 255 / 16) (half up),
    so 0 is black, 16 is white, and the grey level is replicated to R, G and B.
    """
    from sklearn.datasets import load_digits  # imported here: importing sklearn takes ~2 s

    bunch = load_digits()
    pixels = np.floor(bunch.images * (255.0 / 16.0) + 0.5).astype(np.uint8)
    images = [Image.fromarray(p).convert("RGB") for p in pixels]
    labels = np.asarray(bunch.target, dtype=np.int64)
    class_names = [str(int(n)) for n in bunch.target_names]
    return images, labels, class_names


def digits_split(
    labels: np.ndarray, val_fraction: float = DIGITS_VAL_FRACTION, seed: int = DIGITS_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The (train, val) indices of the digits: stratified, deterministic, sorted, disjoint."""
    return stratified_split(labels, val_fraction=val_fraction, seed=seed)
