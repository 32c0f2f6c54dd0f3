"""The CT -> MRI translator of ``medgen fit mri-ct`` (task ``synthmri``), as training and inference share it.

A generator turns real CT patches into the fit's MRI contrast. Nothing pairs them, so two things judge it:

- a PatchGAN (LSGAN) that tells the fit's real MRI patches from the generator's output: the contrast and texture of
  those MRIs;
- the fit's own MRI -> CT translator (``translator``, a ``synthct`` run), frozen: it must give the CT back from the
  generator's output (L1, the cycle of a CycleGAN with its reverse half already trained). That translator was
  trained on CTs painted in random contrasts, so it reads any contrast and the cycle keeps the anatomy, not the
  CT's contrast.

With ``label_input`` the generator also reads the CT's label map (one channel per class of ``data.label_map``), so
that a labelled organ can take its own MRI intensity (a T2 liver darker than the spleen of the same HU); translating
then needs the CT's labels (``medgen translate --labels``). The discriminator then sees the liver too (class 1: the
CT's label beside the generator's output, the pseudo-label beside a real MRI), so it judges the liver's contrast
against what surrounds it; without that it judged patches blind to the organs, and the generator drew a liver
brighter than the spleen and kidneys, the reverse of a T2.

At inference a CT goes through the CT preset and the generator (``ct2mri``); the output is written in the training
MRIs' median intensity range (``norm.json``'s ``mri_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medgen.config import InferenceConfig, LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.models.cyclegan import GeneratorConfig
from medgen.models.segmenter import TargetDataConfig
from medgen.models.synthct import SynthCTDiscriminatorConfig
from medgen.networks.generators import build_discriminator, build_generator

GENERATORS = {"ct2mri": "G"}


@dataclass
class SynthMRILossConfig:
    lambda_gan: float = 1.0  # LSGAN weight of the PatchGAN on the generator's output against the real MRIs
    lambda_cycle: float = 10.0  # L1 between the frozen MRI -> CT translator's output on G(ct) and the CT ([-1, 1])
    # |mean of G(ct) inside the CT's liver (class 1) - the real MRIs' liver level| (needs target.labels): the level is
    # the median over the target MRIs of the mean inside their pseudo-labelled liver, so the liver gets the fit MRIs'
    # own intensity (the discriminator alone drew it brighter than the spleen, the reverse of a T2)
    lambda_liver: float = 0.0


@dataclass
class SynthMRIConfig:
    task: str = "synthmri"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)  # CTs (labels: where patches are drawn)
    translator: str | None = None  # the frozen MRI -> CT translator run (task synthct) of the cycle loss
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(name="unet", ngf=16))
    label_input: bool = False  # the generator also reads the CT's classes (data.label_map), one channel each
    # the real MRIs (a fit's: with the shipped mri-liver's masks, which pick where patches are drawn): the
    # discriminator's real samples, ``target.ratio`` of every batch
    target: TargetDataConfig = field(default_factory=lambda: TargetDataConfig(ratio=0.5))
    spatial: bool = True  # random rotation and scaling of the training patches
    ema_decay: float = 0.0  # exponential moving average of the generator's weights (0: off); inference uses it
    loss: SynthMRILossConfig = field(default_factory=SynthMRILossConfig)
    discriminator: SynthCTDiscriminatorConfig = field(default_factory=SynthCTDiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def build_nets(cfg: SynthMRIConfig, channels_last_layout: bool = True) -> dict[str, torch.nn.Module]:
    """``G``, the generator (CT -> MRI in [-1, 1]), and ``D``, the discriminator, by their checkpoint names.

    >>> list(build_nets(SynthMRIConfig(generator=GeneratorConfig(name="unet", ngf=4))))
    ['G', 'D']
    """
    return {"G": build_generator(cfg.generator, cfg.spatial_dims, 1 + label_classes(cfg),
                                 channels_last_layout=channels_last_layout),
            "D": build_discriminator(cfg.discriminator, cfg.spatial_dims, 1 + min(label_classes(cfg), 1))}


def label_classes(cfg) -> int:
    """How many label channels a translator run's generator reads besides the image (0: the image alone)."""
    return max(cfg.data.label_map.values(), default=0) if getattr(cfg, "label_input", False) else 0


def with_labels(x: torch.Tensor, label: torch.Tensor, classes: int) -> torch.Tensor:
    """``(N, C, *spatial)`` images and their ``(N, 1, *spatial)`` class maps -> the images with one channel per class
    ``1 .. classes`` (1 inside it, 0 elsewhere), the generator's input of a ``label_input`` run.

    >>> with_labels(torch.zeros(1, 1, 2), torch.tensor([[[0, 2]]]), 2).tolist()
    [[[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]]
    """
    return torch.cat([x, *[(label == c).to(x.dtype) for c in range(1, classes + 1)]], 1)
