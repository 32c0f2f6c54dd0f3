"""Checks between inputs and of outputs: a label map on its image's grid, label values, output locations.
Each raises a one-line ``MedgenError``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medgen.errors import MedgenError
from medgen.io import ImageRef, suffix_of


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



SYSTEM_ROOTS = ("/proc", "/sys", "/dev")  # pseudo-filesystems: never an output location


FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".json",
                 ".csv", ".html", ".yaml", ".yml", ".pt")  # names of files, never of an output folder


def check_output_folder(folder: str | os.PathLike, named: str | os.PathLike | None = None) -> Path:
    """Raise unless ``folder`` exists as a writable folder or can be created as one, before any work is done.

    Args:
        folder: where outputs will be written (created if missing).
        named: the path the message names (default ``folder``), e.g. the output file of a single input.

    >>> check_output_folder("/proc/out")
    Traceback (most recent call last):
    medgen.errors.MedgenError: /proc/out: not an output location (under /proc)
    """
    target = Path(folder).absolute()
    if named is None and suffix_of(target) in FILE_SUFFIXES:
        raise MedgenError(folder, f"this output is a folder, but its name ends in {suffix_of(target)} (a file's "
                                  "suffix): choose a folder name")
    named = target if named is None else named
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    real = str(probe.resolve())
    root = next((r for r in SYSTEM_ROOTS if real == r or real.startswith(r + "/")), None)
    if root is not None:
        raise MedgenError(named, f"not an output location (under {root})")
    if not probe.is_dir():
        raise MedgenError(named, f"{probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MedgenError(named, f"cannot write into {probe} (permission denied)")
    return target


def check_output_of(inputs: str | os.PathLike, output: str | os.PathLike, single: bool) -> None:
    """The output checks of a file-or-folder command: writable, and a folder output is not the input folder."""
    out = Path(output)
    check_output_folder(out.parent if single else out, out)
    if not single and Path(inputs).is_dir() and out.exists() and out.resolve() == Path(inputs).resolve():
        raise MedgenError(out, "output folder is the input folder: choose another one")


def check_label_values(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Raise if a label map holds non-integer values (a resampled or probability map, not labels).

    >>> check_label_values(np.array([0.0, 0.6, 1.7]), "seg.nii.gz")
    Traceback (most recent call last):
    medgen.errors.MedgenError: seg.nii.gz: not a label map: non-integer values (e.g. 0.6)
    """
    if np.issubdtype(array.dtype, np.floating):
        frac = array[np.mod(array, 1) != 0]
        if frac.size:
            raise MedgenError(path, f"not a label map: non-integer values (e.g. {float(frac.flat[0]):.4g})")
    return array


MIN_SIZE = 2  # voxels along each axis for whole-volume inference (N4 fails on 1-voxel-thick grids)


def check_volume(array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise for a volume whole-volume inference (translation, the pipeline) cannot use: an axis under
    :data:`MIN_SIZE` voxels (training reads single-slice 2D samples; inference of whole volumes cannot), or
    one value everywhere (an all-zero or constant volume has no anatomy to translate).

    >>> check_volume(np.zeros((128, 128, 1)), "thin.nii.gz")
    Traceback (most recent call last):
    medgen.errors.MedgenError: thin.nii.gz: degenerate grid (128, 128, 1): every axis needs at least 2 voxels
    >>> check_volume(np.full((8, 8, 8), 7.0), "flat.nii.gz")
    Traceback (most recent call last):
    medgen.errors.MedgenError: flat.nii.gz: constant volume (every voxel 7): nothing to translate or segment
    """
    if min(array.shape) < MIN_SIZE:
        raise MedgenError(path, f"degenerate grid {tuple(array.shape)}: every axis needs at least {MIN_SIZE} voxels")
    if array.size and array.min() == array.max():
        raise MedgenError(path, f"constant volume (every voxel {float(array.flat[0]):.6g}): nothing to translate or segment")
