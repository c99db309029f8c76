"""A request's images (`ImageInput`) and the checks they pass against the limits and the
model before any work is spent on them (imgclf.dataplane)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.errors import InvalidInput
from imgclf.models.loader import ServedModel


@dataclass(frozen=True)
class ImageInput:
    """One image of a request, in one of three forms."""

    encoded: bytes | None = None
    """Encoded bytes (JPEG, PNG, ...): decoded and preprocessed by the model's eval preset."""
    tensor: np.ndarray | None = None
    """float32 CHW, already preprocessed to the model input."""
    pixels: np.ndarray | None = None
    """uint8 pixels at the model's input size, in its input layout: CHW, normalised by the
    server (mean/std), or HWC for a model that takes pixels (normalised in its graph)."""


def check_count(count: int, limit: int) -> None:
    """Refuse a request of no image, or of more than `limit`."""
    if not count:
        raise InvalidInput("request carries no image", reason="no_image")
    if count > limit:
        raise InvalidInput(
            f"request carries {count} images, more than the limit of {limit}",
            reason="too_many_images",
        )


def check_images(model: ServedModel, images: Sequence[ImageInput], limit: int) -> None:
    """Refuse images that do not fit the model: tensors of the wrong shape or kind, non-finite
    values, images with no data."""
    check_count(len(images), limit)
    for i, image in enumerate(images):
        array = image.tensor if image.tensor is not None else image.pixels
        if array is not None:
            if image.tensor is not None and model.metadata.pixel_input:
                h, w = model.metadata.input_size
                raise InvalidInput(
                    f"image {i}: this model takes uint8 pixels ({h}x{w}x3, NHWC, "
                    "normalised in the model); send encoded images or UINT8 pixels",
                    reason="bad_dtype",
                )
            try:
                model.engine.check_sample_shape(tuple(array.shape))
            except InvalidInput as exc:
                raise InvalidInput(f"image {i}: {exc}", reason="bad_shape") from None
            if image.tensor is not None and not np.isfinite(image.tensor).all():
                raise InvalidInput(
                    f"image {i}: tensor holds NaN or infinite values", reason="non_finite"
                )
        elif image.encoded is None:
            raise InvalidInput(f"image {i} has neither encoded bytes nor a tensor")
