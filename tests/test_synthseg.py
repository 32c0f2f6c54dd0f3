"""The label -> image generative model (SynthSeg-style) and the segmenter trained on it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medgen.data.augment import RandGINd, intensity_augmentation
from medgen.data.synthseg import (BODY_FIRST, RandLabelToImage, RandLabelToImaged, body_mask, generation_labels,
                                  kmeans_1d)
from medgen.data.volumes import labelled_volumes
from medgen.inference.segment import RunSegmenter
from medgen.io import ref_from_affine
from medgen.keys import Keys
from medgen.models.registry import load_config
from medgen.models.run import latest_checkpoint
from tests.conftest import ROOT, tiny_segmenter


def _body(shape=(40, 40, 4)):
    """A clipped-CT-like body: outside and fat read the same lowest value (as in a soft-tissue-window CT),
    a skin ring, muscle, an organ labelled 6 and bright bone."""
    image = np.full(shape, -125.0, np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - 20, xx - 20)
    image[r < 17] = 40.0  # skin / muscle ring
    image[r < 15] = -125.0  # subcutaneous fat: the same value as the air outside
    image[r < 12] = 50.0  # muscle and viscera
    image[(np.abs(yy - 20) < 2) & (np.abs(xx - 20) < 2)] = 275.0  # bone
    labels = np.zeros(shape, np.int16)
    labels[(yy > 22) & (yy < 30) & (xx > 14) & (xx < 26)] = 6
    image[labels == 6] = 120.0
    return image, labels


def test_body_mask_keeps_fat_inside_the_skin():
    image, _ = _body()
    body = body_mask(image)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    assert body[r < 14.5].all()  # the fat ring, which reads like air, is inside the body
    assert not body[r > 17.5].any()


def test_generation_labels_keep_structures_and_split_the_rest():
    image, labels = _body()
    gen = generation_labels(image, labels, classes=3)
    assert np.array_equal(gen[labels == 6], labels[labels == 6])
    body = body_mask(image)
    assert (gen[~body] == 0).all()
    free = body & (labels == 0)
    assert set(np.unique(gen[free]).tolist()) <= {BODY_FIRST, BODY_FIRST + 1, BODY_FIRST + 2}
    # bone (the brightest unlabelled tissue) and fat (the darkest) land in different classes
    assert gen[20, 20, 0] == BODY_FIRST + 2 and gen[20, 6, 0] == BODY_FIRST
    # a label map that reaches BODY_FIRST: the body classes come after its largest label
    high = np.where(labels == 6, BODY_FIRST + 5, 0)
    assert generation_labels(image, high, classes=3)[20, 6, 0] == BODY_FIRST + 6
    assert kmeans_1d(np.array([1.0, 1.2, 5.0, 5.2, 9.0]), 3).round(1).tolist() == [1.1, 5.1, 9.0]


@pytest.mark.parametrize("dims", [2, 3])
def test_painter_is_seeded_and_paints_each_structure(dims):
    shape = (1,) + (24,) * dims
    gen = torch.zeros(shape, dtype=torch.int16)
    gen[(0, slice(4, 12))] = 3
    gen[(0, slice(12, 20))] = 7
    painter = RandLabelToImage(max_std=0.0, texture=0.0, max_blur=0.0, bias=0.0, max_downsample=1.0, max_noise=0.0)
    a = painter.set_random_state(5)(gen)
    b = painter.set_random_state(5)(gen)
    c = painter.set_random_state(6)(gen)
    assert a.shape == shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    for value in (0, 3, 7):  # flat structures with distinct intensities
        region = a[gen == value]
        assert float(region.max() - region.min()) < 1e-5
    assert len({round(float(a[gen == v][0]), 4) for v in (0, 3, 7)}) == 3


@pytest.mark.parametrize("dims", [2, 3])
def test_prior_contrast_shifts_each_structure_of_the_real_image(dims):
    shape = (1,) + (24,) * dims
    gen = torch.zeros(shape, dtype=torch.int16)
    gen[(0, slice(5, 22))] = 9  # body
    gen[(0, slice(6, 12))] = 6  # organ
    image = torch.full(shape, -0.8)
    image[gen == 9] = -0.2
    image[gen == 6] = 0.3
    vessel = (0, 8) + (8,) * (dims - 1)
    image[vessel] = 0.9  # texture inside the organ
    painter = RandLabelToImage(max_blur=0.0, bias=0.0, max_downsample=1.0, max_noise=0.0, contrast="prior", shift=0.25)
    a = painter.set_random_state(2)(gen, image)
    assert a.shape == shape and torch.equal(a, painter.set_random_state(2)(gen, image))
    delta = a - image  # in [-1, 1] units: twice the [0, 1] offset
    inside = (0, 17) + (4,) * (dims - 1), (0, 9) + (12,) * (dims - 1)
    assert float(delta[(0, 0) + (0,) * (dims - 1)]) == pytest.approx(0.0, abs=1e-4)  # outside the body: kept
    for where in inside:  # deep inside a structure: a constant offset within +-2 * shift
        assert 0.0 < abs(float(delta[where])) <= 0.5 + 1e-6
    assert float(delta[vessel]) == pytest.approx(float(delta[inside[1]]), abs=1e-3)  # the vessel moves with its organ
    assert float(delta[inside[0]]) != pytest.approx(float(delta[inside[1]]), abs=1e-3)
    with pytest.raises(ValueError, match="real image"):
        painter(gen)
    with pytest.raises(ValueError, match="contrast must be one of"):
        RandLabelToImage(contrast="flat")


def test_dict_painter_uses_the_real_texture_and_drops_generation_labels():
    gen = torch.zeros(1, 32, 32, dtype=torch.int16)
    gen[0, 8:24, 8:24] = 6
    image = torch.zeros(1, 32, 32)
    image[0, 14:18, 14:18] = 1.0  # a vessel inside the organ: kept as texture
    t = RandLabelToImaged(Keys.IMAGE, Keys.GEN, prob=1.0, max_std=0.0, texture=1.5, max_blur=0.0, bias=0.0,
                          max_downsample=1.0, max_noise=0.0)
    out = t.set_random_state(3)({Keys.IMAGE: image, Keys.GEN: gen, Keys.LABEL: gen > 0})
    assert Keys.GEN not in out and Keys.LABEL in out
    organ = out[Keys.IMAGE][0, 9:23, 9:23]
    assert float(organ.std()) > 0.01  # flat without texture; the vessel shows
    off = RandLabelToImaged(Keys.IMAGE, Keys.GEN, prob=0.0)
    kept = off.set_random_state(3)({Keys.IMAGE: image, Keys.GEN: gen})
    assert torch.equal(kept[Keys.IMAGE], image) and Keys.GEN not in kept


def test_augmentation_pipeline_with_synthseg_and_rotation_is_deterministic():
    gen = torch.zeros(1, 32, 32, dtype=torch.int16)
    gen[0, 8:24, 10:20] = 6
    sample = {Keys.IMAGE: torch.rand(1, 32, 32) * 2 - 1, Keys.LABEL: (gen == 6).to(torch.uint8), Keys.GEN: gen}
    t = intensity_augmentation(False, None, 2, {"prob": 1.0})
    a = t.set_random_state(1)(dict(sample))
    b = t.set_random_state(1)(dict(sample))
    assert sorted(a) == sorted([Keys.IMAGE, Keys.LABEL]) and torch.equal(a[Keys.IMAGE], b[Keys.IMAGE])
    assert set(torch.unique(a[Keys.LABEL]).tolist()) <= {0, 1}
    assert not torch.equal(a[Keys.IMAGE], sample[Keys.IMAGE])


@pytest.mark.parametrize("dims", [2, 3])
def test_segmenter_trains_on_synthetic_contrast(phantom_dir, tmp_path, dims):
    from medgen.engines.train import train

    extra = ["augment.synthseg.prob=1.0", "augment.spatial=true", "augment.organ_intensity=null",
             "network.ema_decay=0.5", "augment.deform=0.1"]
    run = train(ROOT / "configs" / ("segmenter_ct_liver.yaml"), tmp_path / "seg",
                tiny_segmenter(phantom_dir, dims, iterations=2) + extra)
    ckpt = torch.load(latest_checkpoint(run), weights_only=True)
    cfg = load_config(run / "config.yaml")
    assert cfg.augment.synthseg.prob == 1.0 and cfg.augment.spatial and cfg.augment.deform == 0.1
    # the weight average after two steps: ema = 0.5 * (0.5 * w0 + 0.5 * w1) + 0.5 * w2 differs from the last weights,
    # and inference loads the average, not the last weights
    name = next(k for k in ckpt["net"] if k.endswith("weight"))
    assert not torch.equal(ckpt["net_ema"]["module." + name], ckpt["net"][name])
    seg = RunSegmenter(run, "cpu")
    assert torch.equal(dict(seg.net.named_parameters())[name].detach(), ckpt["net_ema"]["module." + name])


def test_labelled_volumes_cache_generation_labels(phantom_dir):
    cfg = load_config(ROOT / "configs" / "segmenter_ct_liver.yaml",
                      [f"data.images={phantom_dir / 'ct'}", f"data.labels={phantom_dir / 'labels'}",
                       "preprocess.spacing=null", "data.cache_workers=0"])
    vols = labelled_volumes([(phantom_dir / "ct" / "case_000.nii.gz", phantom_dir / "labels" / "case_000.nii.gz")],
                            cfg.data, cfg.preprocess, gen_classes=2)
    v = vols[0]
    assert v[Keys.GEN].shape == v[Keys.LABEL].shape
    raw = v[Keys.GEN][0]
    assert torch.equal(v[Keys.LABEL][0] > 0, raw == 1)  # label_map {1: 1}: the liver keeps its value in GEN
    assert int(raw.max()) == BODY_FIRST + 1  # phantom structures 1..10 kept, the 2 intensity classes from BODY_FIRST


@pytest.mark.parametrize("dims", [2, 3])
def test_gin_keeps_shape_changes_contrast_and_is_seeded(dims):
    image = -torch.ones((1,) + (20,) * dims)
    image[(0, slice(5, 15)) + (slice(5, 15),) * (dims - 1)] = 0.5
    t = RandGINd(Keys.IMAGE, prob=1.0)
    outs = [t.set_random_state(s)({Keys.IMAGE: image})[Keys.IMAGE] for s in (1, 1, 2)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    for out in outs:
        assert out.shape == image.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    inside = image > 0
    # the square stays a region of its own: its mean differs from the background's
    assert all(abs(float(o[inside].mean() - o[~inside].mean())) > 0.05 for o in outs)


def test_inside_body_keeps_the_liver_out_of_the_air(segmenter_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(segmenter_run, run)
    plain = RunSegmenter(run, "cpu")
    cfg = (run / "config.yaml").read_text()
    assert "inside_body: false" in cfg
    (run / "config.yaml").write_text(cfg.replace("inside_body: false", "inside_body: true"))
    masked = RunSegmenter(run, "cpu")
    image, _ = _body((40, 40, 6))
    ref = ref_from_affine(np.diag([6.0, 6.0, 6.0, 1.0]), image.shape)
    p0, p1 = plain.predict(image, ref), masked.predict(image, ref)
    body = body_mask(image)
    assert not body.all() and body.any() and p0[~body].max() > 0.01  # the plain run does predict in the air
    assert np.array_equal(p1[~body], np.zeros((~body).sum(), np.float32))
    assert np.allclose(p1[body], p0[body])


@pytest.mark.parametrize("dims", [2, 3])
def test_smooth_deformation_moves_image_and_labels_together(dims):
    size = [32] * dims
    label = torch.zeros([1, *size])
    label[(0, *[slice(8, 24)] * dims)] = 1
    image = label * 2 - 1
    t = intensity_augmentation(False, None, dims, None, 0.0, deform=0.15, patch_size=size)
    moved = []
    for seed in (0, 0, 1, 2, 3):
        t.set_random_state(seed)
        out = t({Keys.IMAGE: image.clone(), Keys.LABEL: label.clone()})
        assert set(torch.unique(out[Keys.LABEL]).tolist()) <= {0.0, 1.0}  # labels stay labels (nearest)
        agree = (out[Keys.IMAGE] > 0) == (out[Keys.LABEL] > 0)
        assert float(agree.float().mean()) > 0.98  # the image moves with its labels (one field for both)
        moved.append(out[Keys.LABEL])
    assert torch.equal(moved[0], moved[1])  # seeded
    assert any(not torch.equal(moved[0], m) for m in moved[2:])
    plain = intensity_augmentation(False, None, dims, None, 0.0, deform=0.0, patch_size=size)
    assert not any("Deform" in type(x).__name__ for x in plain.transforms)
