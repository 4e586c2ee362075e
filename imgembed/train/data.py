"""Labelled image folders (one sub-folder per class), splits and P x K batch sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..imaging.files import iter_images


@dataclass(frozen=True)
class LabelledSet:
    """``paths[i]`` has class ``classes[labels[i]]``."""

    root: Path
    paths: list[Path]
    labels: np.ndarray  # (n,) int64
    classes: list[str]

    def subset(self, idx) -> "LabelledSet":
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledSet(self.root, [self.paths[i] for i in idx], self.labels[idx], self.classes)

    def class_names(self) -> list[str]:
        return [self.classes[i] for i in self.labels]


def scan_labelled(folder: str | Path, min_per_class: int = 2) -> tuple[LabelledSet, dict[str, int]]:
    """Images under ``folder`` labelled by their parent folder (relative to ``folder``).

    Returns the set and ``{class: count}`` of classes left out for having fewer than
    ``min_per_class`` images (images at the root, which have no class, count under ``""``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"not a folder: {folder}")
    root = root.resolve()
    by_class: dict[str, list[Path]] = {}
    for path in iter_images(root):
        label = path.relative_to(root).parent.as_posix()
        by_class.setdefault("" if label == "." else label, []).append(path)
    dropped = {c: len(p) for c, p in by_class.items() if c == "" or len(p) < min_per_class}
    classes = sorted(c for c in by_class if c not in dropped)
    if len(classes) < 2:
        raise InputError(f"{folder}: need at least 2 classes (sub-folders) with {min_per_class}+ images each, "
                         f"found {len(classes)}")
    paths = [p for c in classes for p in by_class[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in by_class[c]], dtype=np.int64)
    return LabelledSet(root, paths, labels, classes), dropped


def scan_unlabelled(folder: str | Path) -> LabelledSet:
    """Every image under ``folder``, each its own class (for self-supervised fitting)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"not a folder: {folder}")
    root = root.resolve()
    paths = sorted(iter_images(root))
    if len(paths) < 2:
        raise InputError(f"{folder}: need at least 2 images, found {len(paths)}")
    return LabelledSet(root, paths, np.arange(len(paths), dtype=np.int64),
                       [p.relative_to(root).as_posix() for p in paths])


def split(data: LabelledSet, fraction: float, by: str = "images", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``. ``by="images"``: a stratified ``fraction`` of each class (at least
    one image, and never a class's last two) goes to validation. ``by="classes"``: a ``fraction``
    of whole classes does (open-set evaluation)."""
    rng = np.random.default_rng(seed)
    n_classes = len(data.classes)
    if fraction <= 0:
        return np.arange(len(data.paths)), np.zeros(0, np.int64)
    if by == "classes":
        n_val = min(max(2, round(fraction * n_classes)), n_classes - 2)
        if n_val < 2:
            raise InputError(f"--split classes needs at least 4 classes, found {n_classes}")
        val_classes = rng.permutation(n_classes)[:n_val]
        is_val = np.isin(data.labels, val_classes)
    elif by == "images":
        is_val = np.zeros(len(data.labels), bool)
        for c in range(n_classes):
            members = rng.permutation(np.flatnonzero(data.labels == c))
            if len(members) < 4:
                continue  # too few to spare any: all of it trains
            n_val = min(max(1, round(fraction * len(members))), len(members) - 2)
            is_val[members[:n_val]] = True
    else:
        raise ValueError(f"split must be 'images' or 'classes', not {by!r}")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of batches of ``p`` distinct classes x ``k`` images, so every batch has positives
    and negatives: as many batches as it takes to show about every image once. A class with
    fewer than ``k`` images repeats some (drawn with replacement)."""
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    p = min(p, len(classes))
    for _ in range(max(1, int(np.ceil(len(labels) / (p * k))))):
        chosen = rng.choice(classes, p, replace=False)
        yield np.concatenate([rng.choice(members[c], k, replace=len(members[c]) < k) for c in chosen])
