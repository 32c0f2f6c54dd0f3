from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.synthetic import MixedSamples
from medgen.engines.train import train
from medgen.evaluation.synthesis import kid, label_stats, ms_ssim_diversity
from medgen.inference.synthesize import sample_pairs
from medgen.io import hu_int16
from medgen.models.run import latest_checkpoint

from .conftest import ROOT


def tiny_synth(phantom_dir: Path, task: str, dims: int, iterations: int = 4) -> list[str]:
    ds = phantom_dir / "dataset.json"
    sets = {
        "spatial_dims": dims, "data.images": f"{ds}#cases", "data.labels": f"{ds}#cases", "data.cache_workers": 1,
        "data.patch_size": "[32, 32]" if dims == 2 else "[16, 16, 16]", "preprocess.spacing": "null",
        "train.iterations": iterations, "train.checkpoint_every": 2, "train.batch_size": 4, "train.num_workers": 0,
        "train.log_every": 1, "train.image_every": 2,
    }
    if task == "vae":
        sets |= {"model.latent_size": 8, "model.channels": "[4, 8]", "loss.lambda_adv": 0.1, "loss.ndf": 4}
    else:
        sets |= {"model.latent_size": 8, "model.channels": "[16, 8]", "model.disc_channels": "[4, 8]"}
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="module")
def vae_run(phantom_dir, tmp_path_factory) -> Path:
    return train(ROOT / "configs" / "vae_2d.yaml", tmp_path_factory.mktemp("runs") / "vae", tiny_synth(phantom_dir, "vae", 2))


@pytest.mark.parametrize("task,dims", [("vae", 2), ("vae", 3), ("gan", 2), ("gan", 3)])
def test_train_and_sample(phantom_dir, tmp_path, vae_run, task, dims):
    config = ROOT / "configs" / f"{task}_{dims}d.yaml"
    run = vae_run if (task, dims) == ("vae", 2) else train(config, tmp_path / "run", tiny_synth(phantom_dir, task, dims))
    ckpt = torch.load(latest_checkpoint(run), weights_only=True)
    assert ("model_ema" in ckpt and "disc" in ckpt) if task == "gan" else ("model" in ckpt and "disc" in ckpt)
    assert main(["synth", str(run), str(tmp_path / "s"), "--n", "3", "--seed", "1"]) == 0
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert len(info["training"]) == 3 and info["task"] == task
    img = nib.load(tmp_path / "s" / info["training"][0]["image"])
    lab = nib.load(tmp_path / "s" / info["training"][0]["label"])
    expected = (32, 32, 1) if dims == 2 else (16, 16, 16)
    assert img.shape == lab.shape == expected and img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.header.get_zooms(), (6.0, 6.0, 6.0))  # the training data's spacing
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1}
    hu = np.asarray(img.dataobj)
    images, labels, spacing, _ = sample_pairs(run, 3, seed=1)  # what was written is what the model samples
    np.testing.assert_array_equal(hu.reshape(images[0].shape), hu_int16(images[0]))
    np.testing.assert_array_equal(np.asarray(lab.dataobj).reshape(labels[0].shape), labels[0])
    # the same seed gives the same pairs
    assert main(["synth", str(run), str(tmp_path / "s2"), "--n", "3", "--seed", "1"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "s2" / info["training"][0]["image"]).dataobj), hu)


def test_mixed_samples_ratio():
    real = [{"src": 0}] * 2000
    syn = [{"src": 1}] * 2000
    mixed = MixedSamples(real, syn, ratio=0.3, seed=4)
    draws = [mixed[i]["src"] for i in range(2000)]
    assert abs(np.mean(draws) - 0.3) < 0.03
    assert draws == [MixedSamples(real, syn, 0.3, seed=4)[i]["src"] for i in range(2000)]
    assert all(MixedSamples(real, syn, 0.0)[i]["src"] == 0 for i in range(50))


def test_segmenter_with_synthetic_pairs(phantom_dir, vae_run, tmp_path):
    from .conftest import tiny_segmenter

    assert main(["synth", str(vae_run), str(tmp_path / "syn"), "--n", "4"]) == 0
    for source in (tmp_path / "syn", vae_run):
        run = train(ROOT / "configs" / "demo_segmenter_ct_liver.yaml", tmp_path / f"seg_{source.name}",
                    tiny_segmenter(phantom_dir, iterations=2, **{"augment.translator": "null",
                                                                 "augment.synthetic.source": str(source),
                                                                 "augment.synthetic.ratio": 0.5,
                                                                 "augment.synthetic.cases": 3}))
        assert latest_checkpoint(run).name == "checkpoint_2.pt"


def test_ms_ssim_diversity():
    rng = torch.Generator().manual_seed(0)
    same = torch.rand(1, 1, 64, 64, generator=rng).repeat(8, 1, 1, 1) * 2 - 1
    noise = torch.rand(8, 1, 64, 64, generator=rng) * 2 - 1
    assert ms_ssim_diversity(same, 2) == pytest.approx(1.0, abs=1e-4)  # identical samples: no diversity
    assert ms_ssim_diversity(noise, 2) < 0.2  # independent noise: very diverse


def test_kid_and_label_stats():
    rng = np.random.default_rng(0)
    a, b = torch.from_numpy(rng.normal(size=(200, 16))), torch.from_numpy(rng.normal(size=(200, 16)))
    shifted = b + 1.0
    assert abs(kid(a, b)) < 0.02 and kid(a, shifted) > 10 * abs(kid(a, b))
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0, 2:5, 2:5] = 1
    labels[1, 1:3, 1:3] = 1
    labels[1, 6:9, 6:9] = 1
    comps, sizes = label_stats(labels, 0.5)
    assert comps.tolist() == [1, 2, 0] and sizes.tolist() == [4.5, 6.5, 0.0]


def test_evaluate_synthesis_cli(vae_run, segmenter_run, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "synthesis", "--run", str(vae_run), "--features", str(segmenter_run), "--n", "12",
                 "--out", str(out)]) == 0
    report = json.loads((out / "synthesis.json").read_text())
    assert report["samples"] == 12 and np.isfinite(report["fid"]) and report["fid"] >= 0 and np.isfinite(report["kid"])
    c1 = report["class_1"]
    assert c1["plausible_fraction"] <= c1["single_component_fraction"]  # a plausible sample is one component
    assert c1["real_single_component_fraction"] > 0.5  # real slices go through the liver
    assert c1["size_real_mean"] > 0 and report["size_unit"] == "cm2"
    assert (out / "samples.png").stat().st_size > 1000


def test_augmentation_experiment_cli(phantom_dir, tmp_path, capsys):
    ds = phantom_dir / "dataset.json"
    seg_sets = ["augment.translator=null", "data.patch_size=[32, 32]", "preprocess.spacing=null", "network.channels=[4, 8]",
                "network.num_res_units=0", "train.iterations=2", "train.checkpoint_every=2", "train.batch_size=2"]
    synth_sets = [s for s in tiny_synth(phantom_dir, "vae", 2, iterations=2) if not s.startswith("data.images")
                  and not s.startswith("data.labels")]
    args = ["evaluate", "augmentation", "--segmenter-config", str(ROOT / "configs" / "demo_segmenter_ct_liver.yaml"),
            "--synth-config", str(ROOT / "configs" / "demo_vae_2d.yaml"), "--train-images", f"{ds}#cases",
            "--test-images", f"{ds}#cases", "--k", "2", "--repeats", "1", "--synthetic", "4", "--reference", "--out", str(tmp_path)]
    for s in seg_sets:
        args += ["--set-seg", s]
    for s in synth_sets:
        args += ["--set-synth", s]
    assert main(args) == 0
    report = json.loads((tmp_path / "augmentation.json").read_text())
    row = report["rows"][0]
    assert 0 <= row["dice_real"] <= 1 and 0 <= row["dice_real_synthetic"] <= 1
    assert report["gain_mean"] == pytest.approx(row["dice_real_synthetic"] - row["dice_real"])
    assert len(json.loads((tmp_path / "repeat_0" / "train.json").read_text())["training"]) == 2
    pool = len(json.loads(ds.read_text())["cases"])
    assert report["training_pool"] == pool > 2
    assert len(json.loads((tmp_path / "repeat_0" / "train_all.json").read_text())["training"]) == pool
    assert report["gain_real_all_mean"] == pytest.approx(row["dice_real_all"] - row["dice_real"])
    printed = capsys.readouterr().out
    assert "gain" in printed and f"all {pool} real training cases" in printed
