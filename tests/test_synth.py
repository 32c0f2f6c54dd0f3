from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.mixing import MixedSamples
from medgen.engines.train import train
from medgen.evaluation.synthesis import display_window, kid, label_stats, ms_ssim_diversity
from medgen.inference.synthesize import sample_pairs
from medgen.inference.synthesizers import SamplingOptions
from medgen.errors import MedgenError
from medgen.io import hu_int16
from medgen.keys import Keys
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


def tiny_label2image(phantom_dir: Path, label_map: str, *extra: str) -> list[str]:
    """Overrides that train ``configs/label2image_2d.yaml`` for 2 iterations on the session phantoms."""
    ds = phantom_dir / "dataset.json"
    return [f"data.images={ds}#cases", f"data.labels={ds}#cases", f"data.label_map={label_map}",
            "data.patch_size=[32, 32]", "preprocess.spacing=null", "data.cache_workers=1", "generator.ngf=4",
            "discriminator.ndf=4", "discriminator.n_layers=2", "train.iterations=2", "train.batch_size=2",
            "train.checkpoint_every=2", "train.log_every=1", *extra]


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


def test_sampling_temperature_scales_the_latents(vae_run):
    from medgen.inference.synthesizers import SamplingOptions, load_synthesizer

    synth = load_synthesizer(vae_run, "cpu")
    assert synth.cfg.model.temperature == 1.0
    a, b = synth.draw(3, 0), synth.draw(3, 0)
    assert a.images.shape == (3, 1, 32, 32) and a.labels.shape == (3, 32, 32)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images[0], a.images[1])  # seeded, diverse
    cold = load_synthesizer(vae_run, "cpu", SamplingOptions(temperature=0.0))  # every latent at the prior's mean
    images = torch.cat([cold.draw(2, seed).images for seed in (0, 1)])  # one sample, whatever the seed
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(images[0], cold.model.sample(torch.zeros(1, cold.model.latent_size))[0, :1].float(),
                              atol=1e-5)


def test_a_vae_stores_the_encodings_of_its_training_patches_when_training_ends(vae_run):
    """``RUN/latents.pt``: the posteriors of ``MIXTURE_PATCHES`` training patches (drawn with ``train.seed``) by the
    final weights, and the ``model.mixture_components`` mixture of their means, read with ``weights_only``."""
    from medgen.inference.synthesizers import load_synthesizer, training_patches
    from medgen.models.synth import LATENTS_FILE, MIXTURE_PATCHES, encode_patches, fit_mixture

    stored = torch.load(vae_run / LATENTS_FILE, weights_only=True)
    synth = load_synthesizer(vae_run, "cpu")
    mu, logvar = encode_patches(synth.model, synth.cfg, training_patches(synth.cfg, synth.cfg.train.seed),
                                MIXTURE_PATCHES, torch.device("cpu"))
    assert stored["mu"].shape == (MIXTURE_PATCHES, synth.model.latent_size)
    assert torch.allclose(stored["mu"], mu, atol=1e-5) and torch.allclose(stored["logvar"], logvar, atol=1e-5)
    refit = fit_mixture(mu, synth.cfg.model.mixture_components)
    assert stored["mixture_means"].shape == (10, synth.model.latent_size)  # model.mixture_components
    for key in ("mixture_weights", "mixture_means", "mixture_covariances"):
        assert torch.allclose(stored[key], refit[key], atol=1e-4)


def test_posterior_sampling_decodes_around_the_stored_encodings(vae_run):
    from medgen.inference.synthesizers import SamplingOptions, load_synthesizer
    from medgen.models.synth import read_latents

    stored = read_latents(vae_run)
    cold = load_synthesizer(vae_run, "cpu", SamplingOptions(sampling="posterior", temperature=0.0))
    index = np.random.default_rng(7).choice(len(stored["mu"]), 3, replace=False)  # seed 7 picks the patches
    with torch.no_grad():  # each latent at its training patch's mean
        assert torch.allclose(cold.draw(3, 7).images, cold.model.sample(stored["mu"][index])[:, :1].float(), atol=1e-5)
    warm = load_synthesizer(vae_run, "cpu", SamplingOptions(sampling="posterior"))
    assert not torch.allclose(warm.draw(3, 7).images, cold.draw(3, 7).images)  # mu + sigma * noise
    assert torch.equal(warm.draw(3, 7).images, warm.draw(3, 7).images)  # seeded


def test_mixture_sampling_draws_from_a_mixture_of_the_training_encodings(vae_run):
    from medgen.inference.synthesizers import SamplingOptions, load_synthesizer
    from medgen.models.synth import read_latents

    mu = read_latents(vae_run)["mu"].double().numpy()
    one = load_synthesizer(vae_run, "cpu", SamplingOptions(sampling="mixture", mixture_components=1))
    fit = one.mixture()  # another count than the stored fit's: fitted on the stored encodings
    np.testing.assert_allclose(fit["mixture_means"][0].numpy(), mu.mean(0), atol=1e-6)
    np.testing.assert_allclose(fit["mixture_covariances"][0].numpy(), np.cov(mu.T, bias=True) + 1e-4 * np.eye(mu.shape[1]),
                               atol=1e-6)
    cold = load_synthesizer(vae_run, "cpu", SamplingOptions(sampling="mixture", mixture_components=3, temperature=0.0))
    with torch.no_grad():  # every latent at one of the 3 means
        centres = cold.model.sample(cold.mixture()["mixture_means"].float()).float()[:, :1]
    assert all(min(float((c - m).abs().max()) for m in centres) < 1e-4 for c in cold.draw(6, 0).images)
    warm = load_synthesizer(vae_run, "cpu", SamplingOptions(sampling="mixture"))
    assert torch.equal(warm.mixture()["mixture_means"], read_latents(vae_run)["mixture_means"])  # the stored fit
    a = warm.draw(6, 0).images
    assert torch.equal(a, warm.draw(6, 0).images)  # seeded
    assert not torch.allclose(a, warm.draw(6, 1).images) and not torch.allclose(a[0], a[1])


def test_sampling_must_be_prior_posterior_or_mixture():
    from medgen.models.registry import load_config

    with pytest.raises(MedgenError, match="sampling.*must be prior, posterior or mixture, not 'mean'"):
        load_config(ROOT / "configs" / "vae_2d.yaml", ["model.sampling=mean"])
    with pytest.raises(MedgenError, match="mixture_components.*must be at least 1, not 0"):
        load_config(ROOT / "configs" / "vae_2d.yaml", ["model.mixture_components=0"])
    with pytest.raises(MedgenError, match="label_output.*must be categorical or independent, not 'soft'"):
        load_config(ROOT / "configs" / "gan_2d.yaml", ["model.label_output=soft"])


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


def test_synthetic_pairs_stop_after_until(phantom_dir, vae_run, tmp_path):
    """``augment.synthetic.until``: synthetic samples only in that fraction of the run (4 iterations x batch 2 at
    0.5: the stream's first 4 samples), the real stream's own samples after it."""
    from medgen.engines.segmenter import segmentation_samples
    from medgen.models.registry import load_config

    from .conftest import tiny_segmenter

    assert main(["synth", str(vae_run), str(tmp_path / "syn"), "--n", "4"]) == 0
    base = tiny_segmenter(phantom_dir, iterations=4, **{"augment.translator": "null"})
    seg_config = ROOT / "configs" / "demo_segmenter_ct_liver.yaml"
    mixed = segmentation_samples(load_config(seg_config, base + [
        f"augment.synthetic.source={tmp_path / 'syn'}", "augment.synthetic.ratio=1.0", "augment.synthetic.until=0.5"]), 1)
    real = segmentation_samples(load_config(seg_config, base), 1)
    same = [all(torch.equal(mixed[n][key], real[n][key]) for key in (Keys.IMAGE, Keys.LABEL)) for n in range(8)]
    assert same == [False] * 4 + [True] * 4
    with pytest.raises(MedgenError, match="until.*must be in \\(0, 1\\], not 1.5"):
        load_config(seg_config, base + ["augment.synthetic.until=1.5"])


def test_label_to_image_synthesis_paints_synthetic_pairs_too(phantom_dir, vae_run, tmp_path):
    """``augment.synthseg`` with ``augment.synthetic``: the synthetic pairs get generation labels and are painted
    like the real ones (the two together used to fail on the missing generation labels)."""
    from medgen.engines.segmenter import segmentation_samples
    from medgen.models.registry import load_config

    from .conftest import tiny_segmenter

    assert main(["synth", str(vae_run), str(tmp_path / "syn"), "--n", "4"]) == 0
    base = tiny_segmenter(phantom_dir, iterations=4, **{"augment.translator": "null"}) + [
        f"augment.synthetic.source={tmp_path / 'syn'}", "augment.synthetic.ratio=1.0"]
    seg_config = ROOT / "configs" / "demo_segmenter_ct_liver.yaml"
    plain = segmentation_samples(load_config(seg_config, base), 1)
    painted = segmentation_samples(load_config(seg_config, base + ["augment.synthseg.prob=1.0"]), 1)
    for n in range(4):
        assert set(painted[n]) == {Keys.IMAGE, Keys.LABEL}  # the generation labels are consumed by the painter
        assert torch.equal(painted[n][Keys.LABEL], plain[n][Keys.LABEL])  # the same synthetic anatomy ...
        assert not torch.allclose(painted[n][Keys.IMAGE], plain[n][Keys.IMAGE])  # ... in another contrast


def test_synthetic_pairs_are_read_in_the_segmenters_classes(phantom_dir, vae_run, tmp_path):
    """A synthesizer whose classes differ from the segmenter's (BTCV-style: liver 6, spleen 1): ``medgen synth``
    records its label_map and the segmenter reads its liver as its own class 1 (it used to read the synthesizer's
    class 1, the spleen, as liver); a label-map VAE's classes are rendered in the label2image run's classes."""
    from medgen.engines.segmenter import synthetic_classes, synthetic_volumes
    from medgen.models.registry import load_config
    from medgen.models.segmenter import SyntheticAugmentConfig

    from .conftest import tiny_segmenter

    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i",
                tiny_label2image(phantom_dir, "{1: 6, 2: 1}"))  # phantom liver 1 -> class 6, spleen 2 -> class 1
    assert main(["synth", str(run), str(tmp_path / "syn"), "--n", "6"]) == 0
    info = json.loads((tmp_path / "syn" / "dataset.json").read_text())
    assert info["label_map"] == {"1": 6, "2": 1}
    written = np.stack([np.asarray(nib.load(tmp_path / "syn" / e["label"]).dataobj)[..., 0] for e in info["training"]])
    assert {1, 6} <= set(np.unique(written))
    seg_config = ROOT / "configs" / "demo_segmenter_ct_liver.yaml"  # label_map {1: 1}: the phantom liver
    cfg = load_config(seg_config, tiny_segmenter(phantom_dir, **{"augment.translator": "null"}))
    assert synthetic_classes(tmp_path / "syn", cfg) == {6: 1}
    read = synthetic_volumes(SyntheticAugmentConfig(str(tmp_path / "syn"), 0.5), cfg)
    for volume, labels in zip(read, written):
        np.testing.assert_array_equal(volume[Keys.LABEL][0, ..., 0].numpy(), (labels == 6).astype(np.uint8))
    other = load_config(seg_config, tiny_segmenter(phantom_dir, **{"augment.translator": "null",
                                                                   "data.label_map": "{7: 1}"}))
    with pytest.raises(MedgenError, match="none of its classes .* is a class of the label_map {7: 1}"):
        synthetic_classes(tmp_path / "syn", other)
    # a liver VAE (label_map {1: 1}) rendered by that run: its liver becomes the run's class 6
    chained = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i_vae",
                    tiny_label2image(phantom_dir, "{1: 6, 2: 1}", f"labels={vae_run}"))
    np.testing.assert_array_equal(sample_pairs(chained, 3, seed=5)[1], 6 * sample_pairs(vae_run, 3, seed=5)[1])


def test_categorical_label_maps_are_the_argmax_of_one_softmax():
    from medgen.models.synth import categorical_logits, split_joint

    logits = torch.randn(4, 3, 8, 8) * 3
    samples = torch.cat([torch.zeros(4, 1, 8, 8), torch.tanh(logits / 2)], dim=1)  # what sample() returns
    labels = split_joint(samples)[1]
    probs = categorical_logits(logits).softmax(1)
    assert torch.equal(labels.long(), probs.argmax(1))  # one class per voxel: the most probable one
    assert torch.allclose(probs.sum(1), torch.ones(4, 8, 8))


def test_multi_organ_vae_samples_categorical_maps(phantom_dir, tmp_path, capsys):
    sets = tiny_synth(phantom_dir, "vae", 2) + ["data.label_map={1: 1, 2: 2, 3: 3, 4: 3}"]
    run = train(ROOT / "configs" / "vae_2d.yaml", tmp_path / "vae", sets)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert any(",loss_label," in r for r in rows)
    _, labels, _, _ = sample_pairs(run, 6, seed=0)
    assert set(np.unique(np.stack(labels))) <= {0, 1, 2, 3}
    # the Dice term: same seed, same first batch and weights, so the first label loss is the cross-entropy + Dice
    dice_run = train(ROOT / "configs" / "vae_2d.yaml", tmp_path / "vae_dice", sets + ["loss.lambda_dice=1.0"])

    def first_label_loss(r):
        return next(float(x.split(",")[3]) for x in (r / "metrics.csv").read_text().splitlines()
                    if x.startswith("1,train,loss_label,"))

    ce, ce_dice = first_label_loss(run), first_label_loss(dice_run)
    assert ce < ce_dice <= ce + 1.0  # a soft Dice loss lies in [0, 1]
    bad = tiny_synth(phantom_dir, "vae", 2) + ["loss.label_loss=softmaxish"]
    assert main(["train", str(ROOT / "configs" / "vae_2d.yaml"), "--out", str(tmp_path / "bad"),
                 *[a for kv in bad for a in ("--set", kv)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label_loss" in err[0] and "categorical or independent" in err[0]
    assert not (tmp_path / "bad").exists()


def test_label2image_renders_real_and_synthetic_label_maps(phantom_dir, vae_run, segmenter_run, tmp_path, capsys):
    from medgen.inference.synthesizers import render
    from medgen.models.label2image import one_hot

    sets = tiny_label2image(phantom_dir, "{1: 1, 2: 2, 3: 3, 4: 3}")
    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", sets)
    names = {r.split(",")[2] for r in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert {"loss_g", "loss_d", "l1"} <= names
    assert main(["synth", str(run), str(tmp_path / "pairs"), "--n", "3"]) == 0
    info = json.loads((tmp_path / "pairs" / "dataset.json").read_text())
    assert info["task"] == "label2image" and len(info["training"]) == 3
    label = np.asarray(nib.load(tmp_path / "pairs" / info["training"][0]["label"]).dataobj)
    assert label.shape == (32, 32, 1) and set(np.unique(label)) <= {0, 1, 2, 3}
    images, labels, _, _ = sample_pairs(run, 3, seed=0)
    assert images.shape == labels.shape == (3, 32, 32)
    generator = torch.nn.Conv2d(4, 1, 1)  # odd sizes are padded with background, then cropped back
    assert render(generator, one_hot(torch.zeros(1, 1, 20, 27, dtype=torch.long), 4)).shape == (1, 1, 20, 27)
    chained = sets + [f"labels={vae_run}"]  # the VAE's synthetic label maps rendered: fully synthetic pairs
    run2 = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i_vae", chained)
    _, labels_vae, _, _ = sample_pairs(run2, 3, seed=5)
    np.testing.assert_array_equal(labels_vae, sample_pairs(vae_run, 3, seed=5)[1])
    out = tmp_path / "eval"
    assert main(["evaluate", "synthesis", "--run", str(run), "--features", str(segmenter_run), "--n", "8",
                 "--out", str(out)]) == 0
    report = json.loads((out / "synthesis.json").read_text())
    assert report["label_maps"] == "training label maps" and report["organs"]["overlap_fraction"] == 0.0
    assert report["fid_real_vs_real"] >= 0 and np.isfinite(report["kid_real_vs_real"])
    assert "real vs real" in capsys.readouterr().out


def test_label2image_renders_mri_in_its_training_intensities(phantom_dir, tmp_path):
    """A label -> MRI generator (``data.modality: mri``): trained on MRIs, its pairs are written as float MRI
    volumes in the training MRIs' intensity range (the median robust range of ``synth.json``), not in HU."""
    from medgen.models.synth import read_synth

    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i_mri",
                tiny_label2image(phantom_dir, "{1: 1, 2: 2}", f"data.images={phantom_dir / 'mri'}", "data.modality=mri"))
    lo, hi = read_synth(run)["mri_scale"]
    assert 0 <= lo < hi  # phantom MRIs: non-negative intensities
    assert main(["synth", str(run), str(tmp_path / "pairs"), "--n", "3"]) == 0
    info = json.loads((tmp_path / "pairs" / "dataset.json").read_text())
    assert info["modality"] == "mri" and info["label_map"] == {"1": 1, "2": 2}
    img = nib.load(tmp_path / "pairs" / info["training"][0]["image"])
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.shape == (32, 32, 1)
    assert lo - 1e-3 <= data.min() and data.max() <= hi + 1e-3 and data.max() > data.min()
    np.testing.assert_allclose(img.header.get_zooms()[:2], read_synth(run)["spacing"][:2])
    images, _, _, cfg = sample_pairs(run, 4, seed=0)
    vmin, vmax = display_window(images, cfg)  # samples.png shows MRIs in their own range, not a CT window
    assert lo - 1e-3 <= vmin < vmax <= hi + 1e-3  # the CT window (-175, 250) lies outside [lo, hi]
    assert vmin <= np.median(images) <= vmax


def test_label2image_body_classes_are_inputs_not_written_labels(phantom_dir, vae_run, tmp_path):
    """``body_classes``: the unlabelled body as intensity classes after the organ classes, extra generator inputs;
    the written pairs keep the organ classes only; a VAE's maps (no body classes) are refused."""
    from medgen.data.synthseg import generation_labels
    from medgen.inference.synthesizers import load_synthesizer
    from medgen.models.registry import load_config

    sets = tiny_label2image(phantom_dir, "{1: 1, 2: 2, 3: 3, 4: 3}", "body_classes=2")
    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", sets)
    maps = load_synthesizer(run, "cpu").label_maps(6, seed=0)
    assert set(np.unique(maps.numpy())) <= set(range(6)) and {4, 5} <= set(np.unique(maps.numpy()))
    _, labels, _, _ = sample_pairs(run, 6, seed=0)
    np.testing.assert_array_equal(labels, np.where(maps.numpy() < 4, maps.numpy(), 0))  # organs kept, body dropped
    image = np.zeros((6, 6, 1), np.float32)
    image[1:5, 1:5] = 50.0
    image[1:3, 1:5] = 10.0  # the body's two intensities, one organ voxel inside
    organs = np.zeros((6, 6, 1), np.int64)
    organs[4, 4] = 1
    gen = generation_labels(image, organs, 2, first=4)
    assert gen[0, 0, 0] == 0 and gen[4, 4, 0] == 1 and gen[1, 1, 0] == 4 and gen[3, 3, 0] == 5  # dark 4, bright 5
    with pytest.raises(MedgenError, match="body_classes.*needs labels: null"):
        load_config(ROOT / "configs" / "label2image_2d.yaml", sets + [f"labels={vae_run}"])


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
    assert report["temperature"] == 1.0  # the latents it sampled with
    c1 = report["class_1"]
    assert c1["plausible_fraction"] <= c1["single_component_fraction"]  # a plausible sample is one component
    assert c1["real_single_component_fraction"] > 0.5  # real slices go through the liver
    assert c1["size_real_mean"] > 0 and report["size_unit"] == "cm2"
    organs = report["organs"]  # every organ at once: never more plausible than class 1 alone
    assert organs["classes"] == [1] and 0 <= organs["plausible_fraction"] <= c1["plausible_fraction"]
    assert organs["overlap_fraction"] == 0.0  # one label channel cannot overlap itself
    assert 0.0 < organs["real_plausible_fraction"] <= 1.0  # real slices by the same rule (all through the liver)
    assert (out / "samples.png").stat().st_size > 1000


def test_keep_largest_leaves_each_class_one_component_in_the_maps_only(vae_run, segmenter_run, tmp_path, capsys):
    import shutil

    import yaml
    from scipy import ndimage

    run = shutil.copytree(vae_run, tmp_path / "clean")  # the same weights, sampled with keep_largest
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["keep_largest"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    raw_image, raw, _, _ = sample_pairs(vae_run, 16, seed=3)
    image, clean, _, _ = sample_pairs(run, 16, seed=3)
    components = [ndimage.label(m == 1)[1] for m in raw]  # the 4-iteration VAE's maps are fragmented
    assert max(components) > 1
    assert [ndimage.label(m == 1)[1] for m in clean] == [min(c, 1) for c in components]
    assert np.array_equal(image, raw_image)  # the image keeps the removed fragments
    assert np.all((clean == raw) | (clean == 0))  # only voxels of the other components changed, to background
    for m, r in zip(clean, raw):  # what stays is the largest component of the raw map
        if (r == 1).any():
            comp, _ = ndimage.label(r == 1)
            assert (m == 1).sum() == np.bincount(comp.ravel())[1:].max()
    reports = {}
    for name, r in (("raw", vae_run), ("clean", run)):
        assert main(["evaluate", "synthesis", "--run", str(r), "--features", str(segmenter_run), "--n", "12",
                     "--out", str(tmp_path / name)]) == 0
        reports[name] = json.loads((tmp_path / name / "synthesis.json").read_text())
    assert "before keep_largest" in capsys.readouterr().out
    assert reports["clean"]["keep_largest"] is True and reports["raw"]["keep_largest"] is False
    evaluated = sample_pairs(run, 12, seed=0)[1]  # the maps evaluate synthesis scored (its seed 0)
    # every map with the liver has it in one piece
    assert reports["clean"]["class_1"]["single_component_fraction"] == np.mean([(m == 1).any() for m in evaluated])
    # the network's own maps, scored in the same report: what the run without keep_largest scores
    assert reports["clean"]["organs"]["raw_plausible_fraction"] == reports["raw"]["organs"]["plausible_fraction"]
    assert "raw_plausible_fraction" not in reports["raw"]["organs"]
    removed = reports["clean"]["organs"]["removed"]  # every liver component but the largest, in the same 12 maps
    raw_evaluated = sample_pairs(vae_run, 12, seed=0)[1]
    assert removed["components"] == sum(max(ndimage.label(m == 1)[1] - 1, 0) for m in raw_evaluated) > 0
    assert removed["foreground_fraction"] == pytest.approx((raw_evaluated != evaluated).sum() / (raw_evaluated > 0).sum())
    assert "removed" not in reports["raw"]["organs"]
    # the option on the run as trained scores what the config key scores
    assert main(["evaluate", "synthesis", "--run", str(vae_run), "--features", str(segmenter_run), "--n", "12",
                 "--keep-largest", "--out", str(tmp_path / "option")]) == 0
    assert json.loads((tmp_path / "option" / "synthesis.json").read_text()) == reports["clean"]


def test_augmentation_experiment_cli(phantom_dir, tmp_path, capsys):
    ds = phantom_dir / "dataset.json"
    seg_sets = ["augment.translator=null", "data.patch_size=[32, 32]", "preprocess.spacing=null", "network.channels=[4, 8]",
                "network.num_res_units=0", "train.iterations=2", "train.checkpoint_every=2", "train.batch_size=2"]
    synth_sets = [s for s in tiny_synth(phantom_dir, "vae", 2, iterations=2) if not s.startswith("data.images")
                  and not s.startswith("data.labels")]
    args = ["evaluate", "augmentation", "--segmenter-config", str(ROOT / "configs" / "demo_segmenter_ct_liver.yaml"),
            "--synth-config", str(ROOT / "configs" / "demo_vae_2d.yaml"), "--train-images", f"{ds}#cases",
            "--test-images", f"{ds}#cases", "--k", "2", "--repeats", "1", "--synthetic", "4", "--reference",
            "--judge-dice", "0", "--out", str(tmp_path)]
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
    judged = json.loads((tmp_path / "repeat_0" / "synthetic" / "dataset.json").read_text())["judge"]  # by the real arm
    assert judged["segmenter"] == str((tmp_path / "repeat_0" / "segmenter_real").resolve()) and judged["drawn"] == 4
    assert row["judged"] == {"kept": 4, "drawn": 4} and report["judge_dice"] == 0.0
    printed = capsys.readouterr().out
    assert "gain" in printed and f"all {pool} real training cases" in printed


def test_augmentation_experiment_renders_a_label_map_synthesizer_trained_on_the_repeat(phantom_dir, tmp_path, capsys):
    from medgen.models.registry import load_config

    ds = phantom_dir / "dataset.json"
    seg_sets = ["augment.translator=null", "data.patch_size=[32, 32]", "preprocess.spacing=null", "network.channels=[4, 8]",
                "network.num_res_units=0", "train.iterations=2", "train.checkpoint_every=2", "train.batch_size=2"]
    label_sets = [s for s in tiny_synth(phantom_dir, "vae", 2, iterations=2) if not s.startswith("data.images")
                  and not s.startswith("data.labels")] + ["data.label_map={1: 1, 2: 2}"]
    synth_sets = ["data.label_map={1: 1, 2: 2}", "data.patch_size=[32, 32]", "preprocess.spacing=null",
                  "data.cache_workers=1", "generator.ngf=4", "discriminator.ndf=4", "discriminator.n_layers=2",
                  "train.iterations=2", "train.batch_size=2", "train.checkpoint_every=2"]
    out = tmp_path / "exp"
    args = ["evaluate", "augmentation", "--segmenter-config", str(ROOT / "configs" / "demo_segmenter_ct_liver.yaml"),
            "--synth-config", str(ROOT / "configs" / "label2image_2d.yaml"), "--label-config",
            str(ROOT / "configs" / "demo_vae_2d.yaml"), "--train-images", f"{ds}#cases", "--k", "1", "--repeats", "1",
            "--synthetic", "3", "--out", str(out)]
    for flag, sets in (("--set-seg", seg_sets), ("--set-synth", synth_sets), ("--set-label", label_sets)):
        for s in sets:
            args += [flag, s]
    assert main(args) == 0
    rep = out / "repeat_0"
    drawn = json.loads((rep / "train.json").read_text())["training"]
    vae = load_config(rep / "label_synthesizer" / "config.yaml")
    l2i = load_config(rep / "synthesizer" / "config.yaml")
    assert vae.task == "vae" and vae.data.images == str(rep / "train.json") and len(drawn) == 1  # the repeat's case
    assert l2i.task == "label2image" and l2i.labels == str(rep / "label_synthesizer")  # renders the VAE's maps
    maps = [np.asarray(nib.load(rep / "synthetic" / e["label"]).dataobj)[..., 0]
            for e in json.loads((rep / "synthetic" / "dataset.json").read_text())["training"]]
    np.testing.assert_array_equal(np.stack(maps), sample_pairs(rep / "label_synthesizer", 3, seed=0)[1])
    assert json.loads((out / "augmentation.json").read_text())["label_config"].endswith("demo_vae_2d.yaml")
    capsys.readouterr()
    bad = args[:args.index("--synth-config") + 1] + ["synthseg"] + args[args.index("--synth-config") + 2:]
    at = bad.index("--out") + 1
    assert main(bad[:at] + [str(tmp_path / "bad")] + bad[at + 1:]) == 2 and not (tmp_path / "bad").exists()
    assert "needs a label2image synthesizer config" in capsys.readouterr().err
    swapped = args[:args.index("--set-label")]  # a segmenter config as the label-map synthesizer
    swapped[swapped.index("--label-config") + 1] = str(ROOT / "configs" / "demo_segmenter_ct_liver.yaml")
    assert main(swapped[:at] + [str(tmp_path / "bad2")] + swapped[at + 1:]) == 2 and not (tmp_path / "bad2").exists()
    assert "demo_segmenter_ct_liver.yaml: the label-map synthesizer must be a VAE or GAN config" in capsys.readouterr().err


def test_augmentation_experiment_with_synthseg_on_the_fly_tests_on_the_cases_not_drawn(phantom_dir, tmp_path, capsys):
    from medgen.models.registry import load_config

    ds = phantom_dir / "dataset.json"
    seg_sets = ["augment.translator=null", "data.patch_size=[32, 32]", "preprocess.spacing=null", "network.channels=[4, 8]",
                "network.num_res_units=0", "train.iterations=2", "train.checkpoint_every=2", "train.batch_size=2"]
    args = ["evaluate", "augmentation", "--segmenter-config", str(ROOT / "configs" / "demo_segmenter_ct_liver.yaml"),
            "--synth-config", "synthseg", "--train-images", f"{ds}#cases", "--k", "1", "--repeats", "1",
            "--ratio", "0.7", "--set-synth", "augment.deform=0.1", "--out", str(tmp_path / "exp")]
    for s in seg_sets:
        args += ["--set-seg", s]
    assert main(args) == 0
    report = json.loads((tmp_path / "exp" / "augmentation.json").read_text())
    row = report["rows"][0]
    drawn = {Path(e["image"]).name for e in json.loads((tmp_path / "exp" / "repeat_0" / "train.json").read_text())["training"]}
    pool = {Path(e["ct"]).name for e in json.loads(ds.read_text())["cases"]}  # phantom entries: mri, ct, label
    assert len(drawn) == 1 and set(row["test_cases"]) == pool - drawn  # scored on every case it did not draw
    assert report["tested_on"] == "the pool's cases not drawn" and report["synthetic_pairs"] == "on the fly"
    arm = load_config(tmp_path / "exp" / "repeat_0" / "segmenter_real_synthetic" / "config.yaml")
    real = load_config(tmp_path / "exp" / "repeat_0" / "segmenter_real" / "config.yaml")
    assert (arm.augment.synthseg.prob, arm.augment.deform) == (0.7, 0.1)
    assert (real.augment.synthseg.prob, real.augment.deform) == (0.0, 0.0)  # the baseline arm as configured
    assert report["gain_mean"] == pytest.approx(row["dice_real_synthetic"] - row["dice_real"])
    capsys.readouterr()
    assert main(args[:-1] + [str(tmp_path / "ref"), "--reference"]) == 2  # all cases to train on, none to test
    assert "needs a held-out set" in capsys.readouterr().err
    judged = [str(tmp_path / "judged") if a == str(tmp_path / "exp") else a for a in args] + ["--judge-dice", "0.7"]
    assert main(judged) == 2  # synthseg writes no pairs to judge
    assert "--judge-dice takes a Dice in [0, 1] and written pairs" in capsys.readouterr().err
    assert not (tmp_path / "judged").exists()


def test_label2image_class_means_render_one_volume_phase(phantom_dir, tmp_path):
    """``class_means``: the generator gets each class's mean intensity as one more input, and in sampling every
    map is rendered in the means of one training volume; a generator that ignores the maps shows it directly."""
    from medgen.inference.synthesizers import load_synthesizer, render_maps
    from medgen.models.label2image import CLASS_MEANS_FILE, class_mean_image, n_inputs, one_hot, volume_class_means
    from medgen.models.registry import load_config
    from medgen.data.volumes import config_volumes

    sets = tiny_label2image(phantom_dir, "{1: 1, 2: 2}", "class_means=true")
    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", sets)
    cfg = load_config(run / "config.yaml")
    assert n_inputs(cfg) == 4  # background, 2 classes, the class-mean image
    volumes = config_volumes(cfg)
    table = volume_class_means(cfg, volumes)
    v = volumes[0]
    liver = v[Keys.IMAGE][v[Keys.LABEL] == 1]
    assert table.shape == (len(volumes), 3) and abs(float(table[0, 1]) - float(liver.mean())) < 1e-5
    stored = torch.tensor(json.loads((run / CLASS_MEANS_FILE).read_text())["class_means"])
    assert torch.equal(stored, table)  # the table the run stored when its training ended

    class LastChannel(torch.nn.Module):  # "renders" the class-mean input as it is
        def forward(self, cond):
            return cond[:, -1:]

    synth = load_synthesizer(run, "cpu")
    synth.generator = LastChannel()
    drawn = synth.draw(5, seed=0)
    images, labels = drawn.images, drawn.labels
    assert images.shape == (5, 1, 32, 32) and labels.shape == (5, 32, 32)
    for image, label in zip(images[:, 0], labels):  # each image: one volume's means on its own map
        assert any(torch.allclose(image[label == 1], row[1].expand(int((label == 1).sum())))
                   and torch.allclose(image[label == 0], row[0].expand(int((label == 0).sum()))) for row in table)
    maps = torch.tensor([[[0, 1], [2, 2]]])
    cond = one_hot(maps[:, None], 3)
    means = torch.tensor([[-1.0, 0.25, 0.5]])
    np.testing.assert_allclose(render_maps(LastChannel(), maps, cfg, torch.device("cpu"), means)[0, 0].numpy(),
                               class_mean_image(cond, means=means)[0, 0].numpy())
    assert main(["synth", str(run), str(tmp_path / "pairs"), "--n", "3"]) == 0


def test_label2image_linear_output_is_clamped_when_rendering(phantom_dir, tmp_path):
    """``generator.output: linear``: no tanh (whose logits grow without bound on targets at the window's top),
    renders clamped to the window; linear is refused for the ResNet generator."""
    from medgen.models.registry import load_config

    sets = tiny_label2image(phantom_dir, "{1: 1, 2: 2}", "generator.output=linear")
    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", sets)
    from medgen.inference.synthesizers import load_synthesizer, render

    assert load_synthesizer(run, "cpu").generator.tanh is False

    class Overshoot(torch.nn.Module):
        def forward(self, cond):
            return torch.full_like(cond[:, :1], 3.0) - 6.0 * cond[:, :1]

    cond = torch.eye(2)[torch.tensor([[0, 1], [1, 0]])].permute(2, 0, 1)[None]  # one-hot (1, 2, 2, 2)
    rendered = render(Overshoot(), cond)  # -3 on background, +3 elsewhere: clamped to the range
    assert rendered.shape == (1, 1, 2, 2) and sorted(rendered.flatten().tolist()) == [-1.0, -1.0, 1.0, 1.0]
    images, _, _, cfg = sample_pairs(run, 3, seed=0)
    lo, hi = cfg.preprocess.ct_window
    assert images.min() >= lo - 1e-3 and images.max() <= hi + 1e-3
    with pytest.raises(MedgenError, match="output.*linear with name: unet"):
        load_config(ROOT / "configs" / "label2image_2d.yaml", sets + ["generator.name=resnet"])


def test_judged_pairs_keep_only_what_the_segmenter_agrees_with(phantom_dir, tmp_path, monkeypatch, capsys):
    """``medgen synth --judge``: pairs drawn ``n`` at a time (seeds 0, 1, ...) and kept while the judge's mask of the
    image agrees with the pair's label at Dice >= ``--min-dice``; each kept pair's Dice and the draw count recorded."""
    from medgen.inference import synthesize
    from medgen.models.segmenter import PostprocessConfig

    run = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", tiny_label2image(phantom_dir, "{1: 1, 2: 2}"))

    class Everything:  # "segments" the whole slice: a pair's Dice is 2 |liver| / (|liver| + |slice|), 0 without liver
        postprocess = PostprocessConfig()

        def predict(self, array, ref):
            return np.ones(array.shape, np.float32)

    monkeypatch.setattr(synthesize, "load_segmenter", lambda spec, device: Everything())
    drawn = [lab for r in range(8) for lab in sample_pairs(run, 3, seed=r)[1]]
    by_hand = [2 * (lab == 1).sum() / ((lab == 1).sum() + lab.size) for lab in drawn]
    threshold = float(np.quantile(by_hand, 0.6))
    passing = [i for i, d in enumerate(by_hand) if d >= threshold][:3]
    assert len(passing) == 3 and passing[-1] >= 3  # some pairs fail, so a second draw is needed
    out = tmp_path / "judged"
    assert main(["synth", str(run), str(out), "--n", "3", "--judge", "any.pt", "--judge-class", "1",
                 "--min-dice", str(threshold)]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["judge"]["drawn"] == 3 * (passing[-1] // 3 + 1) and info["judge"]["kept"] == 3
    assert [e["judge_dice"] for e in info["training"]] == pytest.approx([by_hand[i] for i in passing], abs=1e-4)
    for entry, i in zip(info["training"], passing):
        np.testing.assert_array_equal(np.asarray(nib.load(out / entry["label"]).dataobj)[..., 0], drawn[i])
    assert "3 of" in capsys.readouterr().out
    assert main(["synth", str(run), str(tmp_path / "none"), "--n", "2", "--judge", "any.pt", "--judge-class", "2",
                 "--min-dice", "1.0"]) == 2 and not (tmp_path / "none").exists()  # no slice is all spleen
    assert "agrees with none of the 16 pairs drawn at Dice >= 1.0" in capsys.readouterr().err
    assert main(["synth", str(run), str(tmp_path / "c"), "--n", "2", "--judge", "any.pt"]) == 2
    assert "any.pt: a segmenter that is not a medgen run needs the synthesizer's class" in capsys.readouterr().err


def test_judged_pairs_read_the_labels_in_a_segmenter_runs_classes(phantom_dir, segmenter_run, tmp_path, capsys):
    """A medgen segmenter run judges the synthesizer's class of its own structure (through both label maps); a
    synthesizer without that structure and a Dice out of [0, 1] are one-line errors with nothing written."""
    l2i = ROOT / "configs" / "label2image_2d.yaml"
    run = train(l2i, tmp_path / "l2i", tiny_label2image(phantom_dir, "{2: 1, 1: 2}"))  # liver is class 2 here
    out = tmp_path / "judged"
    assert main(["synth", str(run), str(out), "--n", "2", "--judge", str(segmenter_run), "--min-dice", "0"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["judge"] == {"segmenter": str(segmenter_run.resolve()), "min_dice": 0.0, "drawn": 2, "kept": 2}
    from medgen.inference.segment import RunSegmenter
    from medgen.inference.synthesize import judge_agreement

    from medgen.inference.synthesize import _judged_classes
    from medgen.models.run import load_run

    images, labels, spacing, _ = sample_pairs(run, 2, seed=0)
    judge = RunSegmenter(segmenter_run, "cpu")
    assert _judged_classes(judge, load_run(run, "synthesizer"), segmenter_run, None) == {2: 1}  # its liver class
    expected = judge_agreement(judge, images, labels, spacing, {2: 1})
    assert [e["judge_dice"] for e in info["training"]] == pytest.approx(expected.tolist(), abs=1e-4)
    spleen = train(l2i, tmp_path / "spleen", tiny_label2image(phantom_dir, "{2: 1}"))
    capsys.readouterr()
    for extra, message in (([str(spleen), str(tmp_path / "a"), "--judge", str(segmenter_run)], "none of its classes"),
                           ([str(run), str(tmp_path / "b"), "--judge", str(segmenter_run), "--min-dice", "1.5"],
                            "the minimum Dice must be in [0, 1], not 1.5")):
        assert main(["synth", *extra, "--n", "2"]) == 2 and not (tmp_path / extra[1]).exists()
        err = capsys.readouterr().err
        assert err.startswith("medgen: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_run_directory_samples_without_its_training_data(phantom_dir, tmp_path, capsys):
    """A VAE's mixture and posterior sampling and a label2image run's class means are fitted when training ends and
    stored in the run: with the training data deleted, both sample the same pairs as before."""
    import shutil

    data = Path(shutil.copytree(phantom_dir, tmp_path / "data"))
    copied = [s.replace(str(phantom_dir), str(data)) for s in tiny_synth(phantom_dir, "vae", 2)]
    vae = train(ROOT / "configs" / "vae_2d.yaml", tmp_path / "vae", copied + ["model.mixture_components=3"])
    l2i = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i",
                [s.replace(str(phantom_dir), str(data)) for s in tiny_label2image(phantom_dir, "{1: 1, 2: 2}")]
                + ["class_means=true", f"labels={vae}"])
    mixture = ["--sampling", "mixture", "--temperature", "0.8"]
    before = {name: sample_pairs(run, 4, seed=2, options=options)[:2] for name, run, options in (
        ("mixture", vae, SamplingOptions(sampling="mixture", temperature=0.8)),
        ("posterior", vae, SamplingOptions(sampling="posterior")), ("l2i", l2i, None))}
    shutil.rmtree(data)
    for name, run, flags in (("mixture", vae, mixture), ("posterior", vae, ["--sampling", "posterior"]),
                             ("l2i", l2i, [])):
        out = tmp_path / f"pairs_{name}"
        assert main(["synth", str(run), str(out), "--n", "4", "--seed", "2", *flags]) == 0
        info = json.loads((out / "dataset.json").read_text())
        for entry, image, label in zip(info["training"], *before[name]):
            np.testing.assert_array_equal(np.asarray(nib.load(out / entry["image"]).dataobj)[..., 0], hu_int16(image))
            np.testing.assert_array_equal(np.asarray(nib.load(out / entry["label"]).dataobj)[..., 0], label)
    assert info["sampling"]["label_maps"] == str(vae)
    # the training label maps are the training data itself: rendering them needs it, and says so in one line
    capsys.readouterr()
    assert main(["synth", str(l2i), str(tmp_path / "gone"), "--n", "2", "--labels", "training"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgen: error: ") and len(err.strip().splitlines()) == 1 and str(data) in err


def test_a_run_without_its_stored_fit_says_how_to_write_it(vae_run, tmp_path, capsys):
    """A VAE run trained before ``latents.pt`` samples its prior as before; posterior or mixture sampling is one
    line naming the file and the fix, ``medgen train --resume RUN``, which writes the same fit from the training data."""
    import shutil

    from medgen.models.synth import LATENTS_FILE, read_latents

    old = Path(shutil.copytree(vae_run, tmp_path / "old"))
    (old / LATENTS_FILE).unlink()
    assert main(["synth", str(old), str(tmp_path / "prior"), "--n", "2"]) == 0
    assert main(["synth", str(old), str(tmp_path / "mix"), "--n", "2", "--sampling", "mixture"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"medgen: error: {old / LATENTS_FILE}: missing: the encodings a VAE's posterior and mixture "
                           f"sampling need, written when training ends (a run trained before them: `medgen train "
                           f"--resume {old}` writes them from its training data)")
    assert main(["train", "--resume", str(old)]) == 0
    fitted, original = read_latents(old), read_latents(vae_run)
    assert set(fitted) == set(original) and all(torch.allclose(fitted[k], original[k], atol=1e-5) for k in original)
    assert main(["synth", str(old), str(tmp_path / "mix"), "--n", "2", "--sampling", "mixture"]) == 0
    (old / LATENTS_FILE).write_bytes(b"not a tensor file")
    assert main(["synth", str(old), str(tmp_path / "bad"), "--n", "2", "--sampling", "posterior"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medgen: error: {old / LATENTS_FILE}: unreadable (") and len(err.strip().splitlines()) == 1


def test_synth_options_override_the_runs_stored_defaults(phantom_dir, vae_run, tmp_path, capsys):
    """``medgen synth --temperature/--sampling/--keep-largest/--labels``: each defaults to the run's config key and
    overrides it; dataset.json records what was used; options a run cannot take are one-line errors."""
    from scipy import ndimage

    def written(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
        info = json.loads((out / "dataset.json").read_text())
        load = lambda key: np.stack([np.asarray(nib.load(out / e[key]).dataobj)[..., 0] for e in info["training"]])  # noqa: E731
        return load("image"), load("label"), info

    def synth(name: str, *flags: str, run: Path = vae_run) -> tuple[np.ndarray, np.ndarray, dict]:
        assert main(["synth", str(run), str(tmp_path / name), "--n", "16", "--seed", "3", *flags]) == 0
        return written(tmp_path / name)

    default, labels, info = synth("default")
    assert info["sampling"] == {"label_maps": "the synthesizer's own", "temperature": 1.0, "keep_largest": False,
                                "sampling": "prior"}  # the run's config keys
    same, _, _ = synth("t1", "--temperature", "1.0")  # the stored default, given
    np.testing.assert_array_equal(same, default)
    cooler, _, info = synth("t03", "--temperature", "0.3")
    assert info["sampling"]["temperature"] == 0.3 and not np.array_equal(cooler, default)
    frozen, _, _ = synth("t0", "--temperature", "0")  # every latent at the prior's mean: one pair, whatever the seed
    assert all(np.array_equal(f, frozen[0]) for f in frozen)
    assert max(ndimage.label(m == 1)[1] for m in labels) > 1  # the 4-iteration VAE's maps are fragmented
    kept_image, kept, info = synth("largest", "--keep-largest")
    assert info["sampling"]["keep_largest"] is True and np.array_equal(kept_image, default)  # in the maps only
    assert [ndimage.label(m == 1)[1] for m in kept] == [min(ndimage.label(m == 1)[1], 1) for m in labels]
    assert np.all((kept == labels) | (kept == 0))
    _, posterior_labels, info = synth("posterior", "--sampling", "posterior")
    assert info["sampling"]["sampling"] == "posterior" and not np.array_equal(posterior_labels, labels)
    # a label2image run renders the maps of the run --labels names, which the VAE options sample
    l2i = train(ROOT / "configs" / "label2image_2d.yaml", tmp_path / "l2i", tiny_label2image(phantom_dir, "{1: 1}"))
    _, rendered, info = synth("l2i", "--labels", str(vae_run), "--keep-largest", run=l2i)
    np.testing.assert_array_equal(rendered, kept)
    assert info["sampling"] == {"label_maps": str(vae_run), "temperature": 1.0, "keep_largest": True,
                                "sampling": "prior"}
    capsys.readouterr()
    gan = train(ROOT / "configs" / "gan_2d.yaml", tmp_path / "gan", tiny_synth(phantom_dir, "gan", 2))
    for run, flags, message in (
            (gan, ["--sampling", "mixture"], f"{gan}: a gan run samples its prior only"),
            (vae_run, ["--labels", "training"], f"{vae_run}: --labels: a vae run draws its own label maps"),
            (l2i, ["--temperature", "0.5"], f"{l2i}: --temperature: this label2image run renders its training label"),
            (l2i, ["--labels", str(l2i)], f"{l2i}: labels: must be a VAE or GAN run, not a label2image run"),
            (vae_run, ["--temperature", "-1"], "--temperature: must be a number >= 0, not -1"),
            (vae_run, ["--sampling", "mean"], "--sampling: invalid choice: 'mean'")):
        args = ["synth", str(run), str(tmp_path / "bad"), "--n", "2", *flags]
        if message.startswith("--"):  # refused by the parser
            with pytest.raises(SystemExit, match="2"):
                main(args)
        else:
            assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("medgen: error: ") and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad" / "dataset.json").exists()


def test_one_synthesizer_backend_per_task_and_no_task_branches():
    """Every synthesizer task has its backend in ``SYNTHESIZERS``; sampling and evaluation ask the backend, never
    which task a run is."""
    import re

    from medgen.inference.synthesizers import SYNTHESIZERS, Synthesizer
    from medgen.models.registry import tasks_of

    assert sorted(SYNTHESIZERS) == sorted(tasks_of("synthesizer"))
    for backend in SYNTHESIZERS.values():
        assert all(callable(getattr(backend, name)) for name in ("draw", "sample", "settings"))
        assert isinstance(backend.evaluation_seed_offset, int) and "draw" in Synthesizer.__dict__
    branches = [f"{path.name}:{i}" for folder in ("inference", "evaluation") for path in (ROOT / "medgen" / folder).glob("*.py")
                for i, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"\.task\s*(==|!=|(not )?in\s*[(\[{])", line)]
    assert branches == []
