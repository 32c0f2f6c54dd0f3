"""Checks between inputs: a label map on its image's grid. Raises a one-line ``MedgenError``."""

from __future__ import annotations

import numpy as np

from medgen.errors import MedgenError
from medgen.io import ImageRef


def check_same_grid(image: ImageRef, label: ImageRef, atol_mm: float = 1e-3) -> None:
    """Raise unless ``label`` lies on the voxel grid of ``image`` (shape and affine within ``atol_mm``).

    >>> from medgen.io import ref_from_affine
    >>> ct, seg = ref_from_affine(np.eye(4), (64, 64, 30), "ct.nii.gz"), ref_from_affine(np.eye(4), (64, 64, 29), "seg.nii.gz")
    >>> check_same_grid(ct, seg)
    Traceback (most recent call last):
    medgen.errors.MedgenError: seg.nii.gz: grid differs from ct.nii.gz: shape (64, 64, 29) vs (64, 64, 30)
    """
    if image.shape != label.shape:
        raise MedgenError(label.path, f"grid differs from {image.path}: shape {label.shape} vs {image.shape}")
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > atol_mm:
        raise MedgenError(label.path, f"grid differs from {image.path}: affines differ by up to {diff:.4g} mm")

