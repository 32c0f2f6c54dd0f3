from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.engines.train import train
from medgen.inference.pipeline import quality_flags
from medgen.io import load_image
from medgen.phantoms import make_case

from .conftest import ROOT, oblique_affine, tiny_segmenter, write_nifti

AFFINES = {
    "oblique_anisotropic": oblique_affine(spacing=(5.0, 5.5, 8.0), angle_deg=11),
    "lps": np.diag([-5.5, -5.5, 7.0, 1.0]),
    "ras": np.diag([5.0, 5.0, 7.5, 1.0]),
}


def _mri(tmp_path: Path, name: str, affine: np.ndarray, shape=(44, 40, 12)) -> Path:
    case = make_case(seed=9, case=len(name), shape=shape, affine=affine)
    qform = affine.copy()
    qform[:3, 3] += 0.5  # qform differs from the sform: both must come back
    return write_nifti(tmp_path / f"{name}.nii.gz", case["mri"], affine, qform=qform, qcode=1, scode=2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not a.any() and not b.any() else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _block(shape=(40, 40, 20), lo=(10, 10, 5), hi=(30, 30, 15)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return mask


@pytest.mark.parametrize("mask, raw, liver_ml, cycle, expected", [
    (_block(), _block(), 1000.0, 0.05, []),
    (_block() * 0, _block() * 0, 0.0, None, ["empty_mask"]),
    (_block(), _block(), 300.0, None, ["liver_volume_low"]),
    (_block(), _block(), 5000.0, 0.2, ["liver_volume_high", "high_cycle_error"]),
    (_block(hi=(40, 30, 20)), _block(hi=(40, 30, 20)), 1000.0, None, []),  # reaching the field of view's edge
    (_block(), _block() + _block(lo=(0, 0, 0), hi=(8, 40, 20)), 1000.0, None, ["fragmented"]),
])
def test_quality_flags(mask, raw, liver_ml, cycle, expected):
    assert quality_flags(mask, raw, liver_ml, cycle) == expected


def test_an_unsure_segmenter_is_flagged():
    assert quality_flags(_block(), _block(), 1000.0, None, unsure=0.45) == ["low_confidence"]
    assert quality_flags(_block(), _block(), 1000.0, None, unsure=0.2) == []


@pytest.fixture(scope="module")
def coarse_segmenter(phantom_dir, tmp_path_factory) -> Path:
    """A segmenter that runs at another spacing (8 x 8 mm in plane) than the MRIs and the translator."""
    return train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path_factory.mktemp("runs") / "seg8",
                 tiny_segmenter(phantom_dir, iterations=2, **{"preprocess.spacing": "[8.0, 8.0, null]"}))


@pytest.mark.parametrize("grid", list(AFFINES))
def test_mask_on_exact_mri_grid(cyclegan_run, coarse_segmenter, tmp_path, grid):
    src = _mri(tmp_path, grid, AFFINES[grid])
    out = tmp_path / "out" / "mask.nii.gz"
    assert main(["pipeline", "mri-liver", "--translator", str(cyclegan_run), "--segmenter", str(coarse_segmenter),
                 str(src), str(out), "--save-sct"]) == 0
    mask, ref = nib.load(out), nib.load(src)
    assert mask.shape == ref.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, ref.affine)
    np.testing.assert_array_equal(mask.header.get_qform(), ref.header.get_qform())
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 2)
    assert nib.load(out.with_name("mask_sct.nii.gz")).shape == ref.shape


def test_batch_qc_resume_and_failures(cyclegan_run, segmenter_run, phantom_dir, tmp_path, capsys):
    inputs = tmp_path / "mri"
    inputs.mkdir()
    for i in (0, 1):
        (inputs / f"case_00{i}.nii.gz").write_bytes((phantom_dir / "mri" / f"case_00{i}.nii.gz").read_bytes())
    broken = inputs / "case_009.nii.gz"
    broken.write_bytes((phantom_dir / "mri" / "case_002.nii.gz").read_bytes()[:3000])
    out = tmp_path / "out"
    args = ["pipeline", "mri-liver", "--translator", str(cyclegan_run), "--segmenter", str(segmenter_run),
            str(inputs), str(out), "--baseline", "--truth", str(phantom_dir / "labels")]
    assert main(args) == 2  # one case failed
    err = capsys.readouterr().err
    assert f"medgen: error: {broken}: corrupt or truncated" in err
    summary = json.loads((out / "summary.json").read_text())
    status = {r["case"]: r["status"] for r in summary["cases"]}
    assert status == {"case_000": "ok", "case_001": "ok", "case_009": "failed"}
    ok = [r for r in summary["cases"] if r["status"] == "ok"]
    for row in ok:
        mask, ref = load_image(out / f"{row['case']}.nii.gz")
        truth = load_image(phantom_dir / "labels" / f"{row['case']}.nii.gz")[0] == 1
        assert row["liver_ml"] == round(float(mask.sum()) * float(np.prod(ref.spacing)) / 1000, 1)
        volume_flags = {"empty_mask", "liver_volume_low", "liver_volume_high"} & set(row["flags"].split(";"))
        assert volume_flags == ({"empty_mask"} if row["liver_ml"] == 0 else {"liver_volume_low"} if row["liver_ml"] < 600
                                else {"liver_volume_high"} if row["liver_ml"] > 3500 else set())
        assert row["dice"] == pytest.approx(dice(mask > 0, truth), abs=1e-6)
        baseline = load_image(out / "baseline" / f"{row['case']}.nii.gz")[0] > 0
        assert row["baseline_dice"] == pytest.approx(dice(baseline, truth), abs=1e-6)
        assert 0 < row["cycle_error"] < 2  # mean |G_ba(G_ab(x)) - x| of [-1, 1] images: a real, nonzero error
    assert "dice" in summary["mean"] and (out / "summary.csv").read_text().startswith("case,status")
    # a rerun skips finished cases (their masks are not rewritten) and retries the failed one
    before = (out / "case_000.nii.gz").stat().st_mtime_ns
    broken.unlink()
    assert main(args) == 0
    assert (out / "case_000.nii.gz").stat().st_mtime_ns == before


def test_real_mr_example_end_to_end(cyclegan_run, segmenter_run, real_dir, tmp_path):
    src = real_dir / "example_mr_sm.nii.gz"
    out = tmp_path / "liver.nii.gz"
    assert main(["pipeline", "mri-liver", "--translator", str(cyclegan_run), "--segmenter", str(segmenter_run),
                 str(src), str(out)]) == 0
    mask, ref = nib.load(out), nib.load(src)
    assert mask.shape == (117, 91, 20)
    np.testing.assert_array_equal(mask.affine, ref.affine)
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (0, 2)
