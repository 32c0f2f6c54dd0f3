"""DICOM-SEG output (highdicom): a liver mask of a DICOM series, as a Segmentation object that references it.

A hospital PACS, 3D Slicer or OHIF loads it next to the source series. The mask is the one written as NIfTI, on
the series' own grid: frame ``k`` is slice ``k`` of the series as :func:`medgen.io.load_image` read it (the
files in GDCM's order), rows along the second and columns along the first array axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medgen.errors import MedgenError, short
from medgen.headers import dicom_series_files
from medgen.io import ImageRef, atomic_write, save_like

SEG_SUFFIX = ".seg.dcm"
OUTPUT_FORMATS = ("auto", "nifti", "dicom-seg", "both")  # auto: both for a DICOM series input, NIfTI otherwise


def seg_path(mask_path: str | Path) -> Path:
    """Where the DICOM-SEG of a mask goes: beside it, its image suffix replaced (``liver.nii.gz`` ->
    ``liver.seg.dcm``).

    >>> seg_path("out/case_001.nii.gz").as_posix()
    'out/case_001.seg.dcm'
    """
    path = Path(mask_path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + SEG_SUFFIX)


def save_mask(mask: np.ndarray, ref: ImageRef, path: str | Path, overwrite: bool = False,
              output_format: str = "auto", model: str = "medgen") -> list[Path]:
    """Write a liver mask in the asked format(s): NIfTI (or the input's format) with :func:`medgen.io.save_like`,
    and a DICOM-SEG beside it (:func:`seg_path`) when the input was a DICOM series; returns the files written."""
    if output_format not in OUTPUT_FORMATS:
        raise MedgenError(None, f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    dicom = ref.source_format == "dicom"
    if output_format == "dicom-seg" and not dicom:
        raise MedgenError(ref.path, "--output-format dicom-seg needs a DICOM series as input")
    written = []
    if output_format != "dicom-seg":
        written.append(save_like(mask, ref, path, overwrite=overwrite))
    if dicom and output_format != "nifti":
        seg = seg_path(path)
        if seg.exists() and not overwrite:
            raise MedgenError(seg, "output exists (pass --overwrite to replace it)")
        try:
            written.append(write_dicom_seg(mask, ref.path, seg, model))
        except MedgenError as exc:
            if output_format != "auto":
                raise
            print(f"medgen: note: {exc} (the NIfTI mask is written)")  # auto: the DICOM-SEG is the extra
    return written


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medgen")
    except PackageNotFoundError:
        return "0+unknown"


def _complete_uids(sources: list, series: str | Path) -> None:
    """Fill, in memory, the UIDs an anonymiser blanked, since a SEG must reference them: SOP Class and Instance UIDs
    from each file's meta header; empty Study, Series and Frame of Reference UIDs with UIDs derived from the series
    (the same for every slice). The source files are not touched."""
    from pydicom.uid import generate_uid

    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPInstanceUID"):
            raise MedgenError(series, "a slice has no SOP Instance UID: a DICOM-SEG cannot reference it")
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not ds.get(key):
                setattr(ds, key, generate_uid(entropy_srcs=[key, str(sources[0].SOPInstanceUID)]))


def write_dicom_seg(mask: np.ndarray, series: str | Path, out: str | Path, model: str = "medgen") -> Path:
    """Write ``mask`` (uint8, ``(X, Y, Z)`` on the grid of DICOM folder ``series``) as a binary DICOM-SEG with one
    segment, the liver (SNOMED CT: organ / liver), made by algorithm ``model`` of medgen's version.

    It references the source series (Study, Series and SOP Instance UIDs, Frame of Reference), and copies the
    patient and study modules from it, as highdicom does.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    _, files = dicom_series_files(Path(series))
    try:
        sources = [pydicom.dcmread(f) for f in files]
    except Exception as exc:  # pydicom raises several types for damaged files
        raise MedgenError(series, f"unreadable DICOM slice ({short(exc, 100)})") from None
    _complete_uids(sources, series)
    if mask.shape[2] != len(sources) or mask.shape[:2] != (sources[0].Columns, sources[0].Rows):
        raise MedgenError(series, f"mask grid {mask.shape} is not the series' ({sources[0].Columns}, "
                                  f"{sources[0].Rows}, {len(sources)})")
    frames = np.ascontiguousarray(np.transpose(mask > 0, (2, 1, 0)))  # (slices, rows, columns)
    version = _version()
    algorithm = hd.AlgorithmIdentificationSequence(name=f"medgen {model}", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    try:
        seg = _segmentation(hd, sources, frames, segment, model, version)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # a series highdicom cannot reference
        raise MedgenError(series, f"cannot make a DICOM-SEG of this series ({short(exc, 120)}); use "
                                  "--output-format nifti") from None
    return atomic_write(out, lambda tmp: seg.save_as(str(tmp)))


def _segmentation(hd, sources, frames, segment, model: str, version: str):
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medgen", manufacturer_model_name=model,
        software_versions=version, device_serial_number="none", series_description=f"medgen {model} liver",
        omit_empty_frames=False)


def read_dicom_seg(path: str | Path, series: str | Path) -> np.ndarray:
    """The liver segment of a DICOM-SEG as a uint8 ``(X, Y, Z)`` array on the grid of DICOM folder ``series``
    (frames matched to the series' slices by their SOP Instance UIDs)."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(path))
    _, files = dicom_series_files(Path(series))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    _complete_uids(sources, series)
    uids = [ds.SOPInstanceUID for ds in sources]
    volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    return np.ascontiguousarray(np.transpose(volume[..., 0], (2, 1, 0))).astype(np.uint8)
