"""Real photos that ship inside pip packages (scikit-image, scikit-learn; no download), in two
disjoint sets with crops and flips: one to calibrate an ImageNet model's INT8 variant, the
other to compare it with the float model. They carry no ImageNet labels: what they measure is
agreement with the float model, not an ImageNet accuracy.
"""

from __future__ import annotations

from PIL import Image, ImageOps

CALIBRATION_PHOTOS = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "china", "brick",
    "grass", "camera", "moon", "horse",
)  # fmt: skip
EVALUATION_PHOTOS = (
    "chelsea", "coffee", "flower", "stereo_motorcycle", "retina", "coins", "clock", "gravel",
)  # fmt: skip
"""No photo is in both sets (the two stereo motorcycle views, near duplicates, are both here)."""
CROPS = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.7, 0.7), (0.3, 0.0, 1.0, 0.7),
         (0.0, 0.3, 0.7, 1.0), (0.3, 0.3, 1.0, 1.0), (0.2, 0.2, 0.8, 0.8))  # fmt: skip
"""(left, top, right, bottom) fractions of the photo."""


def photo(name: str) -> list[Image.Image]:
    """The photo(s) of that name as RGB PIL images (a stereo pair gives two)."""
    import numpy as np

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arrays = [load_sample_image(f"{name}.jpg")]
    else:
        from skimage import data

        loaded = getattr(data, name)()
        arrays = list(loaded[:2]) if isinstance(loaded, tuple) else [loaded]
    images = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        images.append(Image.fromarray(a).convert("RGB"))
    return images


def variants(img: Image.Image) -> list[Image.Image]:
    """Each crop of CROPS, and its mirror image."""
    w, h = img.size
    out = []
    for left, top, right, bottom in CROPS:
        crop = img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
        out += [crop, ImageOps.mirror(crop)]
    return out


def photo_set(names: tuple[str, ...]) -> list[Image.Image]:
    """Every variant of every photo in `names`."""
    return [v for name in names for img in photo(name) for v in variants(img)]
