"""Writing a trained synthesizer run's samples: image + label pairs in HU (CT) or MRI units. A VAE or GAN samples
both from its latent space; a ``label2image`` run renders label maps (a VAE/GAN run's, or its training ones); the
backends and their :class:`~medgen.inference.synthesizers.SamplingOptions` are in
:mod:`medgen.inference.synthesizers`.

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

from medgen.data.volumes import class_translation, remap_labels
from medgen.errors import MedgenError
from medgen.inference.segment import RunSegmenter, load_segmenter, postprocess, thresholded
from medgen.inference.synthesizers import SamplingOptions, Synthesizer, load_synthesizer
from medgen.io import atomic_write, ref_from_affine, save_hu, save_like
from medgen.keys import Modality
from medgen.metrics import segmentation_metrics


def sample_pairs(run_dir: str | Path, n: int, seed: int = 0, device: str = "auto",
                 options: SamplingOptions | None = None):
    """``n`` synthetic pairs of a synthesizer run sampled as ``options`` say (default: as its config says): images
    in HU (CT) or MRI units, integer label maps, the voxel spacing, the config (the options applied)."""
    synth = load_synthesizer(run_dir, device, options)
    images, labels = synth.sample(n, seed)
    return images, labels, synth.spacing, synth.cfg


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


def judged_pairs(synth: Synthesizer, n: int, seed: int, device: str, judge: str | Path, min_dice: float,
                 judge_class: int | None = None, rounds: int = 8):
    """Up to ``n`` pairs of a synthesizer (:func:`~medgen.inference.synthesizers.load_synthesizer`) that ``judge``
    (a segmenter: run, TorchScript, bundle) agrees with at Dice >= ``min_dice``, drawn ``n`` at a time (seeds
    ``seed``, ``seed + 1`` ...) for at most ``rounds`` draws. Returns (images, labels, spacing, cfg, each kept
    pair's Dice, how many pairs were drawn)."""
    if not 0.0 <= min_dice <= 1.0:
        raise MedgenError(judge, f"the minimum Dice must be in [0, 1], not {min_dice}")
    seg = load_segmenter(judge, device)
    cfg, spacing = synth.cfg, synth.spacing
    classes = _judged_classes(seg, cfg, judge, judge_class)
    kept, drawn = [], 0
    for r in range(rounds):
        images, labels = synth.sample(n, seed + r)
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
                    judge_class: int | None = None, options: SamplingOptions | None = None) -> dict:
    """``medgen synth``: ``OUT/images/synth_XXXX.nii.gz``, ``OUT/labels/...`` and ``OUT/dataset.json``.

    The run is sampled as ``options`` say (:class:`~medgen.inference.synthesizers.SamplingOptions`; each unset one
    as the run's config says). 2D samples are written as one-slice volumes; the voxel size is the training data's
    (after the run's resampling), in RAS orientation. With ``judge`` (a segmenter) only the pairs it agrees with are
    written (:func:`judged_pairs`; fewer than ``n`` when too few agree in its draws); ``dataset.json`` records
    the sampling settings, the judge, the threshold, how many pairs were drawn and each pair's Dice.
    """
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise MedgenError(out, "already holds a dataset.json (pass --overwrite to replace it)")
    synth = load_synthesizer(run_dir, device, options)
    if judge is None:
        (images, labels), spacing, cfg = synth.sample(n, seed), synth.spacing, synth.cfg
        dice, drawn = None, n
    else:
        images, labels, spacing, cfg, dice, drawn = judged_pairs(synth, n, seed, device, judge, min_dice, judge_class)
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
            "seed": int(seed), "sampling": synth.settings(), "spacing": list(map(float, spacing)),
            "modality": str(cfg.data.modality),
            "labels": {"0": "background", **{str(c): f"class_{c}" for c in classes}},
            # the synthesizer's source label -> class: a segmenter with another label_map reads the classes by it
            "label_map": None if cfg.data.label_map is None else {str(k): int(v) for k, v in cfg.data.label_map.items()},
            "judge": None if judge is None else {"segmenter": str(Path(judge).resolve() if Path(judge).exists() else judge), "min_dice": float(min_dice),
                                                 "drawn": int(drawn), "kept": len(entries)},
            "training": entries}
    atomic_write(out / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return info
