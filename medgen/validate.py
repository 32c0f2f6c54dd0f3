"""Checks between inputs: a label map on its image's grid. Raises a one-line ``MedgenError``."""

from __future__ import annotations

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

