"""imgclf.training.data.digits: the built-in dataset and its one held-out split (torch-free)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from imgclf.training.data.digits import digits_split, load_digits_images


def test_images_are_8x8_rgb_uint8_scaled_from_0_16() -> None:
    images, labels, class_names = load_digits_images()
    assert len(images) == len(labels) == 1797
    assert class_names == [str(d) for d in range(10)]
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    first = np.asarray(images[0])
    assert images[0].mode == "RGB" and first.shape == (8, 8, 3) and first.dtype == np.uint8
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 0] == first[..., 2]).all()
    from sklearn.datasets import load_digits

    raw = load_digits().images[0]
    assert (first[..., 0] == np.floor(raw * 255 / 16 + 0.5)).all()
    values = {int(v) for img in images[:50] for v in np.unique(np.asarray(img))}
    assert values <= {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)}
    assert 0 in values and 255 in values


def test_split_is_deterministic_disjoint_exhaustive_and_stratified() -> None:
    _, labels, _ = load_digits_images()
    train_a, val_a = digits_split(labels)
    train_b, val_b = digits_split(labels)
    assert np.array_equal(train_a, train_b) and np.array_equal(val_a, val_b)
    assert (len(train_a), len(val_a)) == (1437, 360)
    assert not set(train_a.tolist()) & set(val_a.tolist())
    assert sorted([*train_a.tolist(), *val_a.tolist()]) == list(range(len(labels)))
    assert (np.diff(val_a) > 0).all()
    for digit in range(10):
        in_val = int((labels[val_a] == digit).sum())
        total = int((labels == digit).sum())
        assert abs(in_val - 0.2 * total) <= 1
    _, other_val = digits_split(labels, seed=1)
    assert not np.array_equal(other_val, val_a)


def test_datasets_and_evaluation_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import imgclf.training.data.digits, imgclf.training.data.folders\n"
        "import imgclf.training.data.builtin, imgclf.training.evaluate\n"
        "print(','.join(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_lfw_faces_is_built_in_with_its_own_split() -> None:
    from imgclf.training.data.builtin import BUILTIN_DATASETS, load_builtin_split

    assert set(BUILTIN_DATASETS) == {"digits", "lfw_faces"}
    images, labels, names = load_builtin_split("lfw_faces", "all")
    assert names == ["face", "not_face"] and len(images) == 200
    assert images[0].mode == "RGB" and images[0].size == (25, 25)
    assert np.bincount(labels).tolist() == [100, 100]
    _, val_labels, _ = load_builtin_split("lfw_faces", "val")
    train, _, _ = load_builtin_split("lfw_faces", "train")
    assert np.bincount(val_labels).tolist() == [20, 20] and len(train) == 160
    digits_val = load_builtin_split("digits", "val")[1]
    assert np.array_equal(digits_val, labels_of_digits_val())


def labels_of_digits_val() -> np.ndarray:
    _, labels, _ = load_digits_images()
    return labels[digits_split(labels)[1]]
