"""Train and eval transforms: PIL image -> float32 CHW tensor.

The eval preset IS ``imgclf.imaging.preprocess_image``: what the server computes for an image is
exactly what the model was validated on. The train presets add augmentation in front of the
same normalisation (``imgclf.imaging.normalize``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from imgclf.imaging import (
    Preprocessing,
    normalize,
    preprocess_image,
    resize_and_crop,
    to_rgb,
)

Augmentation = Literal["digits", "imagenet", "flip", "none"]
AUGMENTATIONS: tuple[str, ...] = ("digits", "imagenet", "flip", "none")


class EvalPreset:
    """The serving preprocessing (resize, center crop, normalise) as a torch tensor."""

    def __init__(self, spec: Preprocessing) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess_image(img, self.spec))


class TrainPreset:
    """Augmentation on PIL images, then the eval normalisation.

    - ``digits``: the eval resize/crop, then a small random affine (rotation, shift, scale,
      shear) with a black fill; no flips, a mirrored digit is not the same digit.
    - ``imagenet``: RandomResizedCrop to the input size and a horizontal flip.
    - ``flip``: the eval resize/crop, then a horizontal flip (small images such as faces).
    - ``none``: the eval preset.
    """

    def __init__(self, spec: Preprocessing, augmentation: Augmentation = "imagenet") -> None:
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
        self.spec = spec
        self.augmentation = augmentation
        interpolation = T.InterpolationMode(spec.interpolation)
        if augmentation == "digits":
            self.augment: T.Transform | None = T.RandomAffine(
                degrees=10,
                translate=(0.1, 0.1),
                scale=(0.9, 1.1),
                shear=5,
                interpolation=T.InterpolationMode.BILINEAR,
                fill=0,
            )
        elif augmentation == "imagenet":
            self.augment = T.Compose(
                [
                    T.RandomResizedCrop(spec.input_size, interpolation=interpolation),
                    T.RandomHorizontalFlip(),
                ]
            )
        elif augmentation == "flip":
            self.augment = T.RandomHorizontalFlip()
        else:
            self.augment = None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.augment is None:
            return torch.from_numpy(preprocess_image(img, self.spec))
        img = to_rgb(img)
        if self.augmentation in ("digits", "flip"):
            img = resize_and_crop(img, self.spec)
        img = self.augment(img)
        return torch.from_numpy(normalize(np.asarray(img, dtype=np.uint8), self.spec))


def default_augmentation(dataset: str) -> Augmentation:
    """A built-in dataset's own augmentation; photo folders get the ImageNet one."""
    from imgclf.training.data.builtin import BUILTIN_DATASETS

    spec = BUILTIN_DATASETS.get(dataset)
    return spec.augmentation if spec else "imagenet"  # type: ignore[return-value]
