"""Training the CT liver segmenter: its sample stream (real pairs, optionally mixed with translator-cycled
CTs and synthetic pairs), the supervised step (DiceCE), validation and the setup on the shared Ignite
trainer. Its config and network are in :mod:`medgen.models.segmenter`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.optim.swa_utils import AveragedModel

from medgen.data.augment import intensity_augmentation
from medgen.data.datalist import image_label_pairs
from medgen.data.patches import labelled_patches
from medgen.data.mixing import MixedSamples
from medgen.data.volumes import class_translation, labelled_volumes, remap_labels
from medgen.engines.common import TaskSetup, average_gradients, loader_factory, weight_average
from medgen.errors import MedgenError
from medgen.inference.segment import segment_array
from medgen.inference.synthesize import write_synthetic
from medgen.inference.translate import load_translator
from medgen.io import load_image, save_like
from medgen.keys import Keys
from medgen.metrics import segmentation_metrics
from medgen.models.run import CONFIG_FILE
from medgen.models.segmenter import (SegmenterConfig, SyntheticAugmentConfig, build_network, n_classes,
                                    weights_name)
from medgen.runtime import autocast, grad_scaler


def supervised_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, device: torch.device,
                    amp: str = "none", scaler: torch.amp.GradScaler | None = None, ema: AveragedModel | None = None):
    """Training step ``(engine, batch) -> {"loss": ...}`` for image -> label networks (``ema``: a weight
    average updated after each step)."""
    scaler = scaler or grad_scaler(device, "none")

    def step(engine, batch: Mapping) -> dict:
        net.train()
        x = batch[Keys.IMAGE].to(device, non_blocking=True)
        y = batch[Keys.LABEL].to(device, non_blocking=True).long()
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        average_gradients([net])
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update_parameters(net)
        pred = logits.detach().argmax(1, keepdim=True).float()
        return {"loss": loss.item(), "visuals": {Keys.IMAGE: x[:1].detach(), Keys.LABEL: y[:1].float() * 2 - 1,
                                                 Keys.PRED: pred[:1] * 2 - 1}}

    return step


def cycled_volumes(translator_run: str | Path, pairs, cfg: SegmenterConfig, gen_classes: int | None = None) -> list[dict]:
    """Training CTs passed CT -> MRI -> CT through a translator run, with their own labels.

    The cycled CTs carry the translator's artifacts (noise, intensity bias, blur) on exactly known
    anatomy, so a segmenter trained with them is ready for the synthetic CTs of the MRI pipeline.
    ``gen_classes``: also cache their generation labels (label -> image synthesis on, as on the real pairs).
    """
    to_mri, to_ct = load_translator(translator_run, "ct2mri"), load_translator(translator_run, "mri2ct")
    with tempfile.TemporaryDirectory() as tmp:
        cycled = []
        for i, (image, label) in enumerate(pairs):
            ct, ref = load_image(image)
            out = save_like(to_ct.translate(to_mri.translate(ct, ref)[0], ref)[0], ref, Path(tmp) / f"c{i:04d}.nii.gz")
            cycled.append((out, label))
        return labelled_volumes(cycled, cfg.data, cfg.preprocess, gen_classes=gen_classes)


def synthetic_volumes(syn_cfg: SyntheticAugmentConfig, cfg: SegmenterConfig,
                      gen_classes: int | None = None) -> list[dict]:
    """Synthetic pairs for segmenter training, preprocessed like the real ones and cached in memory.

    ``syn_cfg.source`` is a folder written by ``medgen synth`` (or holding ``images/`` and ``labels/``),
    or a synthesizer run, sampled once (``syn_cfg.cases`` pairs, seeded by train.seed). ``gen_classes``: also
    cache their generation labels (every class of the synthetic map, the rest of its body in intensity
    classes), so that label -> image synthesis applies to them as to the real pairs.
    """
    src = Path(syn_cfg.source)

    def load(folder: Path) -> list[dict]:
        if (folder / "dataset.json").is_file():
            pairs = image_label_pairs(folder / "dataset.json", folder / "dataset.json")
        else:
            pairs = image_label_pairs(folder / "images", folder / "labels")
        return labelled_volumes(pairs, cfg.data, cfg.preprocess, label_map=synthetic_classes(folder, cfg),
                                gen_classes=gen_classes)

    if (src / CONFIG_FILE).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            write_synthetic(src, tmp, syn_cfg.cases, cfg.train.seed)
            return load(Path(tmp))
    if not src.is_dir():
        raise MedgenError(src, "synthetic source must be a folder of pairs or a synthesizer run directory")
    return load(src)


def synthetic_classes(folder: Path, cfg: SegmenterConfig) -> dict[int, int] | None:
    """How the segmenter reads a synthetic folder's labels: ``medgen synth`` records the synthesizer's
    ``label_map`` in ``dataset.json``, and each synthetic class becomes the segmenter's class of its source labels
    (a synthesizer of the 13 BTCV organs writes the liver as 6; a liver segmenter with ``{6: 1}`` reads it as 1);
    labels of a folder without that record are taken to be in the segmenter's classes already."""
    classes = {c: c for c in cfg.data.label_map.values()}
    meta = folder / "dataset.json"
    if not meta.is_file():
        return classes
    try:
        record = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        raise MedgenError(meta, "unreadable dataset.json") from None
    if not isinstance(record, dict) or "label_map" not in record:
        return classes
    try:
        written = None if record["label_map"] is None else {int(k): int(v) for k, v in record["label_map"].items()}
    except (AttributeError, TypeError, ValueError):
        raise MedgenError(meta, "label_map must map source labels to classes, e.g. {\"6\": 1}") from None
    return class_translation(written, cfg.data.label_map, meta)


def segmentation_samples(cfg: SegmenterConfig, seed: int):
    """The training sample stream: real pairs, mixed with cycled and synthetic pairs when configured; the
    target pairs alone at ``target.ratio`` 1 (a fit from a shipped model with no CT)."""
    if cfg.target.images and cfg.target.ratio >= 1:
        return target_patches(cfg, seed + 9)
    pairs = image_label_pairs(cfg.data.images, cfg.data.labels)
    synthseg = dataclasses.asdict(cfg.augment.synthseg) if cfg.augment.synthseg.prob > 0 else None
    gen_classes = synthseg.pop("classes") if synthseg else None
    transform = intensity_augmentation(cfg.augment.intensity, cfg.augment.organ_intensity,
                                       cfg.spatial_dims if cfg.augment.spatial else None, synthseg, cfg.augment.gin,
                                       cfg.augment.deform, cfg.data.patch_size)

    def patches(volumes, stream_seed):
        return labelled_patches(volumes, cfg.data, cfg.spatial_dims, stream_seed, transform, cfg.network.slices)

    samples = patches(labelled_volumes(pairs, cfg.data, cfg.preprocess, gen_classes=gen_classes), seed)
    aug = cfg.augment
    if aug.translator and aug.translator_ratio > 0:
        samples = MixedSamples(samples, patches(cycled_volumes(aug.translator, pairs, cfg, gen_classes), seed + 5),
                               aug.translator_ratio, seed + 6)
    if aug.synthetic.source and aug.synthetic.ratio > 0:
        stop = int(aug.synthetic.until * cfg.train.iterations * cfg.train.batch_size * idist.get_world_size())
        samples = MixedSamples(samples, patches(synthetic_volumes(aug.synthetic, cfg, gen_classes), seed + 7),
                               aug.synthetic.ratio, seed + 8, stop)
    if cfg.target.images and cfg.target.ratio > 0:
        samples = MixedSamples(samples, target_patches(cfg, seed + 9), cfg.target.ratio, seed + 10)
    return samples


def target_patches(cfg: SegmenterConfig, seed: int):
    """Patches of the target-domain pairs (``cfg.target``): their own contrast, with the intensity, spatial and
    deformation augmentation of the rest but no label -> image synthesis and no random convolutions."""
    target = cfg.target
    pairs = image_label_pairs(target.images, target.labels or "")
    data = dataclasses.replace(cfg.data, modality=target.modality)
    classes = {c: c for c in cfg.data.label_map.values()}
    transform = intensity_augmentation(cfg.augment.intensity, None, cfg.spatial_dims if cfg.augment.spatial else None,
                                       None, 0.0, cfg.augment.deform, cfg.data.patch_size)
    return labelled_patches(labelled_volumes(pairs, data, cfg.preprocess, label_map=classes), data,
                            cfg.spatial_dims, seed, transform, cfg.network.slices)


def validation_fn(cfg: SegmenterConfig, net: torch.nn.Module, device: torch.device) -> Callable[[], dict]:
    """Validation during training: mean Dice of each class on the validation volumes."""
    pairs = image_label_pairs(cfg.data.val_images, cfg.data.val_labels)

    def validate() -> dict:
        net.eval()
        try:
            dice: dict[int, list[float]] = {c: [] for c in range(1, n_classes(cfg))}
            for image_path, label_path in pairs:
                image, ref = load_image(image_path)
                labels = remap_labels(load_image(label_path)[0], cfg.data.label_map)
                pred = segment_array(net, cfg, image, ref, device).argmax(0)
                for c in dice:
                    dice[c].append(segmentation_metrics(pred == c, labels == c, ref.spacing, False)["dice"])
            return {f"dice_{c}": float(np.mean(v)) for c, v in dice.items()}
        finally:
            net.train()

    return validate


def setup(cfg: SegmenterConfig, device: torch.device) -> TaskSetup:
    """Data, network, optimizer, the step and validation of a segmenter run."""
    make_loader = loader_factory(segmentation_samples(cfg, cfg.train.seed * 2 + 1), cfg.train, device)
    net = build_network(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.lambda_dice, lambda_ce=cfg.loss.lambda_ce)
    scaler = grad_scaler(device, cfg.train.amp)
    ema = weight_average(net, cfg.network.ema_decay)
    step = supervised_step(net, opt, loss_fn, device, cfg.train.amp, scaler, ema)
    used = ema.module if ema is not None else net
    validate = validation_fn(cfg, used, device) if cfg.data.val_images and cfg.data.val_labels else None
    to_save = {"net": net, "opt": opt, "scaler": scaler, **({weights_name(cfg): ema} if ema is not None else {})}
    return TaskSetup(step, to_save, make_loader, [opt], cfg.optim.lr, validate)
