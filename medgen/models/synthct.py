"""The contrast-agnostic CT synthesizer (task ``synthct``), as training and inference share it.

An MRI -> CT translator trained on labelled CTs alone: each CT patch is painted with random contrasts from
its label map (:mod:`medgen.data.synthseg`) and the generator learns to give the CT back (L1 in the CT
window). With a frozen CT segmenter (``segmenter``, a 2D medgen segmenter run, e.g. the user's own) the
generator is also trained *through* it: the segmenter must find the CT's liver in the generator's output,
so the synthetic CTs are made for that segmenter. At inference the MRI goes through the MRI preset and the
generator (``mri2ct``); there is no reverse generator (no cycle error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medgen.config import InferenceConfig, LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.models.cyclegan import GeneratorConfig
from medgen.models.segmenter import SynthSegConfig, TargetDataConfig
from medgen.networks.generators import build_discriminator, build_generator

GENERATORS = {"mri2ct": "G"}


@dataclass
class SynthCTLossConfig:
    lambda_l1: float = 10.0  # L1 between the generator's output and the real CT ([-1, 1] window units)
    lambda_seg: float = 1.0  # Dice + cross-entropy of the frozen segmenter's liver on the output (0: off)
    # the segmentation loss on the painted CTs too (false: on the target MRIs alone, the painted CTs under L1 alone;
    # needs target MRIs)
    seg_painted: bool = True
    # LSGAN weight of a PatchGAN that tells real CT patches from the generator's output on the target MRIs (on
    # every sample without target MRIs): texture and contrast of a real CT where no CT is there to match (0: off)
    lambda_gan: float = 0.0
    # what that PatchGAN judges: "mri", the outputs on the target MRIs (as above); "pairs", the outputs on the synthetic
    # pairs' renderings (``pairs.ct2mri``), whose L1 to their own CT holds the HU while the GAN asks for a CT's texture
    gan_on: str = "mri"
    # weight of a structure loss on those same outputs: 1 - the local squared correlation (MONAI's LNCC, blind to a
    # contrast's sign) of the generator's output with its input in ``structure_kernel``-voxel windows, so that the
    # synthetic CT keeps the MRI's edges where no CT is there to match (0: off)
    lambda_structure: float = 0.0
    structure_kernel: int = 7
    # weight of |the output's mean inside the target MRIs' (pseudo-labelled) liver - the CTs' liver level| (the median
    # over the CTs of their liver's mean, in the CT window's units): the liver's HU anchored where no CT is there (0: off)
    lambda_liver: float = 0.0
    # weight of the L1 between the target MRIs' outputs and a frozen translator's (``hold``: a medgen mri2ct translator
    # run), both blurred by a Gaussian of ``hold_sigma`` voxels: that translator's HU and organs held at the coarse
    # scale, the finer texture (a PatchGAN's) left free (0: off)
    lambda_hold: float = 0.0
    hold: str | None = None
    hold_sigma: float = 2.0

    def __post_init__(self) -> None:
        if self.gan_on not in ("mri", "pairs"):
            raise ValueError("gan_on", f"must be mri or pairs, not {self.gan_on!r}")
        if self.lambda_hold > 0 and not (self.hold and self.hold_sigma > 0):
            raise ValueError("hold", "lambda_hold > 0 holds the outputs to a translator: set loss.hold to its run "
                                     f"and loss.hold_sigma > 0 (not {self.hold!r}, {self.hold_sigma})")


@dataclass
class SynthCTDiscriminatorConfig:
    ndf: int = 32  # filters of the first layer (MONAI PatchDiscriminator, instance norm)
    n_layers: int = 3
    lr: float = 2e-4  # Adam(lr, 0.5, 0.999), constant (the generator's schedule is optim's)


@dataclass
class SynthCTPairsConfig:
    # a CT -> MRI translator run (task synthmri, e.g. a fit's ct2mri/), frozen: synthetic pairs, a CT rendered in the
    # MRIs' contrast by it as the input and the CT itself as the L1 target, so that the generator learns the CT's
    # texture and contrast from inputs that look like the MRIs it is to translate (None: painted CTs alone)
    ct2mri: str | None = None
    prob: float = 0.5  # fraction of the CT samples whose input is that rendering instead of the painted copy
    # each structure of a rendering (its generation labels: the labelled organs and the body's intensity classes)
    # scaled by its own random gain, log-uniform in [1 / organ_gain, organ_gain] (1: off): the MRIs' organ contrast,
    # which a rendering may miss (a T2 spleen is twice as bright as its liver), is not learnt as HU
    organ_gain: float = 1.0
    # which structures get those gains: all (the labelled organs and the body's intensity classes); organs (the
    # labelled ones alone: the rendering's fat, muscle and bone keep the contrast learnt from the MRIs)
    gain_on: str = "all"

    def __post_init__(self) -> None:
        if self.gain_on not in ("all", "organs"):
            raise ValueError("gain_on", f"must be all or organs, not {self.gain_on!r}")


@dataclass
class SynthCTConfig:
    task: str = "synthct"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)  # CTs, their labels, liver = class 1
    segmenter: str | None = None  # frozen 2D medgen segmenter run for the consistency loss (None: L1 only)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(name="unet", ngf=16))
    synthseg: SynthSegConfig = field(default_factory=lambda: SynthSegConfig(prob=1.0))
    # real MRIs with pseudo-labels (a fit's: the shipped mri-liver's masks of its MRIs, in class values) mixed in at
    # ``target.ratio``: no CT to match there (no L1), the frozen segmenter must find the pseudo-label's liver in the
    # generator's output, so the translator sees the MRIs it is to translate (needs ``segmenter``)
    target: TargetDataConfig = field(default_factory=TargetDataConfig)
    pairs: SynthCTPairsConfig = field(default_factory=SynthCTPairsConfig)
    spatial: bool = True  # random rotation and scaling of the training patches
    # exponential moving average of the generator's weights (0: off); inference uses the average (``G_ema``)
    ema_decay: float = 0.0
    loss: SynthCTLossConfig = field(default_factory=SynthCTLossConfig)
    discriminator: SynthCTDiscriminatorConfig = field(default_factory=SynthCTDiscriminatorConfig)  # lambda_gan > 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def build_nets(cfg: SynthCTConfig, channels_last_layout: bool = True) -> dict[str, torch.nn.Module]:
    """``G``, the generator (any contrast -> CT in [-1, 1]), and with ``loss.lambda_gan`` > 0 ``D``, the
    discriminator, by their checkpoint names.

    >>> list(build_nets(SynthCTConfig(generator=GeneratorConfig(name="unet", ngf=4))))
    ['G']
    >>> list(build_nets(SynthCTConfig(generator=GeneratorConfig(name="unet", ngf=4), loss=SynthCTLossConfig(lambda_gan=1))))
    ['G', 'D']
    """
    nets = {"G": build_generator(cfg.generator, cfg.spatial_dims, channels_last_layout=channels_last_layout)}
    if cfg.loss.lambda_gan > 0:
        nets["D"] = build_discriminator(cfg.discriminator, cfg.spatial_dims)
    return nets
