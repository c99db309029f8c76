"""imgclf.training.data.photos: the calibration and evaluation photo sets are real, RGB and
disjoint."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from imgclf.training.data.photos import (
    CALIBRATION_PHOTOS,
    CROPS,
    EVALUATION_PHOTOS,
    photo,
    photo_set,
)


def digests(names: tuple[str, ...]) -> set[str]:
    return {hashlib.sha256(img.tobytes()).hexdigest() for n in names for img in photo(n)}


def test_the_sets_share_no_photo():
    assert not set(CALIBRATION_PHOTOS) & set(EVALUATION_PHOTOS)
    assert not digests(CALIBRATION_PHOTOS) & digests(EVALUATION_PHOTOS)


def test_every_photo_gives_its_crops_and_mirrors_in_rgb():
    images = photo_set(("coffee", "horse"))  # a colour photo and a binary one
    assert len(images) == 2 * 2 * len(CROPS)
    assert {img.mode for img in images} == {"RGB"}
    assert len(photo("stereo_motorcycle")) == 2  # both views of the stereo pair, one set
