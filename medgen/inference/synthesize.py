"""Sampling a trained synthesizer run: image + label pairs in HU (CT) or MRI units. A VAE or GAN samples both
from its latent space; a ``label2image`` run renders label maps (a VAE/GAN run's, or its training ones).

>>> write_synthetic("runs/vae", "synthetic", n=50, seed=0)  # OUT/images, OUT/labels, OUT/dataset.json  # doctest: +SKIP

With a judge segmenter, only the pairs whose label it agrees with are written (FreeMask's filtering of synthetic
pairs by a model trained on real ones, Yang et al. 2023, per pair): a renderer's mistake (an organ painted as
another tissue) makes a pair whose label contradicts its image, and such pairs teach the segmenter the mistake.

>>> write_synthetic("runs/l2i", "synthetic", n=200, judge="runs/seg", min_dice=0.7)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.patches import labelled_patches
from medgen.data.volumes import class_translation, config_volumes, remap_labels
from medgen.errors import MedgenError
from medgen.inference.segment import RunSegmenter, load_segmenter, postprocess, thresholded
from medgen.io import atomic_write, ref_from_affine, save_hu, save_like
from medgen.metrics import segmentation_metrics
from medgen.keys import Keys, Modality
from medgen.models.label2image import build_nets as build_label2image
from medgen.models.label2image import (class_mean_image, n_label_channels, one_hot, organ_labels,
                                      volume_class_means, with_body_classes)
from medgen.models.run import EMA_SUFFIX, load_averages, load_run, load_weights
from medgen.models.synth import build_model, joint_tensor, n_foreground, read_synth, split_joint
from medgen.runtime import resolve_device
from medgen.transforms import keep_largest_components, unit_to_ct, unit_to_mri


def load_synthesizer(run_dir: str | Path, device: torch.device):
    """A trained synthesizer run -> (config, sampling model on ``device``, synth.json dict)."""
    run = Path(run_dir)
    cfg = load_run(run, "synthesizer")
    if cfg.task == "label2image":
        model = build_label2image(cfg)["G"].to(device)
        load_weights(run, ["G"], [model])
        return cfg, model.eval(), read_synth(run)
    model = build_model(cfg).to(device)
    if cfg.task == "gan":
        _, (model,) = load_averages(run, ["model" + EMA_SUFFIX], [model])
    else:
        load_weights(run, ["model"], [model])
    return cfg, model.eval(), read_synth(run)


@torch.inference_mode()
def sample_pairs(run_dir: str | Path, n: int, seed: int = 0, device: str = "auto", loaded: tuple | None = None):
    """``n`` synthetic pairs: images in HU (CT) or MRI units, integer label maps, the voxel spacing, the config
    (``loaded``: the run's :func:`load_synthesizer` triple and training volumes or None, for repeated draws)."""
    dev = resolve_device(device)
    cfg, model, meta, volumes = loaded or (*load_synthesizer(run_dir, dev), None)
    if cfg.task == "label2image":
        image, labels = rendered_pairs(model, cfg, n, seed, device, volumes)
        image, labels = image[:, 0], labels.to(torch.uint8)
    else:
        image, labels = split_joint(sample_joint(model, cfg, n, seed, dev))
        labels = clean_maps(labels, cfg)
    if cfg.data.modality == Modality.CT:
        image = unit_to_ct(image, cfg.preprocess.ct_window)
    else:
        image = unit_to_mri(image, *(meta.get("mri_scale") or (0.0, 1.0)))
    spacing = meta.get("spacing") or [1.0, 1.0, 1.0]
    return image.numpy(), labels.numpy(), spacing, cfg


def clean_maps(labels: torch.Tensor, cfg) -> torch.Tensor:
    """A VAE/GAN run's integer label maps ``(n, ...)`` as sampled (:func:`split_joint`); with ``model.keep_largest``
    each class reduced to its largest component in each map."""
    if not cfg.model.keep_largest:
        return labels
    return torch.from_numpy(keep_largest_components(labels.numpy(), range(1, n_foreground(cfg) + 1)))


MIXTURE_PATCHES = 2000  # training patches encoded to fit ``model.sampling: mixture`` (drawn with train.seed)


@torch.inference_mode()
def sample_joint(model: torch.nn.Module, cfg, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` raw samples ``(n, 1 + K, ...)`` of a VAE/GAN sampling network, float32 on the CPU: latents from
    ``N(0, cfg.model.temperature^2)`` (a CPU generator seeded with ``seed``), 32 a pass; a VAE with
    ``model.sampling: posterior`` draws them around the encodings of ``n`` training patches instead, and with
    ``mixture`` from a Gaussian mixture fitted to the encodings of the training patches."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = cfg.model.temperature * torch.randn(n, model.latent_size, generator=gen)
    sampling = getattr(cfg.model, "sampling", "prior")
    if sampling == "posterior":  # a VAE: around encoded training patches
        mu, logvar = _encoded(model, cfg, training_patches(cfg, seed), n, device)
        z = mu + torch.exp(0.5 * logvar) * z
    elif sampling == "mixture":
        z = _mixture_latents(model, cfg, n, seed, device)
    return torch.cat([model.sample(chunk.to(device)).float().cpu() for chunk in z.split(32)])


@torch.inference_mode()
def _encoded(model: torch.nn.Module, cfg, patches, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, logvar)`` (float32, CPU) of a VAE's posteriors of the first ``n`` of ``patches``, 32 a pass."""
    mus, logvars = [], []
    for index in torch.arange(n).split(32):
        batch = [patches[int(i)] for i in index]
        x = joint_tensor({key: torch.stack([b[key] for b in batch]) for key in (Keys.IMAGE, Keys.LABEL)},
                         n_foreground(cfg), device)
        mu, logvar = model.encode(x)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


def latent_mixture(model: torch.nn.Module, cfg, device: torch.device):
    """A full-covariance Gaussian mixture (scikit-learn, ``model.mixture_components``) fitted to the posterior
    means of ``MIXTURE_PATCHES`` training patches, drawn with ``train.seed``: the same mixture for every draw."""
    from sklearn.mixture import GaussianMixture

    mu, _ = _encoded(model, cfg, training_patches(cfg, cfg.train.seed), MIXTURE_PATCHES, device)
    return GaussianMixture(cfg.model.mixture_components, covariance_type="full", reg_covar=1e-4,
                           random_state=0).fit(mu.double().numpy())


def _mixture_latents(model: torch.nn.Module, cfg, n: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` latents of :func:`latent_mixture`: a component by its weight, then its mean + T x its spread."""
    gmm = latent_mixture(model, cfg, device)
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(gmm.weights_), size=n, p=gmm.weights_ / gmm.weights_.sum())
    chol = np.linalg.cholesky(gmm.covariances_)[comp]
    noise = rng.standard_normal((n, gmm.means_.shape[1]))
    z = gmm.means_[comp] + cfg.model.temperature * np.einsum("nij,nj->ni", chol, noise)
    return torch.from_numpy(z).float()


def training_patches(cfg, seed: int, volumes: list | None = None):
    """A run's training patches, drawn with ``seed`` the way training draws them (``volumes``: when loaded)."""
    return labelled_patches(config_volumes(cfg) if volumes is None else volumes, cfg.data, cfg.spatial_dims, seed)


def render(generator: torch.nn.Module, cond: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """A label2image generator's images of one-hot label maps ``cond`` ``(B, K, ...)``, padded with background up
    to a multiple of ``multiple`` and cropped back; float32 on the CPU."""
    shape = cond.shape[2:]
    flat = [v for p in reversed([(-s) % multiple for s in shape]) for v in (0, p)]
    inside = F.pad(torch.ones_like(cond[:, :1]), flat)
    cond = F.pad(cond, flat)
    cond[:, :1] += 1 - inside  # the padding is background
    out = generator(cond).float().clamp(-1.0, 1.0).cpu()  # a linear-output generator may overshoot
    return out[(slice(None), slice(None), *[slice(0, s) for s in shape])]


@torch.inference_mode()
def render_maps(generator: torch.nn.Module, maps: torch.Tensor, cfg, device: torch.device,
                means: torch.Tensor | None = None) -> torch.Tensor:
    """Integer label maps ``(n, *spatial)`` -> a label2image run's images ``(n, 1, *spatial)`` in [-1, 1], 32 a pass;
    ``means`` ``(n, C)``: each map's class means (runs with ``class_means``)."""
    out = []
    for index in torch.arange(len(maps)).split(32):
        cond = one_hot(maps[index][:, None].to(device), n_label_channels(cfg))
        if cfg.class_means:
            cond = torch.cat([cond, class_mean_image(cond, means=means[index])], 1)
        out.append(render(generator, cond))
    return torch.cat(out)


def rendered_pairs(generator: torch.nn.Module, cfg, n: int, seed: int, device: str = "auto",
                   volumes: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, ...)`` in [-1, 1] of a label2image run and their organ label maps ``(n, ...)``: maps
    from :func:`label_maps`, each rendered (with ``class_means``) in the class means of one training volume
    drawn with ``seed`` (``volumes``: the training volumes, when already loaded)."""
    needs_volumes = cfg.class_means or not cfg.labels
    volumes = with_body_classes(cfg, config_volumes(cfg) if volumes is None else volumes) if needs_volumes else []
    maps = label_maps(cfg, n, seed, device, volumes)
    means = None
    if cfg.class_means:
        table = volume_class_means(cfg, volumes)
        means = table[torch.randint(len(table), (n,), generator=torch.Generator().manual_seed(int(seed) + 1))]
    return render_maps(generator, maps, cfg, resolve_device(device), means), organ_labels(cfg, maps)


def label_maps(cfg, n: int, seed: int = 0, device: str = "auto", volumes: list | None = None) -> torch.Tensor:
    """``n`` label maps ``(n, *patch)`` for a ``label2image`` run to render: sampled from its ``labels`` run (VAE or
    GAN), else drawn from its training label maps the way training drew them (``volumes``: those, body classes
    included, when already loaded)."""
    if cfg.labels:
        source = load_run(cfg.labels, "synthesizer")
        # the label-map run's classes, read in this run's by their source labels (its liver 1 may be this run's 6)
        if source.task == "label2image":
            raise MedgenError(cfg.labels, "labels: must be a VAE or GAN run, not a label2image run")
        classes = class_translation(source.data.label_map, cfg.data.label_map, cfg.labels)
        if source.data.label_map and len(classes) < len(set(source.data.label_map.values())):
            raise MedgenError(cfg.labels, "labels: must be a VAE or GAN run whose classes the label2image run knows")
        return torch.as_tensor(remap_labels(sample_pairs(cfg.labels, n, seed, device)[1], classes)).long()
    patches = training_patches(cfg, seed, with_body_classes(cfg, config_volumes(cfg)) if volumes is None else volumes)
    return torch.stack([patches[i][Keys.LABEL][0] for i in range(n)]).long()


def judge_agreement(judge, images: np.ndarray, labels: np.ndarray, spacing, classes: dict[int, int]) -> np.ndarray:
    """Dice of each pair's structure (the label's classes that ``classes`` maps to 1) with the thresholded mask of
    its image (HU or MRI units) by ``judge`` (a :class:`~medgen.inference.segment.Segmenter`); both empty: 1.

    >>> from medgen.models.segmenter import PostprocessConfig
    >>> class Copy:  # a judge that "segments" every voxel above 0 HU
    ...     postprocess = PostprocessConfig()
    ...     def predict(self, array, ref): return (array > 0).astype(np.float32)
    >>> im = np.zeros((2, 4, 4)); im[:, :2] = 100.0; lab = np.zeros((2, 4, 4), np.uint8); lab[0, :2] = 6; lab[1, :1] = 6
    >>> judge_agreement(Copy(), im, lab, [1.0, 1.0, 1.0], {6: 1}).round(3).tolist()
    [1.0, 0.667]
    """
    affine = np.diag([*map(float, spacing), 1.0])
    scores = []
    for image, label in zip(images, labels):
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        prob = judge.predict(np.asarray(image, np.float32), ref_from_affine(affine, image.shape))
        mask = postprocess(prob, thresholded(judge.postprocess)) > 0
        truth = remap_labels(label, classes) == 1
        scores.append(segmentation_metrics(mask, truth, spacing, False)["dice"])
    return np.asarray(scores, np.float64)


def judged_pairs(run_dir: str | Path, n: int, seed: int, device: str, judge: str | Path, min_dice: float,
                 judge_class: int | None = None, rounds: int = 8):
    """Up to ``n`` pairs of a synthesizer run that ``judge`` (a segmenter: run, TorchScript, bundle) agrees with at
    Dice >= ``min_dice``, drawn ``n`` at a time (seeds ``seed``, ``seed + 1`` ...) for at most ``rounds`` draws.
    Returns (images, labels, spacing, cfg, each kept pair's Dice, how many pairs were drawn)."""
    if not 0.0 <= min_dice <= 1.0:
        raise MedgenError(judge, f"the minimum Dice must be in [0, 1], not {min_dice}")
    seg = load_segmenter(judge, device)
    cfg, model, meta = load_synthesizer(run_dir, resolve_device(device))  # loaded once for every draw
    classes = _judged_classes(seg, cfg, judge, judge_class)
    loaded = (cfg, model, meta, config_volumes(cfg)
              if cfg.task == "label2image" and (cfg.class_means or not cfg.labels) else None)
    kept, drawn = [], 0
    for r in range(rounds):
        images, labels, spacing, _ = sample_pairs(run_dir, n, seed + r, device, loaded)
        dice = judge_agreement(seg, images, labels, spacing, classes)
        drawn += len(dice)
        kept += [(images[i], labels[i], dice[i]) for i in np.flatnonzero(dice >= min_dice)]
        if len(kept) >= n:
            break
    if not kept:
        raise MedgenError(judge, f"agrees with none of the {drawn} pairs drawn at Dice >= {min_dice}")
    kept = kept[:n]
    return (np.stack([k[0] for k in kept]), np.stack([k[1] for k in kept]), spacing, cfg,
            [float(k[2]) for k in kept], drawn)


def _judged_classes(seg, cfg, judge: str | Path, judge_class: int | None) -> dict[int, int]:
    """The synthesizer's classes that are the judge's structure, each mapped to 1."""
    if judge_class is not None:
        return {int(judge_class): 1}
    if not isinstance(seg, RunSegmenter):
        raise MedgenError(judge, "a segmenter that is not a medgen run needs the synthesizer's class it segments "
                                 "(--judge-class)")
    translated = class_translation(cfg.data.label_map, seg.cfg.data.label_map, judge) or {}
    classes = {c: 1 for c, t in translated.items() if t == seg.liver_index}
    if not classes:
        raise MedgenError(judge, f"segments class {seg.liver_index} of its label_map {seg.cfg.data.label_map}, "
                                 f"which none of the synthesizer's classes ({cfg.data.label_map}) is")
    return classes


def write_synthetic(run_dir: str | Path, out: str | Path, n: int, seed: int = 0, device: str = "auto",
                    overwrite: bool = False, judge: str | Path | None = None, min_dice: float = 0.7,
                    judge_class: int | None = None) -> dict:
    """``medgen synth``: ``OUT/images/synth_XXXX.nii.gz``, ``OUT/labels/...`` and ``OUT/dataset.json``.

    2D samples are written as one-slice volumes; the voxel size is the training data's (after the
    run's resampling), in RAS orientation. With ``judge`` (a segmenter) only the pairs it agrees with are
    written (:func:`judged_pairs`; fewer than ``n`` when too few agree in its draws); ``dataset.json`` records
    the judge, the threshold, how many pairs were drawn and each pair's Dice.
    """
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise MedgenError(out, "already holds a dataset.json (pass --overwrite to replace it)")
    if judge is None:
        images, labels, spacing, cfg = sample_pairs(run_dir, n, seed, device)
        dice, drawn = None, n
    else:
        images, labels, spacing, cfg, dice, drawn = judged_pairs(run_dir, n, seed, device, judge, min_dice, judge_class)
    affine = np.diag([*map(float, spacing), 1.0])
    save_image = save_hu if cfg.data.modality == Modality.CT else save_like
    entries = []
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        ref = ref_from_affine(affine, image.shape)
        name = f"synth_{i:04d}"
        save_image(image, ref, out / "images" / f"{name}.nii.gz", overwrite=True)
        save_like(label, ref, out / "labels" / f"{name}.nii.gz", overwrite=True)
        entries.append({"name": name, "image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}
                       | ({} if dice is None else {"judge_dice": round(dice[i], 4)}))
    classes = sorted(set(cfg.data.label_map.values()))
    info = {"name": "medgen synthetic pairs", "generator": str(Path(run_dir).resolve()), "task": cfg.task,
            "seed": int(seed), "spacing": list(map(float, spacing)), "modality": str(cfg.data.modality),
            "labels": {"0": "background", **{str(c): f"class_{c}" for c in classes}},
            # the synthesizer's source label -> class: a segmenter with another label_map reads the classes by it
            "label_map": None if cfg.data.label_map is None else {str(k): int(v) for k, v in cfg.data.label_map.items()},
            "judge": None if judge is None else {"segmenter": str(Path(judge).resolve() if Path(judge).exists() else judge), "min_dice": float(min_dice),
                                                 "drawn": int(drawn), "kept": len(entries)},
            "training": entries}
    atomic_write(out / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return info
