"""Image-folder trees of real images for the training tests (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.training.data.builtin import load_builtin_split

PHOTOS = ("chelsea", "coffee", "rocket")


def write_digits_tree(
    root: Path, digits: tuple[int, ...], per_class: int | None, split: str, seed: int = 0
) -> Path:
    """root/<digit>/<index>.png for `digits` of the built-in digits' `split` (train or val);
    `per_class` images per digit drawn with `seed` (all when None)."""
    images, labels, _ = load_builtin_split("digits", split)
    rng = np.random.default_rng(seed)
    for digit in digits:
        idx = np.flatnonzero(labels == digit)
        if per_class is not None:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            images[i].save(root / str(digit) / f"{i:04d}.png")
    return root


def photo(name: str) -> Image.Image:
    """A real photo that ships with scikit-image."""
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def write_photo_crops_tree(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/{train,val}/<photo>/*.jpg: random crops (a third to two thirds of the shorter
    side) of three real photos; `per_class` crops for train and 3 for val, as JPEG."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        img = photo(name)
        for split, count in (("train", per_class), ("val", 3)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                side = int(min(img.size) * rng.uniform(0.33, 0.67))
                left = int(rng.integers(0, img.width - side + 1))
                top = int(rng.integers(0, img.height - side + 1))
                crop = img.crop((left, top, left + side, top + side))
                crop.save(folder / f"{k:02d}.jpg", quality=90)
    return root


def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread for a test module: on a shared 2-core machine, two OpenMP
    threads competing with other processes were measured 19x slower than one."""
    try:
        import torch
    except ImportError:  # the torch-free tests
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
