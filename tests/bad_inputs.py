"""A corpus of hostile and broken inputs, written at test time (no binaries in the repository).

``write_corpus(folder)`` returns ``{name: (path, cause)}``: each file and a regular expression the one-line
``medgen: error: <file>: <problem>`` must match. Run as a script to write the corpus somewhere to look at:
``python tests/bad_inputs.py tests/data/bad``.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def hostile_nifti(path: Path, shape: tuple[int, ...], dtype=np.int16, data: bytes = b"\0" * 256) -> Path:
    """A NIfTI-1 header claiming ``shape`` followed by only ``data`` (256 bytes by default)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def binary_nifti(path: Path, shape=(8, 8, 8)) -> Path:
    """A NIfTI of datatype 1 (binary), one byte per voxel: what nibabel refuses to read."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    block = bytearray(header.binaryblock)
    block[70:74] = np.array([1, 8], "<i2").tobytes()  # datatype 1, bitpix 8
    voxels = (np.arange(int(np.prod(shape))) % 3 == 0).astype(np.uint8).tobytes()
    path.write_bytes(bytes(block) + b"\0" * 4 + voxels)
    return path


def dicom_series(folder: Path, n: int = 6, uid: str = "1.2.826.0.1.3680043.2.1125.1", skip=(), first: int = 0,
                 spacing: float = 2.0) -> Path:
    """A small CT DICOM series (16 x 16 slices, ``spacing`` mm apart) in ``folder``; slices in ``skip`` left out,
    files numbered from ``first``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        if k in skip:
            continue
        s = sitk.GetImageFromArray((np.arange(256).reshape(16, 16) % 50 + 10 * k).astype(np.int16))
        for tag, value in [("0008|0060", "CT"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0020|000d", "1.2.3.4"),
                           ("0020|000e", uid), ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{k * spacing}"), ("0020|0037", "1\\0\\0\\0\\1\\0")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{first + k:03d}.dcm"))
        writer.Execute(s)
    return folder


def truncated_slice(folder: Path) -> Path:
    """A DICOM series whose third slice lost its last 300 bytes (GDCM drops such a file without a word)."""
    dicom_series(folder)
    f = folder / "002.dcm"
    f.write_bytes(f.read_bytes()[:-300])
    return folder


def save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


def write_corpus(folder: str | Path) -> dict[str, tuple[Path, str]]:
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    (d / "empty_folder").mkdir(exist_ok=True)
    (d / "corrupt.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\n"
                                   "ElementDataFile = LOCAL\n")
    (d / "huge.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 20000 20000 20000\n"
                                "ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + "\0" * 256)
    return {
        "huge_nii": (hostile_nifti(d / "huge.nii", (20000, 20000, 20000)), "header claims 8000000000000 voxels"),
        "huge_niigz": (hostile_nifti(d / "huge.nii.gz", (20000, 20000, 20000)), "header claims 8000000000000 voxels"),
        "claim_1024": (hostile_nifti(d / "claim_1024.nii.gz", (1024, 1024, 1024)), "over the limit"),
        "truncated": (hostile_nifti(d / "truncated.nii", (64, 64, 64)), "truncated: the header claims"),
        "huge_mha": (d / "huge.mha", "header claims 8000000000000 voxel"),
        "rgb": (save(d / "rgb.nii.gz", rgb), "RGB voxels"),
        "complex": (save(d / "complex.nii.gz", np.ones((8, 8, 8), np.complex64)), "complex voxels"),
        "thin_z": (save(d / "thin_z.nii.gz", np.ones((128, 128, 1), np.float32)), r"degenerate grid \(128, 128, 1\)"),
        "thin_y": (save(d / "thin_y.nii.gz", np.ones((128, 1, 64), np.float32)), r"degenerate grid \(128, 1, 64\)"),
        "zeros": (save(d / "zeros.nii.gz", np.zeros((16, 16, 8), np.float32)), r"constant volume \(every voxel 0\)"),
        "corrupt_mha": (d / "corrupt.mha", "not a readable image or truncated"),
        "empty_folder": (d / "empty_folder", "holds no DICOM series"),
        "dicom_gap": (dicom_series(d / "dicom_gap", skip=(3,)), "not evenly spaced: 4 mm between 002.dcm and 004.dcm"),
        "dicom_two_series": (dicom_series(d / "dicom_two", uid="1.2.826.0.1.3680043.2.1125.2", first=10) and
                             dicom_series(d / "dicom_two"), r"holds 2 DICOM series \(1\.2\.826.*\): put each series"),
        "dicom_truncated": (truncated_slice(d / "dicom_truncated"), r"1 DICOM file\(s\) not readable .*: 002\.dcm"),
    }


if __name__ == "__main__":
    for name, (path, cause) in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad").items():
        print(f"{name:14s} {path}  ->  {cause}")
