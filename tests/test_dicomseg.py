"""DICOM in, DICOM-SEG out: a mask of a DICOM series round-trips voxel for voxel and passes dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medgen.cli import main
from medgen.dicomseg import read_dicom_seg, seg_path
from medgen.io import load_image


def mr_dicom_series(volume: Path, folder: Path) -> Path:
    """Write a NIfTI volume as an MR DICOM series (SimpleITK, one file a slice, its geometry kept)."""
    import SimpleITK as sitk

    image = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(volume)), 0, 1000), sitk.sitkInt16)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                   direction[1], direction[4], direction[7]))
    series = "1.2.826.0.1.3680043.2.1125.77"
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        position = "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in [("0008|0060", "MR"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
                           ("0020|000d", "1.2.826.0.1.3680043.2.1125.76"), ("0020|000e", series),
                           ("0020|0052", "1.2.826.0.1.3680043.2.1125.78"), ("0008|0018", f"{series}.{k + 1}"),
                           ("0020|0013", str(k + 1)), ("0020|0032", position), ("0020|0037", orientation),
                           ("0018|0050", f"{image.GetSpacing()[2]:.4f}"), ("0010|0020", "PHANTOM"),
                           ("0010|0010", "Phantom^Case")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)
    return folder


def _errors_of_dciodvfy(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_segment_of_a_dicom_series_writes_a_dicom_seg_equal_to_the_nifti(phantom_dir, tmp_path):
    series = mr_dicom_series(phantom_dir / "mri" / "case_000.nii.gz", tmp_path / "series")
    before = {p.name: p.read_bytes() for p in series.iterdir()}
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", str(series), str(out), "--modality", "mri"]) == 0
    mask, ref = load_image(out)
    _, series_ref = load_image(series)
    assert np.allclose(ref.affine, series_ref.affine) and mask.any()
    seg = seg_path(out)
    assert seg.name == "liver.seg.dcm" and seg.is_file()
    assert np.array_equal(read_dicom_seg(seg, series), mask)  # voxel for voxel, on the series' grid
    import highdicom as hd

    ds = hd.seg.segread(str(seg))
    source = __import__("pydicom").dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    segment = ds.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT: liver
    assert "mri-liver" in segment.SegmentAlgorithmName
    assert {p.name: p.read_bytes() for p in series.iterdir()} == before  # inputs untouched
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: the DICOM-SEG was not validated")
    assert _errors_of_dciodvfy(seg) == []


def test_output_format_picks_the_files(phantom_dir, tmp_path, capsys):
    series = mr_dicom_series(phantom_dir / "mri" / "case_001.nii.gz", tmp_path / "series")
    only_seg = tmp_path / "a.nii.gz"
    assert main(["segment", str(series), str(only_seg), "--modality", "mri", "--output-format", "dicom-seg"]) == 0
    assert not only_seg.exists() and seg_path(only_seg).is_file()
    only_nifti = tmp_path / "b.nii.gz"
    assert main(["segment", str(series), str(only_nifti), "--modality", "mri", "--output-format", "nifti"]) == 0
    assert only_nifti.is_file() and not seg_path(only_nifti).exists()
    nifti_in = tmp_path / "c.nii.gz"
    assert main(["segment", str(phantom_dir / "mri" / "case_001.nii.gz"), str(nifti_in), "--modality", "mri",
                 "--output-format", "dicom-seg"]) == 2
    assert "needs a DICOM series" in capsys.readouterr().err and not nifti_in.exists()


def test_pipeline_on_a_folder_of_dicom_series_writes_both(phantom_dir, tmp_path):
    inputs = tmp_path / "in"
    mr_dicom_series(phantom_dir / "mri" / "case_002.nii.gz", inputs / "case_002")
    out = tmp_path / "out"
    assert main(["pipeline", "mri-liver", str(inputs), str(out)]) == 0
    mask = load_image(out / "case_002.nii.gz")[0]
    assert np.array_equal(read_dicom_seg(out / "case_002.seg.dcm", inputs / "case_002"), mask)


def test_real_ct_dicom_series_gets_a_valid_dicom_seg(real_dir, tmp_path):
    series = real_dir / "example_ct_dicom"
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", "ct-liver", str(series), str(out)]) == 0
    mask, ref = load_image(out)
    assert np.array_equal(read_dicom_seg(seg_path(out), series), mask)
    truth, truth_ref = load_image(real_dir / "example_seg_dicom.nii.gz")  # TotalSegmentator's liver = 5, stored LAS
    vox = np.linalg.inv(ref.affine) @ truth_ref.affine
    truth = (np.flip(truth, axis=1) if vox[1, 1] < 0 else truth) == 5
    assert 2 * np.logical_and(mask > 0, truth).sum() / (mask.sum() + truth.sum()) > 0.8
    if shutil.which("dciodvfy") is not None:
        assert _errors_of_dciodvfy(seg_path(out)) == []
