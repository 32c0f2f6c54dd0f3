"""Checks of what a file's header claims, made before any voxel is read: a huge or hostile file is refused
while it costs nothing (claimed voxel count against a limit, claimed bytes against the file size, voxel
types medgen does not read), and the C++ readers' own stderr chatter is silenced so an error stays one line.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from medgen.errors import MedgenError, short

MAX_VOXELS_ENV, MAX_VOXELS = "MEDGEN_MAX_VOXELS", 1024**3 // 2  # claimed voxel counts above it: refused unread
REFUSED_NIFTI = {32: "complex", 1792: "complex", 2048: "complex", 128: "RGB", 2304: "RGBA"}  # NIfTI datatype codes


def max_voxels() -> int:
    """The largest voxel count a header may claim: env ``MEDGEN_MAX_VOXELS``, default 1024**3 / 2."""
    text = os.environ.get(MAX_VOXELS_ENV, "")
    return int(text) if text.strip().isdigit() else MAX_VOXELS


def check_claim(p: Path, shape: tuple[int, ...], what: str = "voxels") -> None:
    """Refuse a header whose claimed voxel count exceeds :func:`max_voxels`, before anything is read."""
    n = int(np.prod([max(int(d), 0) for d in shape], dtype=object))
    if n > max_voxels():
        raise MedgenError(p, f"header claims {n} {what} ({' x '.join(map(str, shape))}), over the limit of "
                             f"{max_voxels()} (raise {MAX_VOXELS_ENV} for larger volumes)")


def nifti_precheck(p: Path) -> tuple[bytes, str, int, int, tuple[int, ...], int] | None:
    """Check a NIfTI header's claims against limits and the file size before reading voxels.

    Returns (header bytes, byte order, datatype, bitpix, shape, voxel offset), or None when the file is not
    recognisably NIfTI (nibabel then reports it).
    """
    try:
        with (gzip.open if str(p).lower().endswith(".nii.gz") else open)(p, "rb") as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise MedgenError(p, f"not a readable NIfTI file ({short(exc)})") from None
    order = next((o for o in "<>" if len(raw) >= 348 and struct.unpack(o + "i", raw[:4])[0] in (348, 540)), None)
    if order is None:
        return None
    two = struct.unpack(order + "i", raw[:4])[0] == 540
    if two and len(raw) < 540:
        return None
    datatype, bitpix = struct.unpack(order + "hh", raw[12:16] if two else raw[70:74])
    dims = struct.unpack(order + ("8q" if two else "8h"), raw[16:80] if two else raw[40:56])
    offset = int(struct.unpack(order + ("q" if two else "f"), raw[168:176] if two else raw[108:112])[0])
    if not 1 <= dims[0] <= 7 or min(dims[1:dims[0] + 1]) < 0:
        raise MedgenError(p, f"invalid NIfTI header: dim = {list(dims)}")
    shape = tuple(int(d) for d in dims[1:dims[0] + 1])
    check_claim(p, shape)
    if datatype in REFUSED_NIFTI:
        raise MedgenError(p, f"{REFUSED_NIFTI[datatype]} voxels (NIfTI datatype {datatype}): medgen reads scalar "
                             "real-valued volumes only")
    need = max(offset, 348) + int(np.prod(shape, dtype=object)) * max(bitpix, 1) // 8
    if str(p).lower().endswith(".nii") and p.stat().st_size < need:
        raise MedgenError(p, f"truncated: the header claims {need} bytes, the file has {p.stat().st_size}")
    return raw[:540 if two else 348], order, datatype, bitpix, shape, max(offset, 348)


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C++ libraries (ITK, GDCM, MetaIO) print on file descriptor 2 while reading: medgen reports
    problems itself, on one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def looks_like_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (by its ``.dcm``/``.ima`` suffix or the ``DICM`` preamble)."""
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_series_files(p: Path) -> tuple[str, list[str]]:
    """The series UID and slice files of the DICOM folder ``p``, from the headers only, checked: exactly one
    series, every DICOM file of the folder part of it (GDCM silently drops a truncated slice), and evenly
    spaced slices (ITK averages a gap into a wrong slice thickness). Anything else is a :class:`MedgenError`
    naming the series or the file: medgen never guesses which series or slices were meant."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    with quiet_stderr():
        series = reader.GetGDCMSeriesIDs(str(p)) or []
    if not series:
        raise MedgenError(p, "directory holds no DICOM series (and is not an image file)")
    if len(series) > 1:
        raise MedgenError(p, f"holds {len(series)} DICOM series ({', '.join(series)}): put each series in its own folder")
    with quiet_stderr():
        files = list(reader.GetGDCMSeriesFileNames(str(p), series[0]))
    listed = {Path(f).resolve() for f in files}
    strays = sorted(f.name for f in p.iterdir() if f.is_file() and looks_like_dicom(f) and f.resolve() not in listed)
    if strays:
        raise MedgenError(p, f"{len(strays)} DICOM file(s) not readable as part of series {series[0]} "
                             f"(truncated or corrupt?): {', '.join(strays[:3])}")
    _check_slice_spacing(p, files)
    return series[0], files


def _check_slice_spacing(p: Path, files: list[str]) -> None:
    """Refuse a DICOM series whose slice positions (along the slice normal) are not evenly spaced: a missing
    slice would otherwise be averaged into a wrong slice thickness (ITK only warns)."""
    import SimpleITK as sitk

    positions = []
    for name in files:
        info = sitk.ImageFileReader()
        info.SetFileName(name)
        try:
            with quiet_stderr():
                info.ReadImageInformation()
        except RuntimeError as exc:
            raise MedgenError(p, f"unreadable DICOM slice {Path(name).name} ({short(exc)})") from None
        try:
            position = [float(v) for v in info.GetMetaData("0020|0032").split("\\")]
            row_col = [float(v) for v in info.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):  # no or malformed position tags: nothing to check the order against
            return
        positions.append(float(np.dot(position, np.cross(row_col[:3], row_col[3:]))))
    if len(positions) < 3:
        return
    steps = np.abs(np.diff(positions))
    typical = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - typical) > max(0.01 * typical, 1e-3))
    if typical <= 1e-3 or bad.size:
        i = int(bad[0]) if bad.size else 0
        raise MedgenError(p, f"DICOM slices are not evenly spaced: {steps[i]:.3g} mm between "
                             f"{Path(files[i]).name} and {Path(files[i + 1]).name}, {typical:.3g} mm elsewhere "
                             "(a missing or duplicated slice?)")


DETACHED_KEYS = {".mhd": ("elementdatafile",), ".mha": ("elementdatafile",), ".nhdr": ("data file", "datafile")}


def check_detached_data(p: Path, suffix: str) -> None:
    """Refuse a MetaImage/NRRD header whose voxel file lies outside the header's own folder (an absolute path
    or ``..``): ITK would read any file it names (``/etc/passwd`` as voxels). Reads at most the first 64 kB."""
    keys = DETACHED_KEYS.get(suffix)
    if not keys:
        return
    with open(p, "rb") as f:
        head = f.read(65536).decode("latin-1")
    for line in head.splitlines():
        key, sep, value = line.partition(":" if suffix == ".nhdr" else "=")
        if not sep or key.strip().lower() not in keys:
            continue
        target = value.strip().split()[0] if value.strip() else ""
        if not target or target.upper() in ("LOCAL", "LIST") or "%" in target:
            return
        folder = p.resolve().parent
        resolved = (folder / target).resolve()
        if Path(target).is_absolute() or folder not in resolved.parents:
            raise MedgenError(p, f"its voxel data file {target!r} lies outside the header's folder: refused")
        return
