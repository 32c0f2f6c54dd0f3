"""`medgen info`: geometry, intensity statistics and a modality guess for one volume."""

from __future__ import annotations

import numpy as np

from medgen.io import ImageRef, load_image

PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)


def guess_modality(array: np.ndarray, ref: ImageRef | None = None) -> str:
    """A best guess of what a volume holds: ``CT``, ``MRI``, ``label map`` or ``unknown``, with the reason.

    The DICOM Modality tag wins when present; otherwise intensities decide (CT: a Hounsfield-like range
    with air near -1000; label map: few small non-negative integers; MRI: non-negative, not HU-like).

    >>> guess_modality(np.array([-1000, -1000, -100, 40, 60, 700]))
    'CT (HU-like: 33% of voxels at or below -900, max 700)'
    """
    if ref is not None and ref.modality:
        tag = {"MR": "MRI", "CT": "CT"}.get(ref.modality.upper(), ref.modality)
        return f"{tag} (DICOM Modality tag {ref.modality})"
    flat = np.asarray(array).ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = float(flat.min()), float(flat.max())
    integer = np.issubdtype(flat.dtype, np.integer) or bool(np.all(np.mod(flat, 1) == 0))
    if integer and lo >= 0 and hi <= 255:
        n = np.unique(flat).size
        if n <= 64:
            return f"label map ({n} distinct integer values, max {int(hi)})"
    air = float(np.mean(flat <= -900))
    if lo <= -900 and air > 0.01 and hi < 5000:
        return f"CT (HU-like: {air:.0%} of voxels at or below -900, max {hi:.0f})"
    if lo >= -100 * max(1.0, hi / 1000):
        return f"MRI (non-negative intensities up to {hi:.4g}, no air near -1000 HU)"
    return f"unknown (intensities {lo:.4g} to {hi:.4g})"


def _stored_shape_note(ref) -> str:
    stored = tuple(int(n) for n in ref.header.get_data_shape())
    if len(stored) > 3:
        return f" (stored {' x '.join(map(str, stored))}: singleton axes beyond the third dropped, accepted)"
    return ""


def describe(path: str) -> str:
    """A readable multi-line summary of a volume file or DICOM directory.

    >>> print(describe("example_mr_sm.nii.gz"))  # doctest: +SKIP
    file:        example_mr_sm.nii.gz (nifti)
    shape:       117 x 91 x 20
    ...
    """
    array, ref = load_image(path)
    pct = np.percentile(array, PERCENTILES)
    affine = "\n".join("             " + " ".join(f"{v:10.4f}" for v in row) for row in ref.affine)
    lines = [
        f"file:        {ref.path} ({ref.source_format})",
        f"shape:       {' x '.join(map(str, ref.shape))}" + _stored_shape_note(ref),
        f"spacing:     {' x '.join(f'{s:.4g}' for s in ref.spacing)} mm",
        f"orientation: {ref.orientation} (voxel axes point to these RAS+ world directions)",
        f"qform/sform: codes {ref.qform_code}/{ref.sform_code}; medgen uses the "
        + ("sform" if ref.sform_code > 0 else "qform" if ref.qform_code > 0 else
           "pixdim (warning: no qform or sform code: the orientation is a guess, as nibabel makes it)"),
        "affine (voxel -> RAS+ mm):",
        affine,
        f"dtype:       {array.dtype}" + (" (accepted: read as is, outputs are written as float32/int16/uint8)"
                                          if array.dtype in (np.int64, np.uint64) else ""),
        f"range:       {float(array.min()):.6g} .. {float(array.max()):.6g}",
        "percentiles: " + ", ".join(f"p{p:g}={v:.6g}" for p, v in zip(PERCENTILES, pct)),
        f"modality:    {guess_modality(array, ref)}",
    ]
    return "\n".join(lines)
