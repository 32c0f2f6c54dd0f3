"""Checks between inputs: same grid, declared label values. Each raises a one-line ``MedgenError``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medgen.errors import MedgenError
from medgen.io import ImageRef


def check_same_grid(image: ImageRef, label: ImageRef, atol_mm: float = 1e-3) -> None:
    """Raise unless ``label`` lies on the voxel grid of ``image`` (shape and affine within ``atol_mm``).

    >>> check_same_grid(ct_ref, seg_ref)  # doctest: +SKIP
    """
    if image.shape != label.shape:
        raise MedgenError(label.path, f"grid differs from {image.path}: shape {label.shape} vs {image.shape}")
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > atol_mm:
        raise MedgenError(label.path, f"grid differs from {image.path}: affines differ by up to {diff:.4g} mm")


def check_labels(array: np.ndarray, allowed: Iterable[int], path: str) -> None:
    """Raise if ``array`` holds values outside ``allowed`` (or non-integer values).

    >>> check_labels(np.array([0, 1, 5]), {0, 1, 2}, "labels/case_000.nii.gz")
    Traceback (most recent call last):
    medgen.errors.MedgenError: labels/case_000.nii.gz: label values [5] outside the declared set [0, 1, 2]
    """
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.equal(np.mod(values, 1), 0)):
        raise MedgenError(path, "label map has non-integer values")
    allowed_set = sorted(int(v) for v in allowed)
    extra = sorted(set(int(v) for v in values) - set(allowed_set))
    if extra:
        shown = extra[:10] + (["..."] if len(extra) > 10 else [])
        raise MedgenError(path, f"label values {shown} outside the declared set {allowed_set}".replace("'", ""))
