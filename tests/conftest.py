"""Shared fixtures: temp-dir NIfTI volumes with oblique, anisotropic geometry; the real examples."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "data" / "real" / "totalsegmentator_examples"

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MEDGEN_PROGRESS", "0")  # no progress bars in test logs


def oblique_affine(spacing=(0.8, 1.1, 2.7), angle_deg=17.0, origin=(-101.3, 42.7, -13.9)) -> np.ndarray:
    """A rotated (oblique), anisotropic voxel -> world affine."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(angle_deg / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform: np.ndarray | None = None,
                qcode: int = 1, scode: int = 2) -> Path:
    """Write NIfTI with the sform ``affine`` (code ``scode``) and a qform that may differ (code ``qcode``)."""
    img = nib.Nifti1Image(data, None)
    img.set_qform(affine if qform is None else qform, code=qcode)
    img.set_sform(affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


@pytest.fixture
def oblique_nifti(tmp_path) -> Path:
    """An oblique, anisotropic float32 volume whose qform (code 1) and sform (code 2) differ."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 30, (23, 17, 11)).astype(np.float32)
    qform = oblique_affine(angle_deg=12.0, origin=(-100.0, 40.0, -10.0))
    return write_nifti(tmp_path / "oblique.nii.gz", data, oblique_affine(), qform=qform)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real examples not found at {REAL}")
    return REAL


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Six small phantom cases (64 x 64 x 32 at 6 x 6 x 6 mm), written once per test session."""
    from medgen.phantoms import write_dataset

    out = tmp_path_factory.mktemp("phantoms")
    write_dataset(out, cases=6, seed=0, shape=(64, 64, 32), spacing=(6.0, 6.0, 6.0))
    return out


def config(dims: int) -> Path:
    return ROOT / "configs" / ("cyclegan_2d.yaml" if dims == 2 else "cyclegan_3d.yaml")


def tiny(phantom_dir: Path, dims: int = 2, iterations: int = 4, **extra) -> list[str]:
    """Overrides that make the CycleGAN configs train in seconds on the session phantoms."""
    ds = phantom_dir / "dataset.json"
    patch = "[32, 32]" if dims == 2 else "[32, 32, 32]"
    sets = {
        "data.mri": str(ds), "data.ct": str(ds), "data.val_mri": f"{ds}#cases", "data.val_ct": f"{ds}#cases",
        "data.patch_size": patch, "data.cache_workers": 1, "preprocess.spacing": "null",
        "generator.ngf": 4, "generator.n_blocks": 1, "discriminator.ndf": 4,
        "train.iterations": iterations, "train.checkpoint_every": 2, "train.log_every": 1, "train.image_every": 2,
        "train.keep_checkpoints": 10, "train.amp": "none", "inference.roi_size": "[16, 16, 16]",
        "inference.batch_size": 4, **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


def tiny_segmenter(phantom_dir: Path, dims: int = 2, iterations: int = 4, **extra) -> list[str]:
    """Overrides that make the segmenter config train in seconds on the session phantoms."""
    ds = phantom_dir / "dataset.json"
    sets = {
        "spatial_dims": dims, "data.images": str(ds), "data.labels": str(ds), "data.val_images": f"{ds}#cases",
        "data.val_labels": f"{ds}#cases", "data.patch_size": "[32, 32]" if dims == 2 else "[16, 16, 16]",
        "data.cache_workers": 1, "preprocess.spacing": "null", "network.channels": "[4, 8]",
        "network.num_res_units": 0, "train.iterations": iterations, "train.checkpoint_every": 2,
        "train.log_every": 1, "train.batch_size": 2, "train.num_workers": 0, "train.amp": "none",
        "inference.roi_size": "[16, 16, 16]", **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="session")
def cyclegan_run(phantom_dir, tmp_path_factory) -> Path:
    """A tiny 2D CycleGAN trained for 4 iterations on the session phantoms."""
    from medgen.engines.train import train

    return train(config(2), tmp_path_factory.mktemp("runs") / "c2d", tiny(phantom_dir))


@pytest.fixture(scope="session")
def segmenter_run(phantom_dir, tmp_path_factory) -> Path:
    """A tiny 2D segmenter trained for 4 iterations on the session phantoms."""
    from medgen.engines.train import train

    return train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path_factory.mktemp("runs") / "seg",
                 tiny_segmenter(phantom_dir))
