"""The unpaired MRI <-> CT CycleGAN as training and inference share it: its config, its networks (its
run artifact ``norm.json``, shared by every translator, is in :mod:`medgen.models.run`).

Domain A is MRI, domain B is CT; ``G_ab`` translates MRI -> CT (:data:`GENERATORS`). The training step
is in :mod:`medgen.engines.cyclegan`, whole-volume translation in :mod:`medgen.inference.translate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medgen.config import InferenceConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.networks.generators import build_discriminator, build_generator

GENERATORS = {"mri2ct": "G_ab", "ct2mri": "G_ba"}  # direction -> the network that translates it


@dataclass
class TranslationDataConfig:
    mri: str = ""  # MRI volumes: a folder or a datalist JSON (domain A)
    ct: str = ""  # CT volumes: a folder or a datalist JSON (domain B), unpaired with the MRIs
    val_mri: str | None = None  # optional paired validation MRIs (matched to val_ct by file name)
    val_ct: str | None = None  # their CTs; validation reports MAE/PSNR/SSIM in HU inside the body
    patch_size: list[int] = field(default_factory=lambda: [256, 256])  # 2D (X, Y) slice crop or 3D (X, Y, Z)
    min_foreground: float = 0.1  # 2D: slices with a smaller body fraction are skipped
    fg_prob: float = 0.9  # probability that a patch is centred inside the body
    cache_workers: int = 2  # threads loading/preprocessing volumes into the in-memory cache


@dataclass
class GeneratorConfig:
    name: str = "resnet"  # resnet (Johnson et al.) | unet (MONAI UNet + tanh) | pointwise (a voxel-wise intensity map)
    ngf: int = 64  # filters of the first layer
    n_blocks: int = 9  # residual blocks (resnet)
    n_downsampling: int = 2  # stride-2 stages (resnet); inputs are padded to a multiple of 2**n
    dropout: float = 0.0
    # unet: tanh, or linear (the UNet's output as it is, clamped to [-1, 1] when rendering): targets at the ends
    # of the range (bone above a CT window's top) push a tanh's logits without bound (measured: 30) and the
    # large activations bleed into the neighbourhood as a bright slab
    output: str = "tanh"
    # unet: a first level at the input's resolution (ngf / 4 filters, stride 1); MONAI's UNet alone starts with a
    # stride-2 convolution, so its output's finest detail comes through half resolution and a transposed convolution
    full_res: bool = False
    res_units: int = 2  # unet: residual units per level (MONAI's num_res_units; 1 keeps a full_res UNet's cost)

    def __post_init__(self) -> None:
        if self.output not in ("tanh", "linear") or (self.output == "linear" and self.name != "unet"):
            raise ValueError("output", f"must be tanh, or linear with name: unet, not {self.output!r}")
        if (self.full_res or self.res_units != 2) and self.name != "unet":
            raise ValueError("full_res", f"full_res and res_units are unet keys, not {self.name}'s")


@dataclass
class DiscriminatorConfig:
    ndf: int = 64  # filters of the first layer
    n_layers: int = 3  # 3 = the 70x70 PatchGAN at 256^2


@dataclass
class CycleLossConfig:
    gan_mode: str = "lsgan"  # lsgan (MSE) | vanilla (BCE with logits)
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # identity weight, relative to lambda_cycle
    pool_size: int = 50  # generated images kept for discriminator updates (0: no pool)


@dataclass
class CycleGANConfig:
    task: str = "cyclegan"
    spatial_dims: int = 2  # 2: slice-wise; 3: patch-wise
    data: TranslationDataConfig = field(default_factory=TranslationDataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: CycleLossConfig = field(default_factory=CycleLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def build_nets(cfg: CycleGANConfig, channels_last_layout: bool = True) -> dict[str, torch.nn.Module]:
    """``G_ab``, ``G_ba`` (channels-last when ``channels_last_layout``), ``D_a``, ``D_b``: the checkpoint's names.

    >>> sorted(build_nets(CycleGANConfig(generator=GeneratorConfig(ngf=4, n_blocks=1))))
    ['D_a', 'D_b', 'G_ab', 'G_ba']
    """
    gen = [build_generator(cfg.generator, cfg.spatial_dims, channels_last_layout=channels_last_layout) for _ in "ab"]
    return {"G_ab": gen[0], "G_ba": gen[1],
            "D_a": build_discriminator(cfg.discriminator, cfg.spatial_dims),
            "D_b": build_discriminator(cfg.discriminator, cfg.spatial_dims)}
