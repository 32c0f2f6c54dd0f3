from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medgen.errors import MedgenError
from medgen.io import _write_itk, case_name, load_image, save_like

from .conftest import oblique_affine


def test_round_trip_keeps_whole_header(oblique_nifti, tmp_path):
    data, ref = load_image(oblique_nifti)
    out = save_like(data * 2, ref, tmp_path / "out.nii.gz")
    src, dst = nib.load(oblique_nifti).header, nib.load(out).header
    assert (int(dst["qform_code"]), int(dst["sform_code"])) == (1, 2)
    np.testing.assert_allclose(nib.load(out).affine, oblique_affine(), atol=1e-6)
    np.testing.assert_allclose(dst.get_qform(), src.get_qform(), atol=1e-6)
    np.testing.assert_allclose(dst.get_sform(), src.get_sform(), atol=1e-6)
    np.testing.assert_array_equal(dst["pixdim"], src["pixdim"])
    assert dst.get_xyzt_units() == ("mm", "sec")
    back, ref2 = load_image(out)
    np.testing.assert_allclose(back, data * 2, rtol=1e-6)
    assert ref2.orientation == ref.orientation and ref2.shape == (23, 17, 11)


def test_qform_sform_rule_uses_sform(oblique_nifti):
    _, ref = load_image(oblique_nifti)
    np.testing.assert_allclose(ref.affine, oblique_affine(), atol=1e-5)  # the sform, not the qform
    np.testing.assert_allclose(ref.spacing, (0.8, 1.1, 2.7), atol=1e-5)


@pytest.mark.parametrize("dtype,expected", [(np.bool_, np.uint8), (np.float64, np.float32), (np.int16, np.int16)])
def test_mask_dtypes_and_codes(oblique_nifti, tmp_path, dtype, expected):
    data, ref = load_image(oblique_nifti)
    out = save_like((data > 100).astype(dtype), ref, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == expected
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)


def test_save_like_refuses_overwrite_and_input(oblique_nifti, tmp_path):
    data, ref = load_image(oblique_nifti)
    out = save_like(data, ref, tmp_path / "a.nii.gz")
    with pytest.raises(MedgenError, match="output exists"):
        save_like(data, ref, out)
    save_like(data + 1, ref, out, overwrite=True)
    np.testing.assert_allclose(load_image(out)[0], data + 1)
    with pytest.raises(MedgenError, match="overwrite the input"):
        save_like(data, ref, oblique_nifti, overwrite=True)
    with pytest.raises(MedgenError, match="does not match the reference grid"):
        save_like(data[:-1], ref, tmp_path / "b.nii.gz")
    with pytest.raises(MedgenError, match="unsupported output extension"):
        save_like(data, ref, tmp_path / "b.png")


def test_atomic_write_leaves_nothing_on_failure(oblique_nifti, tmp_path, monkeypatch):
    data, ref = load_image(oblique_nifti)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(RuntimeError):
        save_like(data, ref, tmp_path / "out" / "x.nii.gz")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1000, (19, 13, 7)).astype(np.int16)
    affine = oblique_affine()
    path = tmp_path / f"vol{suffix}"
    _write_itk(data, affine, path)
    loaded, ref = load_image(path)
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_allclose(ref.affine, affine, atol=1e-5)
    assert ref.source_format in ("nrrd", "metaimage") and (ref.qform_code, ref.sform_code) == (1, 1)
    # SimpleITK reads it at the same physical place (LPS = RAS with x, y negated)
    img = sitk.ReadImage(str(path))
    world_lps = img.TransformIndexToPhysicalPoint((3, 4, 5))
    world_ras = affine @ np.array([3, 4, 5, 1.0])
    np.testing.assert_allclose(world_lps, world_ras[:3] * [-1, -1, 1], atol=1e-4)
    out = save_like(loaded, ref, tmp_path / "back.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, affine, atol=1e-5)


def test_dicom_series_geometry_and_mask_overlay(real_dir, tmp_path):
    ct, ref = load_image(real_dir / "example_ct_dicom")
    assert ct.shape == (512, 512, 20) and ref.source_format == "dicom" and ref.modality == "CT"
    assert ref.orientation == "LPS"
    np.testing.assert_allclose(ref.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    assert ct.min() == -1024 and ct.max() == 1839
    # The label file is stored LAS; it must overlay the series in physical space.
    seg, seg_ref = load_image(real_dir / "example_seg_dicom.nii.gz")
    vox = np.linalg.inv(ref.affine) @ seg_ref.affine
    np.testing.assert_allclose(np.abs(vox[:3, :3]), np.eye(3), atol=1e-4)
    seg_on_ct = np.flip(seg, axis=1) if vox[1, 1] < 0 else seg
    liver_hu = float(ct[seg_on_ct == 5].mean())
    assert 30 < liver_hu < 200, liver_hu  # soft tissue, not air or fat: the overlay is right
    # save_like on the DICOM grid: a NIfTI whose affine equals the series geometry
    out = save_like((seg_on_ct == 5).astype(np.uint8), ref, tmp_path / "liver.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
    # and SimpleITK agrees on where voxel (10, 20, 3) is
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(real_dir / "example_ct_dicom")))
    lps = series.Execute().TransformIndexToPhysicalPoint((10, 20, 3))
    np.testing.assert_allclose((img.affine @ [10, 20, 3, 1])[:3] * [-1, -1, 1], lps, atol=1e-3)


@pytest.mark.parametrize(
    "name,shape,spacing,orientation,dtype",
    [
        ("example_ct.nii.gz", (122, 101, 112), (3, 3, 3), "RAS", np.int32),
        ("example_ct_sm.nii.gz", (122, 101, 30), (3, 3, 3), "RAS", np.int16),
        ("example_seg.nii.gz", (122, 101, 30), (3, 3, 3), "RAS", np.uint8),
        ("example_mr_sm.nii.gz", (117, 91, 20), (3, 3, 3), "LPS", np.int16),
        ("example_seg_mr.nii.gz", (117, 91, 20), (3, 3, 3), "LPS", np.uint8),
        ("example_seg_dicom.nii.gz", (512, 512, 20), (0.9765625, 0.9765625, 2.0), "LAS", np.uint8),
    ],
)
def test_real_examples_geometry(real_dir, name, shape, spacing, orientation, dtype):
    data, ref = load_image(real_dir / name)
    assert data.shape == shape and ref.shape == shape and data.dtype == dtype
    np.testing.assert_allclose(ref.spacing, spacing, atol=1e-4)
    assert ref.orientation == orientation
    assert (ref.qform_code, ref.sform_code) == (0, 2)


def test_real_mr_liver_mask_written_back(real_dir, tmp_path):
    mr, ref = load_image(real_dir / "example_mr_sm.nii.gz")
    seg, _ = load_image(real_dir / "example_seg_mr.nii.gz")
    out = save_like((seg == 5).astype(np.uint8), ref, tmp_path / "liver.nii.gz")
    src, dst = nib.load(real_dir / "example_mr_sm.nii.gz"), nib.load(out)
    np.testing.assert_array_equal(dst.affine, src.affine)
    assert (int(dst.header["qform_code"]), int(dst.header["sform_code"])) == (0, 2)
    liver_ml = float((np.asarray(dst.dataobj) == 1).sum() * 27 / 1000)
    assert 400 < liver_ml < 600  # PROVENANCE.md: about 499 mL


def test_case_name():
    assert case_name(Path("a/b/case_001.nii.gz")) == "case_001"
    assert case_name("x.nrrd") == "x"
