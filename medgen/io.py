"""Reading and writing volumes with their geometry intact.

``load_image`` returns ``(array, ImageRef)``: a 3D array indexed like the file's voxels (x, y, z for
NIfTI; SimpleITK's (z, y, x) arrays are transposed to match) and an :class:`ImageRef` holding a NIfTI
header that carries the whole geometry. ``save_like`` writes an array on that grid with a copy of the
header, so affine, qform, sform (codes included), pixdim, units and orientation come back exactly.

Geometry rule (one for every format): world coordinates are RAS+ millimetres, as in nibabel and MONAI.
For NIfTI files whose qform and sform disagree, medgen uses the **sform when sform_code > 0, else the
qform** (the NIfTI standard's priority, as nibabel applies it; SimpleITK/ITK prefer the qform in that
case, so the two tools can place such a file differently). Both transforms and both codes are kept on
write, whichever one is used. DICOM, NRRD and MetaImage geometry (LPS in ITK) is converted to RAS and
stored with qform_code = sform_code = 1 (scanner).

Policy for non-finite voxels: a volume with NaN or Inf voxels is rejected (``MedgenError``) unless the
caller passes ``nonfinite="fill"``, which replaces them with the lowest finite value of the volume.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from medgen.errors import MedgenError, WriteError, is_write_error, short
from medgen.headers import check_claim, check_detached_data, dicom_series_files, looks_like_dicom, nifti_precheck, quiet_stderr

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".mha")  # single-file formats only, so writes stay atomic
SUPPORTED = NIFTI_SUFFIXES + ITK_SUFFIXES + ("<DICOM series directory>",)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HU_RANGE = (-1024, 3071)  # CT on disk: int16 Hounsfield units


def suffix_of(path: str | os.PathLike) -> str:
    """The image extension of ``path`` (``.nii.gz`` counts as one).

    >>> suffix_of("ct/case_000.nii.gz")
    '.nii.gz'
    """
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a supported image file or a directory holding DICOM files."""
    p = Path(path)
    if p.is_dir():
        return any(f.is_file() and looks_like_dicom(f) for f in p.iterdir())
    return suffix_of(p) in NIFTI_SUFFIXES + ITK_SUFFIXES


def case_name(path: str | os.PathLike) -> str:
    """The case identifier of an image path: its name without the image extension.

    >>> case_name("/data/mri/case_007.nii.gz")
    'case_007'
    """
    p = Path(path)
    suffix = suffix_of(p)
    return p.name[: -len(suffix)] if suffix and p.name.lower().endswith(suffix) else p.name


@dataclass(frozen=True)
class ImageRef:
    """The geometry of a loaded volume: everything ``save_like`` needs to write on its grid.

    Args:
        path: the file or DICOM directory it came from.
        header: a NIfTI-1 header carrying the geometry (a copy of the file's own for NIfTI input).
        source_format: ``nifti``, ``nrrd``, ``metaimage`` or ``dicom``.
        modality: the DICOM Modality tag when known (``CT``, ``MR``), else ``None``.

    >>> ref.orientation  # doctest: +SKIP
    'LPS'
    """

    path: str
    header: nib.Nifti1Header
    source_format: str
    modality: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.header.get_data_shape()[:3])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> RAS+ mm, by the rule in the module docstring (sform, else qform)."""
        return affine_of(self.header)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Three-letter axis code of the voxel axes, e.g. ``RAS`` or ``LPS``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def qform_code(self) -> int:
        return int(self.header["qform_code"])

    @property
    def sform_code(self) -> int:
        return int(self.header["sform_code"])


def affine_of(header: nib.Nifti1Header) -> np.ndarray:
    """The voxel -> world affine of a NIfTI header: sform if its code > 0, else qform, else pixdim."""
    if int(header["sform_code"]) > 0:
        return header.get_sform()
    if int(header["qform_code"]) > 0:
        return header.get_qform()
    return header.get_base_affine()


def header_from_affine(affine: np.ndarray, shape: tuple[int, ...], code: int = 1) -> nib.Nifti1Header:
    """A fresh NIfTI header for a 3D grid, qform and sform both set to ``affine`` with ``code``."""
    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), None)
    header = img.header
    header.set_data_shape(tuple(int(n) for n in shape[:3]))
    header.set_qform(affine, code=code)
    header.set_sform(affine, code=code)
    header.set_xyzt_units("mm", "sec")
    return header


def ref_from_affine(affine: np.ndarray, shape: tuple[int, ...], path: str = "<memory>") -> ImageRef:
    """An :class:`ImageRef` for a new grid (qform = sform = ``affine``, code 1), for :func:`save_like`.

    >>> ref_from_affine(np.diag([3.0, 3.0, 3.0, 1.0]), (4, 4, 2)).spacing
    (3.0, 3.0, 3.0)
    """
    return ImageRef(path, header_from_affine(affine, shape), "nifti")


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """HU as medgen writes CT: rounded, clipped to :data:`HU_RANGE`, int16.

    >>> hu_int16(np.array([-2000.0, 39.6, 5000.0])).tolist()
    [-1024, 40, 3071]
    """
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)


def load_image(
    path: str | os.PathLike, nonfinite: Literal["error", "fill"] = "error"
) -> tuple[np.ndarray, ImageRef]:
    """Read a 3D volume and its geometry, validating it.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd`` file, or a directory of one DICOM series.
        nonfinite: ``"error"`` rejects NaN/Inf voxels, ``"fill"`` replaces them by the volume's lowest
            finite value.

    Returns:
        ``(array, ref)``: the voxels in file order (x, y, z) and the :class:`ImageRef`.

    Raises:
        MedgenError: the file is missing, unreadable, truncated, not an image, not 3D, empty, has
            non-finite voxels (with ``nonfinite="error"``) or a non-finite or singular affine.

    >>> ct, ref = load_image("example_ct_sm.nii.gz")  # doctest: +SKIP
    >>> ct.shape, ref.spacing, ref.orientation  # doctest: +SKIP
    ((122, 101, 30), (3.0, 3.0, 3.0), 'RAS')
    """
    p = Path(path)
    if not p.exists():
        raise MedgenError(p, "no such file or directory")
    if p.is_dir():
        array, ref = _load_dicom_series(p)
    else:
        suffix = suffix_of(p)
        if suffix in NIFTI_SUFFIXES:
            array, ref = _load_nifti(p)
        elif suffix in ITK_SUFFIXES:
            array, ref = _load_itk(p)
        elif looks_like_dicom(p):
            raise MedgenError(p, "a single DICOM file: pass the directory holding the whole series")
        else:
            raise MedgenError(p, f"unsupported extension {suffix!r} (supported: {', '.join(SUPPORTED)})")
    if array.size == 0:
        shape = ref.header.get_data_shape()
        raise MedgenError(p, f"empty volume: shape {tuple(int(n) for n in shape)} has a zero-size axis")
    array = _squeeze_to_3d(array, p)
    _check_affine(ref.affine, p)
    return _handle_nonfinite(array, p, nonfinite), ref


def _load_binary_nifti(p: Path, check) -> tuple[np.ndarray, ImageRef]:
    """A NIfTI of datatype 1 (binary, unsupported by nibabel), read as uint8 0/1."""
    raw, order, _, _, shape, offset = check
    block = bytearray(raw)
    at = 12 if len(raw) == 540 else 70
    block[at:at + 4] = struct.pack(order + "hh", 2, 8)  # -> uint8
    header = (nib.Nifti2Header if len(raw) == 540 else nib.Nifti1Header).from_fileobj(io.BytesIO(bytes(block)))
    n = int(np.prod(shape))
    with (gzip.open if suffix_of(p) == ".nii.gz" else open)(p, "rb") as f:
        f.seek(offset)
        data = f.read(n)
    flat = np.frombuffer(data, np.uint8)
    if flat.size < n:  # one bit per voxel
        flat = np.unpackbits(flat, bitorder="little")
    if flat.size < n:
        raise MedgenError(p, "corrupt or truncated image data (binary voxels)")
    array = (flat[:n].reshape(shape, order="F") != 0).astype(np.uint8)
    return array, ImageRef(str(p), nib.Nifti1Header.from_header(header), "nifti")


def _load_nifti(p: Path) -> tuple[np.ndarray, ImageRef]:
    check = nifti_precheck(p)
    if check is not None and check[2] == 1:
        return _load_binary_nifti(p, check)
    log, level = nib.imageglobals.logger, nib.imageglobals.logger.level
    try:
        log.setLevel(100)  # nibabel logs its header fixes on stderr: medgen's promise is one line
        img = nib.load(p)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise MedgenError(p, f"not a readable NIfTI file ({short(exc)})") from None
    finally:
        log.setLevel(level)
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise MedgenError(p, f"not a NIfTI-1/2 image ({type(img).__name__})")
    try:
        array = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile, MemoryError) as exc:
        raise MedgenError(p, f"corrupt or truncated image data ({short(exc)})") from None
    if array.dtype.names is not None or np.iscomplexobj(array):  # datatypes the header check did not catch
        raise MedgenError(p, f"voxels of type {array.dtype}: medgen reads scalar real-valued volumes only")
    header = img.header.copy()
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        print(f"medgen: warning: {p}: no qform or sform code: orientation taken from pixdim, as nibabel does",
              file=sys.stderr, flush=True)
    return array, ImageRef(str(p), header, "nifti")


def _itk_to_ref(image, p: Path, fmt: str, modality: str | None = None) -> tuple[np.ndarray, ImageRef]:
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        size = tuple(image.GetSize())
        comps = image.GetNumberOfComponentsPerPixel()
        raise MedgenError(p, f"not a 3D scalar volume: size {size}, {comps} component(s) per voxel")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection(), float).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    header = header_from_affine(_LPS_TO_RAS @ lps, array.shape)
    return array, ImageRef(str(p), header, fmt, modality)


def _load_itk(p: Path) -> tuple[np.ndarray, ImageRef]:
    import SimpleITK as sitk

    check_detached_data(p, suffix_of(p))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with quiet_stderr():
            reader.ReadImageInformation()
        check_claim(p, reader.GetSize() + (reader.GetNumberOfComponents(),), "voxel values")
        if "complex" in sitk.GetPixelIDValueAsString(reader.GetPixelID()):
            raise MedgenError(p, "complex voxels: medgen reads scalar real-valued volumes only")
        with quiet_stderr():
            image = reader.Execute()
    except RuntimeError as exc:
        raise MedgenError(p, f"not a readable image or truncated ({short(exc)})") from None
    return _itk_to_ref(image, p, "nrrd" if suffix_of(p) in (".nrrd", ".nhdr") else "metaimage")


def _load_dicom_series(p: Path) -> tuple[np.ndarray, ImageRef]:
    import SimpleITK as sitk

    _, files = dicom_series_files(p)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with quiet_stderr():
            image = reader.Execute()
    except RuntimeError as exc:
        raise MedgenError(p, f"unreadable DICOM series ({short(exc)})") from None
    if image.GetDimension() == 3 and image.GetSize()[2] < 2:
        raise MedgenError(p, "DICOM series has a single slice: not a 3D volume")
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
    return _itk_to_ref(image, p, "dicom", modality)


def _squeeze_to_3d(array: np.ndarray, p: Path) -> np.ndarray:
    if array.ndim > 3 and all(n == 1 for n in array.shape[3:]):
        array = array.reshape(array.shape[:3])
    if array.ndim != 3:
        what = "2D" if array.ndim == 2 else f"{array.ndim}D"
        raise MedgenError(p, f"not a 3D volume: {what} with shape {tuple(array.shape)}")
    return array


def _check_affine(affine: np.ndarray, p: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise MedgenError(p, "affine has non-finite entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedgenError(p, "affine is singular (zero voxel size or collinear axes)")


def _handle_nonfinite(array: np.ndarray, p: Path, policy: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return array
    if policy == "error" or n_bad == array.size:
        raise MedgenError(p, f"{n_bad} non-finite (NaN/Inf) voxels; medgen rejects them")
    array = np.array(array, copy=True)
    array[bad] = array[~bad].min()
    return array


def _output_dtype(array: np.ndarray) -> np.dtype:
    dtype = array.dtype
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.float64 or dtype == np.float16:
        return np.dtype(np.float32)
    if dtype == np.int64 and array.size and np.abs(array).max() < 2**31:
        return np.dtype(np.int32)
    return dtype


def save_like(
    array: np.ndarray, ref: ImageRef, path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``array`` on the grid of ``ref`` with its whole header, atomically.

    The output is NIfTI (``.nii``/``.nii.gz``) with a copy of the reference header: affine, qform and
    sform with their codes, pixdim, units and orientation equal the reference's. ``.nrrd``/``.mha``
    outputs are written by SimpleITK from the same (RAS -> LPS) geometry.

    Args:
        array: a 3D array with exactly ``ref.shape`` (bool is written as uint8, float64 as float32).
        ref: the reference grid from :func:`load_image`.
        path: the output file; its directory is created.
        overwrite: replace an existing file (never the reference's own file).

    >>> save_like(mask.astype(np.uint8), mri_ref, "out/case_000_liver.nii.gz")  # doctest: +SKIP
    """
    out = Path(path)
    array = np.asarray(array)
    if array.ndim != 3 or tuple(array.shape) != ref.shape:
        raise MedgenError(out, f"array shape {tuple(array.shape)} does not match the reference grid {ref.shape}")
    suffix = suffix_of(out)
    if suffix not in OUTPUT_SUFFIXES:
        raise MedgenError(out, f"unsupported output extension {suffix!r} (use .nii.gz, .nii, .nrrd or .mha)")
    if out.exists():
        if Path(ref.path).exists() and out.resolve() == Path(ref.path).resolve():
            raise MedgenError(out, "refusing to overwrite the input image")
        if not overwrite:
            raise MedgenError(out, "output exists (pass --overwrite to replace it)")
    array = array.astype(_output_dtype(array), copy=False)

    def write(tmp: Path) -> None:
        if suffix in NIFTI_SUFFIXES:
            img = nib.Nifti1Image(array, None, header=ref.header.copy())
            img.set_data_dtype(array.dtype)
            img.header["scl_slope"], img.header["scl_inter"] = np.nan, np.nan
            img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0
            nib.save(img, tmp)
        else:
            _write_itk(array, ref.affine, tmp)

    return atomic_write(out, write)


def save_hu(hu: np.ndarray, ref: ImageRef, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """:func:`save_like` of a CT in HU as int16 (:func:`hu_int16`)."""
    return save_like(hu_int16(hu), ref, path, overwrite=overwrite)


def _write_itk(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path), True)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def read_run_artifact(run_dir: str | os.PathLike, name: str, what: str, parse):
    """``parse(path)`` of ``RUN/name``, a file a run writes when training ends (``what`` it holds); missing, or
    unreadable (any exception of ``parse``): one line that says how to write it again (``medgen train --resume``)."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise MedgenError(path, f"missing: {what}, written when training ends (a run trained before them: "
                                f"`medgen train --resume {run_dir}` writes them from its training data)")
    try:
        return parse(path)
    except Exception as exc:  # damaged files raise many types (torch, json, shape checks)
        raise MedgenError(path, f"unreadable ({short(exc, 100)}): `medgen train --resume {run_dir}` writes it "
                                "again") from None


@contextlib.contextmanager
def new_output(path: str | os.PathLike, undo: tuple[type[BaseException], ...] = (Exception,)):
    """A block that makes the output ``path`` (a folder or a file): if ``path`` did not exist before and the block
    raises one of ``undo`` or a write error (a full disk, a quota: :func:`medgen.errors.is_write_error`), what it
    wrote is removed, so that a failed command leaves nothing half-made; a plain ``OSError`` of that kind becomes one
    line naming ``path`` (a :class:`~medgen.errors.WriteError`).

    >>> import tempfile; out = Path(tempfile.mkdtemp()) / "set"
    >>> with contextlib.suppress(ValueError), new_output(out):
    ...     (out / "images").mkdir(parents=True); raise ValueError("the 3rd sample failed")
    >>> out.exists()
    False
    """
    out = Path(path)
    created = not out.exists()
    try:
        yield out
    except BaseException as exc:
        if created and (isinstance(exc, undo) or is_write_error(exc)):
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out, ignore_errors=True)
            else:
                out.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_write_error(exc):
            raise WriteError(out, f"cannot write ({short(exc)})") from None
        raise


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``: readers never see half a file.

    The temporary file sits in the destination directory and keeps the destination's extension
    (writers choose the format from it); it is removed if ``write`` raises. The file gets the mode a plain
    ``open`` would give it (the umask applies), not ``mkstemp``'s 0600.
    """
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{suffix_of(out)}", dir=out.parent)
    except OSError as exc:
        raise WriteError(out, f"cannot write ({short(exc)})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if tmp.exists():  # mkstemp creates 0600: give the file the mode a plain open() would (0666 & ~umask)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as exc:  # disk full, quota, read-only file system
        tmp.unlink(missing_ok=True)
        raise WriteError(out, f"cannot write ({short(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
