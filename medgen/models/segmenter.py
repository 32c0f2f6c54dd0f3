"""The CT liver segmenter as training and inference share it: its config (with the post-processing
defaults every segmenter backend uses) and its network.

Any source labelling becomes medgen's classes through ``data.label_map`` (source value -> class):
``{6: 1}`` for BTCV, ``{5: 1}`` for TotalSegmentator, ``{1: 1}`` for the phantoms; other values are
background. The training step is in :mod:`medgen.engines.segmenter`, the backends in
:mod:`medgen.inference.segment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.nets import SegResNet, UNet

from medgen.config import InferenceConfig, LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.data.synthseg import CONTRASTS


@dataclass
class SegNetworkConfig:
    name: str = "unet"  # unet (MONAI UNet) | segresnet (MONAI SegResNet)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # unet: filters per level
    num_res_units: int = 2  # unet: residual units per level
    init_filters: int = 16  # segresnet: filters of the first level
    dropout: float = 0.0
    # exponential moving average of the weights (0: off); inference and validation use the average, which
    # is steadier across checkpoints on another modality than any single checkpoint
    ema_decay: float = 0.0
    # 2D: axial slices the network sees, as input channels: 1 (plain 2D), or 3, 5 (2.5D: the centre slice's mask
    # predicted with its neighbours as through-plane context; the slices are preprocess.spacing's z apart)
    slices: int = 1

    def __post_init__(self) -> None:
        if self.slices < 1 or self.slices % 2 == 0:
            raise ValueError("slices", f"must be an odd number of slices (1, 3, 5), not {self.slices}")


@dataclass
class SyntheticAugmentConfig:
    source: str | None = None  # synthetic pairs: a folder with images/ and labels/, or a synthesizer run
    ratio: float = 0.0  # fraction of training samples drawn from the synthetic pairs
    cases: int = 20  # synthesizer run: how many pairs to sample (once, at setup)
    # fraction of train.iterations during which synthetic samples are drawn; after it, real samples only (the
    # network finishes on real data: synthetic pre-training, real fine-tuning within one run's budget)
    until: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.until <= 1.0:
            raise ValueError("until", f"must be in (0, 1], not {self.until}")


@dataclass
class SynthSegConfig:
    """Label -> image synthesis (SynthSeg-style, :mod:`medgen.data.synthseg`): a segmenter that learns shape,
    not one modality's contrast, and so runs on MRI of any weighting as well as on CT."""

    prob: float = 0.0  # fraction of training patches whose image is replaced by a random-contrast one (0: off)
    classes: int = 4  # intensity classes of the unlabelled body (1D k-means of the real image; no HU constant)
    max_std: float = 0.06  # largest within-structure standard deviation ([0, 1] image units)
    texture: float = 0.5  # largest amplitude (random sign per structure) of the real detail, per its std; 0: flat
    max_blur: float = 1.2  # largest Gaussian blur sigma (voxels)
    bias: float = 0.6  # largest log-amplitude of the smooth multiplicative bias field
    max_downsample: float = 2.5  # largest resolution loss along one random axis (thick slices)
    max_noise: float = 0.04  # largest noise standard deviation
    # random: every structure a random intensity (any modality); prior: the real image's own intensities,
    # each structure shifted by up to ``shift`` ([0, 1] units; 0.25 = 106 HU in a [-175, 250] window), as
    # another contrast phase of the same modality
    contrast: str = "random"
    shift: float = 0.25

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError("contrast", f"must be one of {', '.join(CONTRASTS)}, not {self.contrast!r}")


@dataclass
class AugmentConfig:
    intensity: bool = True  # random intensity scale/shift/contrast/noise (robustness to synthetic CT)
    # each labelled organ's intensity shifted by a random offset in this range (normalised units, 0.1 = 21 HU
    # in the demo's [-175, 250] window), varying smoothly across it, in half the patches; [] or null: off
    organ_intensity: list[float] | None = field(default_factory=lambda: [-0.7, 0.2])
    spatial: bool = False  # random rotation (+-15 degrees) and scaling (+-15 %) of image and label
    # with ``spatial``: a smooth random deformation of image and labels (SynthSeg's non-linear one), its largest
    # displacement as a fraction of the patch's half-width (0.06 of a 160-voxel patch: 4.8 voxels); 0: off
    deform: float = 0.0
    synthseg: SynthSegConfig = field(default_factory=SynthSegConfig)
    gin: float = 0.0  # probability of random-convolution intensity augmentation (GIN+IPA), before the synthesis
    synthetic: SyntheticAugmentConfig = field(default_factory=SyntheticAugmentConfig)
    translator: str | None = None  # CycleGAN run: training CTs also go CT -> MRI -> CT through it (labels kept)
    translator_ratio: float = 0.5  # fraction of samples drawn from those cycled CTs


@dataclass
class TargetDataConfig:
    """Images of the target domain with labels already in classes (pseudo-labels: a segmenter's masks of the
    MRIs a fit adapts to), mixed into training as they are: no label -> image synthesis, since their own
    contrast is what the network should learn. Self-training (``medgen fit``'s ``adapt`` stage)."""

    images: str | None = None  # a folder or datalist JSON
    labels: str | None = None  # masks in class values, matched to images by file name
    modality: str = "mri"  # ct | mri: intensity preset of these images
    ratio: float = 0.0  # fraction of training samples drawn from them


@dataclass
class SegLossConfig:
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0


@dataclass
class PostprocessConfig:
    """Probability -> mask; the defaults of every segmenter backend (a run's config may change them)."""

    threshold: float = 0.5  # liver probability threshold
    largest_component: bool = True  # keep the largest connected component
    fill_holes: bool = True  # fill enclosed holes (slice-wise and in 3D)
    inside_body: bool = False  # medgen runs: no liver outside the input's body (synthseg.body_mask; any modality)


@dataclass
class SegInferenceConfig(InferenceConfig):
    """Whole-volume inference of a segmenter; ``tta_gammas``: test-time contrast augmentation, the softmax averaged
    over the input and its copies with intensity curve ``u -> u ** gamma`` (in [0, 1]) for each gamma listed (a
    contrast-agnostic segmenter sees the same anatomy in other contrasts; empty: off)."""

    tta_gammas: list[float] = field(default_factory=list)


@dataclass
class SegmenterConfig:
    task: str = "segmenter"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    network: SegNetworkConfig = field(default_factory=SegNetworkConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    target: TargetDataConfig = field(default_factory=TargetDataConfig)
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: SegInferenceConfig = field(default_factory=SegInferenceConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


def n_classes(cfg: SegmenterConfig) -> int:
    """Output channels: background plus the classes of ``data.label_map``.

    >>> n_classes(SegmenterConfig())
    2
    """
    return max(cfg.data.label_map.values(), default=1) + 1


def build_network(cfg: SegmenterConfig) -> torch.nn.Module:
    """The segmentation network (MONAI UNet or SegResNet), saved as ``net`` in checkpoints."""
    net = cfg.network
    if net.slices > 1 and cfg.spatial_dims != 2:
        raise ValueError(f"network.slices={net.slices} is for 2D networks (spatial_dims 2), not {cfg.spatial_dims}D")
    if net.name == "unet":
        return UNet(cfg.spatial_dims, net.slices, n_classes(cfg), channels=tuple(net.channels),
                    strides=(2,) * (len(net.channels) - 1), num_res_units=net.num_res_units, norm="INSTANCE",
                    dropout=net.dropout)
    if net.name == "segresnet":
        return SegResNet(cfg.spatial_dims, net.init_filters, net.slices, n_classes(cfg), dropout_prob=net.dropout or None)
    raise ValueError(f"unknown network {net.name!r} (unet | segresnet)")


def weights_name(cfg: SegmenterConfig) -> str:
    """The checkpoint entry inference loads: ``net_ema`` (an ``AveragedModel``) when ``network.ema_decay`` is
    set, else ``net``.

    >>> weights_name(SegmenterConfig())
    'net'
    """
    return "net_ema" if cfg.network.ema_decay > 0 else "net"


def input_multiple(cfg: SegmenterConfig) -> int:
    """Inputs are padded to a multiple of this (the network's total downsampling).

    >>> input_multiple(SegmenterConfig())
    16
    """
    return 2 ** (len(cfg.network.channels) - 1) if cfg.network.name == "unet" else 8
