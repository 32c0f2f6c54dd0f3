"""The shared Ignite trainer: a non-finite loss stops training with a clear error and saves nothing diverged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.config import OptimConfig, TrainConfig
from medgen.engines.common import TaskSetup, run_trainer, start_from
from medgen.errors import MedgenError
from medgen.models.run import latest_checkpoint


def _setup(diverge_at: int) -> TaskSetup:
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        loss = net(batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = float("inf") if engine.state.iteration >= diverge_at else loss.item()
        return {"loss": value}

    return TaskSetup(step=step, to_save={"net": net, "opt": opt},
                     make_loader=lambda start: torch.utils.data.DataLoader(torch.ones(64, 2), batch_size=1),
                     optimizers=[opt], lr=0.1)


def _cfg(iterations: int) -> SimpleNamespace:
    return SimpleNamespace(train=TrainConfig(iterations=iterations, checkpoint_every=2, log_every=1, image_every=0),
                           optim=OptimConfig(lr=0.1))


def test_divergence_is_an_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_PROGRESS", "0")
    with pytest.raises(MedgenError, match=r"training diverged at iteration 4 \(loss=inf\); last good checkpoint: "
                                          r"checkpoint_2.pt"):
        run_trainer(_cfg(10), tmp_path, _setup(diverge_at=4), resume=False)
    assert latest_checkpoint(tmp_path).name == "checkpoint_2.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_2.pt"]


def test_finite_run_completes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_PROGRESS", "0")
    trainer = run_trainer(_cfg(5), tmp_path, _setup(diverge_at=99), resume=False)
    assert trainer.state.iteration == 5 and latest_checkpoint(tmp_path).name == "checkpoint_5.pt"


def test_a_run_is_reused_only_when_finished_with_the_same_resolved_config(phantom_dir, tmp_path):
    from medgen.engines.train import train_or_reuse
    from medgen.models.registry import load_config
    from medgen.models.run import final_checkpoint, run_finished
    from tests.conftest import ROOT, tiny_segmenter

    config = ROOT / "configs" / "segmenter_ct_liver.yaml"
    sets = tiny_segmenter(phantom_dir, iterations=4)
    run = tmp_path / "run"
    assert not run_finished(run, config, sets)
    assert train_or_reuse(config, run, sets) > 0
    assert run_finished(run, config, sets)
    stamp = final_checkpoint(run, 4).stat().st_mtime_ns
    assert train_or_reuse("segmenter_ct_liver", run, sets) == 0  # the same spec, named bare: reused
    assert final_checkpoint(run, 4).stat().st_mtime_ns == stamp
    changed = [*sets, "optim.lr=0.002"]  # one key changed: not the same run
    assert not run_finished(run, config, changed)
    with pytest.raises(MedgenError, match="another config"):
        train_or_reuse(config, run, changed)
    assert train_or_reuse(config, run, changed, replace=True) > 0
    assert load_config(run / "config.yaml").optim.lr == pytest.approx(0.002)
    final_checkpoint(run, 4).unlink()  # interrupted after checkpoint 2: not finished, resumed from it
    assert not run_finished(run, config, changed) and latest_checkpoint(run).name == "checkpoint_2.pt"
    assert train_or_reuse(config, run, changed) > 0 and run_finished(run, config, changed)
    for path in (run / "checkpoints").iterdir():  # config.yaml but no checkpoint at all: trained again
        path.unlink()
    assert not run_finished(run) and train_or_reuse(config, run, changed) > 0 and run_finished(run)


def test_a_finished_run_is_not_reused_once_an_input_file_changed(phantom_dir, tmp_path):
    """Reuse by content: the run records the sha256 of the files its config reads (the datalist and the volumes it
    names); a label map rewritten in place makes the same spec a different run."""
    import shutil

    from medgen.engines.train import train_or_reuse
    from medgen.models.inputs import INPUTS_FILE
    from medgen.models.run import run_finished
    from tests.conftest import ROOT, tiny_segmenter

    data = shutil.copytree(phantom_dir, tmp_path / "data")
    config, sets, run = ROOT / "configs" / "segmenter_ct_liver.yaml", tiny_segmenter(data, iterations=2), tmp_path / "r"
    assert train_or_reuse(config, run, sets) > 0 and run_finished(run, config, sets)
    recorded = json.loads((run / INPUTS_FILE).read_text())["files"]
    label = sorted((data / "labels").glob("*.nii.gz"))[0]
    assert str(label.resolve()) in recorded and str((data / "dataset.json").resolve()) in recorded
    img = nib.load(label)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 1 - arr[0, 0, 0]  # one voxel changed, the file name and the config the same
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), label)
    assert not run_finished(run, config, sets) and run_finished(run)  # finished, but not for these inputs
    with pytest.raises(MedgenError, match="input files that changed since"):
        train_or_reuse(config, run, sets)
    assert train_or_reuse(config, run, sets, replace=True) > 0 and run_finished(run, config, sets)
    assert train_or_reuse(config, run, sets) == 0  # and now reused


def test_train_init_loads_the_generator_and_starts_a_missing_discriminator_from_scratch(tmp_path):
    torch.manual_seed(0)
    before = {"G": torch.nn.Linear(3, 2), "D": torch.nn.Linear(2, 1), "D_b": torch.nn.Linear(2, 1)}
    ckpt = tmp_path / "checkpoint_10.pt"
    torch.save({"G": before["G"].state_dict()}, ckpt)  # a run trained without a GAN: no discriminator saved
    now = {"G": torch.nn.Linear(3, 2), "D": torch.nn.Linear(2, 1), "D_b": torch.nn.Linear(2, 1)}
    fresh = {k: v.weight.detach().clone() for k, v in now.items()}
    assert start_from(now, ckpt) == ckpt
    assert torch.equal(now["G"].weight, before["G"].weight) and torch.equal(now["G"].bias, before["G"].bias)
    assert torch.equal(now["D"].weight, fresh["D"]) and torch.equal(now["D_b"].weight, fresh["D_b"])
    torch.save({"D": before["D"].state_dict()}, ckpt)  # the generator missing is still refused, by name
    with pytest.raises(MedgenError, match="train.init: the checkpoint has no G weights"):
        start_from(now, ckpt)
