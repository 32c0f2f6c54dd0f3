from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medgen.engines.cyclegan as cyclegan_module
from medgen.cli import main
from medgen.engines.cyclegan import ImagePool
from medgen.engines.train import train
from medgen.errors import MedgenError
from medgen.io import load_image
from medgen.models.run import latest_checkpoint
from medgen.phantoms import make_case

from .conftest import config, oblique_affine, tiny, write_nifti


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def weights(run: Path) -> dict:
    return torch.load(latest_checkpoint(run), weights_only=True)["G_ab"]


@pytest.fixture
def run2d(cyclegan_run) -> Path:
    return cyclegan_run


@pytest.mark.parametrize("dims", [2, 3])
def test_train_few_iterations(phantom_dir, tmp_path, dims, run2d):
    run = run2d if dims == 2 else train(config(3), tmp_path / "c3d", tiny(phantom_dir, 3, iterations=2))
    assert (run / "config.yaml").is_file() and (run / "norm.json").is_file() and any((run / "tb").iterdir())
    rows = metrics(run)
    last = 4 if dims == 2 else 2
    assert {r["name"] for r in rows if r["phase"] == "train"} >= {"loss_g", "loss_d_a", "loss_cycle_a", "lr0"}
    val = {r["name"]: float(r["value"]) for r in rows if r["phase"] == "val"}
    assert set(val) == {"mae", "psnr", "ssim"} and 0 < val["mae"] < 3000 and -1 <= val["ssim"] <= 1
    assert latest_checkpoint(run).name == f"checkpoint_{last}.pt"
    ckpt = torch.load(latest_checkpoint(run), weights_only=True)
    assert {"G_ab", "G_ba", "D_a", "D_b", "opt_g", "opt_d", "trainer", "scaler", "pool_a"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == last


def test_deterministic_and_resume_continues_exactly(phantom_dir, tmp_path, monkeypatch, run2d):
    again = train(config(2), tmp_path / "again", tiny(phantom_dir))
    for k, v in weights(run2d).items():
        torch.testing.assert_close(weights(again)[k], v, rtol=0, atol=0)

    real_step = cyclegan_module.cyclegan_step

    def crashing_step(*args, **kwargs):
        step = real_step(*args, **kwargs)

        def wrapped(engine, batch):
            if engine.state.iteration == 4:  # dies during iteration 4, after checkpoint_2
                raise KeyboardInterrupt("killed")
            return step(engine, batch)

        return wrapped

    monkeypatch.setattr(cyclegan_module, "cyclegan_step", crashing_step)
    run = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        train(config(2), run, tiny(phantom_dir))
    assert latest_checkpoint(run).name == "checkpoint_2.pt"
    monkeypatch.setattr(cyclegan_module, "cyclegan_step", real_step)
    with pytest.raises(MedgenError, match="already holds a training run"):
        train(config(2), run, tiny(phantom_dir))
    assert main(["train", "--resume", str(run)]) == 0
    assert latest_checkpoint(run).name == "checkpoint_4.pt"
    assert max(int(r["iteration"]) for r in metrics(run)) == 4
    logged = [[{k: r[k] for k in ("iteration", "phase", "name", "value")} for r in metrics(d)] for d in (run, run2d)]
    assert logged[0] == logged[1]  # rows logged after checkpoint_2 were cut, not duplicated, on resume
    for k, v in weights(run2d).items():  # same weights as the uninterrupted run
        torch.testing.assert_close(weights(run)[k], v, rtol=0, atol=0)


def test_image_pool_state_round_trip():
    pool = ImagePool(3, seed=1)
    for i in range(6):
        pool.query(torch.full((2, 1, 4, 4), float(i)))
    clone = ImagePool(3, seed=99)
    clone.load_state_dict(pool.state_dict())
    x = torch.full((4, 1, 4, 4), 9.0)
    torch.testing.assert_close(pool.query(x), clone.query(x))


@pytest.mark.parametrize("affine_name", ["oblique", "lps"])
def test_translate_keeps_input_geometry(run2d, tmp_path, affine_name):
    shape = (40, 36, 9)
    affine = oblique_affine(spacing=(5.0, 5.5, 8.0)) if affine_name == "oblique" else np.diag([-5.0, -5.0, 8.0, 1.0])
    case = make_case(seed=5, case=0, shape=shape, affine=affine)
    qform = oblique_affine(spacing=(5.0, 5.5, 8.0), angle_deg=3.0)
    src = write_nifti(tmp_path / "mri.nii.gz", case["mri"], affine, qform=qform, qcode=1, scode=2)
    assert main(["translate", str(run2d), str(src), str(tmp_path / "sct.nii.gz")]) == 0
    out, ref = nib.load(tmp_path / "sct.nii.gz"), nib.load(src)
    assert out.shape == shape and out.get_data_dtype() == np.int16
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_qform(), ref.header.get_qform())
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    hu = np.asarray(out.dataobj)
    assert -1024 <= hu.min() and hu.max() <= 2048
    # CT -> MRI, folder to folder
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.nii.gz").write_bytes(src.read_bytes())
    assert main(["translate", str(run2d), str(tmp_path / "in"), str(tmp_path / "out"), "--direction", "ct2mri"]) == 0
    mri = nib.load(tmp_path / "out" / "a.nii.gz")
    assert mri.shape == shape and mri.get_data_dtype() == np.float32


def test_translate_dicom_series(run2d, real_dir, tmp_path):
    assert main(["translate", str(run2d), str(real_dir / "example_ct_dicom"), str(tmp_path / "sct.nii.gz")]) == 0
    _, ref = load_image(real_dir / "example_ct_dicom")
    out = nib.load(tmp_path / "sct.nii.gz")
    assert out.shape == (512, 512, 20)
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)


def test_translate_errors(run2d, tmp_path, capsys):
    assert main(["translate", str(tmp_path), "x.nii.gz", str(tmp_path / "o.nii.gz")]) == 2
    assert "not a medgen run directory" in capsys.readouterr().err
    assert main(["translate", str(run2d), str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_distributed_two_cpu_processes(phantom_dir, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "medgen",
           "train", str(config(2)), "--out", str(run)]
    for s in tiny(phantom_dir, iterations=3, **{"data.val_mri": "null", "data.val_ct": "null"}):
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"world_size": 2' in (run / "environment.json").read_text()
    assert '"backend": "gloo"' in (run / "environment.json").read_text()
    assert latest_checkpoint(run).name == "checkpoint_3.pt"
