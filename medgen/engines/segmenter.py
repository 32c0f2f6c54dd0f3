"""CT liver segmenter: config, supervised step (DiceCE) and setup, on the shared Ignite trainer.

Any source labelling becomes medgen's classes through ``data.label_map`` (source value -> class):
``{6: 1}`` for BTCV, ``{5: 1}`` for TotalSegmentator, ``{1: 1}`` for the phantoms; other values are
background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medgen.config import InferenceConfig, LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.engines.common import TaskSetup, autocast, average_gradients, grad_scaler, loader_factory
from medgen.keys import Keys


@dataclass
class SegNetworkConfig:
    name: str = "unet"  # unet (MONAI UNet) | segresnet (MONAI SegResNet)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # unet: filters per level
    num_res_units: int = 2  # unet: residual units per level
    init_filters: int = 16  # segresnet: filters of the first level
    dropout: float = 0.0


@dataclass
class SyntheticAugmentConfig:
    source: str | None = None  # synthetic pairs: a folder with images/ and labels/, or a synthesizer run
    ratio: float = 0.0  # fraction of training samples drawn from the synthetic pairs
    cases: int = 20  # synthesizer run: how many pairs to sample (once, at setup)


@dataclass
class AugmentConfig:
    intensity: bool = True  # random intensity scale/shift/contrast/noise (robustness to synthetic CT)
    # each labelled organ's intensity shifted by a random offset in this range (normalised units, 0.1 = 21 HU
    # in the demo's [-175, 250] window), varying smoothly across it, in half the patches; [] or null: off
    organ_intensity: list[float] | None = field(default_factory=lambda: [-0.7, 0.2])
    synthetic: SyntheticAugmentConfig = field(default_factory=SyntheticAugmentConfig)
    translator: str | None = None  # CycleGAN run: training CTs also go CT -> MRI -> CT through it (labels kept)
    translator_ratio: float = 0.5  # fraction of samples drawn from those cycled CTs


@dataclass
class SegLossConfig:
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0


@dataclass
class PostprocessConfig:
    threshold: float = 0.5  # liver probability threshold
    largest_component: bool = True  # keep the largest connected component
    fill_holes: bool = True  # fill enclosed holes (slice-wise and in 3D)


@dataclass
class SegmenterConfig:
    task: str = "segmenter"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    network: SegNetworkConfig = field(default_factory=SegNetworkConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


def n_classes(cfg: SegmenterConfig) -> int:
    return max(cfg.data.label_map.values(), default=1) + 1


def build_network(cfg: SegmenterConfig) -> torch.nn.Module:
    from monai.networks.nets import SegResNet, UNet

    net = cfg.network
    if net.name == "unet":
        return UNet(cfg.spatial_dims, 1, n_classes(cfg), channels=tuple(net.channels),
                    strides=(2,) * (len(net.channels) - 1), num_res_units=net.num_res_units, norm="INSTANCE",
                    dropout=net.dropout)
    if net.name == "segresnet":
        return SegResNet(cfg.spatial_dims, net.init_filters, 1, n_classes(cfg), dropout_prob=net.dropout or None)
    raise ValueError(f"unknown network {net.name!r} (unet | segresnet)")


def supervised_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn, device: torch.device,
                    amp: str = "none", scaler: torch.amp.GradScaler | None = None):
    """Training step ``(engine, batch) -> {"loss": ...}`` for image -> label networks."""
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
        pred = logits.detach().argmax(1, keepdim=True).float()
        return {"loss": loss.item(), "visuals": {Keys.IMAGE: x[:1].detach(), Keys.LABEL: y[:1].float() * 2 - 1,
                                                 Keys.PRED: pred[:1] * 2 - 1}}

    return step


def segmentation_samples(cfg: SegmenterConfig, seed: int):
    """The training sample stream: real pairs, mixed with synthetic pairs when configured."""
    from medgen.data.augment import intensity_augmentation
    from medgen.data.datalist import image_label_pairs
    from medgen.data.patches import RandomPatches
    from medgen.data.volumes import cached_volumes
    from medgen.keys import Modality
    from medgen.transforms import Preprocessor

    pre = Preprocessor.from_config(Modality(cfg.data.modality), cfg.preprocess)
    label_pre = Preprocessor.from_config(None, cfg.preprocess)
    pairs = image_label_pairs(cfg.data.images, cfg.data.labels)
    volumes = cached_volumes([{Keys.IMAGE: i, Keys.LABEL: lab} for i, lab in pairs],
                             {Keys.IMAGE: pre, Keys.LABEL: label_pre}, label_key=Keys.LABEL,
                             label_map=cfg.data.label_map, num_workers=cfg.data.cache_workers)
    transform = intensity_augmentation(cfg.augment.intensity, cfg.augment.organ_intensity)

    def patches(vols, stream_seed):
        return RandomPatches(vols, [Keys.IMAGE, Keys.LABEL], cfg.data.patch_size, cfg.spatial_dims, stream_seed,
                             fg_key=Keys.IMAGE, min_foreground=cfg.data.min_foreground, fg_prob=cfg.data.fg_prob,
                             pos_key=Keys.LABEL, pos_prob=cfg.data.pos_prob, pad_values={Keys.LABEL: 0},
                             transform=transform)

    from medgen.data.synthetic import MixedSamples, cycled_volumes, synthetic_volumes

    samples = patches(volumes, seed)
    aug = cfg.augment
    if aug.translator and aug.translator_ratio > 0:
        samples = MixedSamples(samples, patches(cycled_volumes(aug.translator, pairs, cfg), seed + 5),
                               aug.translator_ratio, seed + 6)
    if aug.synthetic.source and aug.synthetic.ratio > 0:
        samples = MixedSamples(samples, patches(synthetic_volumes(aug.synthetic, cfg), seed + 7),
                               aug.synthetic.ratio, seed + 8)
    return samples


def setup(cfg: SegmenterConfig, run_dir: Path, device: torch.device) -> TaskSetup:
    from monai.losses import DiceCELoss

    from medgen.evaluation.segmentation import validation_fn

    if len(cfg.data.patch_size) != cfg.spatial_dims:
        from medgen.errors import MedgenError

        raise MedgenError(None, f"data.patch_size {cfg.data.patch_size} needs {cfg.spatial_dims} values")
    make_loader = loader_factory(segmentation_samples(cfg, cfg.train.seed * 2 + 1), cfg.train, device)
    net = build_network(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                           weight_decay=cfg.optim.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.lambda_dice, lambda_ce=cfg.loss.lambda_ce)
    scaler = grad_scaler(device, cfg.train.amp)
    step = supervised_step(net, opt, loss_fn, device, cfg.train.amp, scaler)
    validate = validation_fn(cfg, net, device) if cfg.data.val_images and cfg.data.val_labels else None
    return TaskSetup(step, {"net": net, "opt": opt, "scaler": scaler}, make_loader, [opt], cfg.optim.lr, validate)
