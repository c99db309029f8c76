"""Image-folder trees and stratified splits, without torch.

A tree is ``ROOT/<class name>/<image file>``; class names are the sorted subfolder names, as
torchvision's ``ImageFolder`` orders them. Serving-side tools (evaluation, tests) use this module
too, so it imports only numpy and scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a stratified split; each sorted ascending, disjoint, exhaustive."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    from sklearn.model_selection import train_test_split  # slow to import: only when needed

    labels = np.asarray(labels)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(val_idx)


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` items (all if fewer), each class drawn in proportion to its share
    (every class at least once when `count` allows), reproducibly from `seed`; sorted."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picks: list[np.ndarray] = []
    shares = {c: np.flatnonzero(labels == c) for c in classes}
    quota = {c: max(1, round(count * len(i) / len(labels))) for c, i in shares.items()}
    for c, idx in shares.items():
        picks.append(rng.choice(idx, size=min(quota[c], len(idx)), replace=False))
    chosen = np.concatenate(picks)
    if len(chosen) > count:
        chosen = rng.choice(chosen, size=count, replace=False)
    elif len(chosen) < count:  # rounding left a few out: fill from the rest
        rest = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=count - len(chosen), replace=False)])
    return np.sort(chosen)


def find_classes(root: Path) -> list[str]:
    """The class names of a tree: its subfolder names, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class subfolders")
    return classes


def list_images(root: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image file under ``root/<class>/`` (recursively, sorted) and its class index.

    A class of `class_names` without a folder contributes nothing; a folder whose name is not
    in `class_names` is an error, since its images would have no label.
    """
    root = Path(root)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [c for c in find_classes(root) if c not in index]
    if unknown:
        raise ValueError(f"{root} has classes the label set lacks: {', '.join(unknown)}")
    paths: list[Path] = []
    labels: list[int] = []
    for name in class_names:
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(path)
                labels.append(index[name])
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return paths, np.asarray(labels, dtype=np.int64)


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """How many samples each class has, in class order."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def check_image(path: Path) -> str | None:
    """None when `path` looks like a readable image (header and structure, without decoding
    the pixels), else the reason it does not. A truncated JPEG can pass; the loaders skip
    what still fails to decode later."""
    from PIL import Image, UnidentifiedImageError

    try:
        if Path(path).stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.verify()
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def find_corrupt(paths: list[Path]) -> dict[int, str]:
    """{index in `paths`: reason} of every file that fails `check_image`."""
    return {i: reason for i, p in enumerate(paths) if (reason := check_image(p)) is not None}


def format_corrupt(paths: list[Path], corrupt: dict[int, str], limit: int = 10) -> str:
    """A short report of skipped files, for the log."""
    lines = [f"skipping {len(corrupt)} unreadable image file(s):"]
    for i in sorted(corrupt)[:limit]:
        lines.append(f"  {paths[i]}: {corrupt[i]}")
    if len(corrupt) > limit:
        lines.append(f"  ... and {len(corrupt) - limit} more")
    return "\n".join(lines)
