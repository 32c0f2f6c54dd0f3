from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.errors import MedgenError
from medgen.io import load_image
from medgen.validate import check_same_grid

from .conftest import oblique_affine, write_nifti


def _truncated(tmp: Path) -> Path:
    good = write_nifti(tmp / "good.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32),
                       oblique_affine())
    raw = good.read_bytes()
    bad = tmp / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


def _garbage(tmp: Path) -> Path:
    p = tmp / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return p


def _text_as_nii(tmp: Path) -> Path:
    p = tmp / "notes.nii"
    p.write_text("hello, I am a text file")
    return p


def _wrong_ext(tmp: Path) -> Path:
    p = tmp / "scan.txt"
    p.write_text("1 2 3")
    return p


def _vol(tmp: Path, name: str, data: np.ndarray, affine=None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    nib.save(img, tmp / name)
    return tmp / name


def _srow(tmp: Path, name: str, srow_y) -> Path:
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), None)
    img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = [1, 0, 0, 0], srow_y, [0, 0, 1, 0]
    img.header["sform_code"] = 2
    nib.save(img, tmp / name)
    return tmp / name


CASES = [
    ("missing", lambda t: t / "nope.nii.gz", "no such file"),
    ("truncated", _truncated, "corrupt or truncated"),
    ("garbage", _garbage, "not a readable NIfTI"),
    ("text_as_nii", _text_as_nii, "not a readable NIfTI"),
    ("wrong_extension", _wrong_ext, "unsupported extension '.txt'"),
    ("2d", lambda t: _vol(t, "flat.nii.gz", np.zeros((8, 8), np.float32)), "not a 3D volume: 2D"),
    ("4d", lambda t: _vol(t, "dyn.nii.gz", np.zeros((8, 8, 8, 3), np.float32)), "not a 3D volume: 4D"),
    ("zero_axis", lambda t: _vol(t, "empty.nii.gz", np.zeros((8, 0, 8), np.float32)), "zero-size axis"),
    ("nan", lambda t: _vol(t, "nan.nii.gz", np.where(np.eye(8)[..., None] > 0, np.nan, 1.0).repeat(4, 2).astype(np.float32)),
     "non-finite (NaN/Inf) voxels"),
    ("singular_affine", lambda t: _srow(t, "sing.nii.gz", [0.0, 0.0, 0.0, 0.0]), "singular"),
    ("inf_affine", lambda t: _srow(t, "inf.nii.gz", [0.0, np.inf, 0.0, 0.0]), "non-finite entries"),
    ("empty_dir", lambda t: (t / "dicom").mkdir() or (t / "dicom"), "no DICOM series"),
]


@pytest.mark.parametrize("name,make,problem", CASES, ids=[c[0] for c in CASES])
def test_bad_inputs_raise_one_line(tmp_path, name, make, problem):
    path = make(tmp_path)
    with pytest.raises(MedgenError) as info:
        load_image(path)
    msg = str(info.value)
    assert problem in msg and "\n" not in msg and msg.startswith(str(path))


@pytest.mark.parametrize("name,make,problem", CASES, ids=[c[0] for c in CASES])
def test_cli_info_bad_input_exit_2(tmp_path, capsys, name, make, problem):
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"medgen: error: {path}: ") and problem in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_truncated_no_traceback_subprocess(tmp_path):
    bad = _truncated(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "medgen", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr and "truncated" in proc.stderr


def test_nan_fill_policy(tmp_path):
    data = np.ones((6, 6, 6), np.float32) * 5
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    data[2, 2, 2] = -3
    arr, _ = load_image(_vol(tmp_path, "n.nii.gz", data), nonfinite="fill")
    assert np.isfinite(arr).all() and arr[0, 0, 0] == -3 and arr[1, 1, 1] == -3


def test_grid_mismatch(tmp_path):
    a = _vol(tmp_path, "img.nii.gz", np.zeros((8, 8, 8), np.float32))
    b = _vol(tmp_path, "lab.nii.gz", np.zeros((8, 8, 7), np.uint8))
    c = _vol(tmp_path, "lab2.nii.gz", np.zeros((8, 8, 8), np.uint8), np.diag([1.0, 1.0, 1.5, 1.0]))
    ref_a, ref_b, ref_c = load_image(a)[1], load_image(b)[1], load_image(c)[1]
    with pytest.raises(MedgenError, match=r"lab.nii.gz: grid differs from .*img.nii.gz: shape"):
        check_same_grid(ref_a, ref_b)
    with pytest.raises(MedgenError, match="affines differ by up to"):
        check_same_grid(ref_a, ref_c)
    check_same_grid(ref_a, ref_a)

