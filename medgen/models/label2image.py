"""The learned label -> image generator (task ``label2image``, pix2pix-style), as training and sampling share it.

A generator turns a label map (one channel per class of ``data.label_map``, background included) into an
image of the training modality; a PatchGAN discriminator judges (label map, image) pairs, and an L1 term ties
the output to the real image of the same labels (Isola et al. 2017, pix2pix: lambda_l1 100, LSGAN). Label
maps to render at sampling time come from ``labels``: a VAE or GAN run (their synthetic label maps: a fully
synthetic image + label pair), else the training label maps. With ``body_classes`` the unlabelled body is
split into that many intensity classes (SynthSeg's generation labels, 1D k-means of the image) that become
extra generator inputs, so that the generator paints fat, muscle and bone where the map says rather than
inventing the body around the organs; the written label maps keep the organ classes only. With ``class_means``
the generator also gets each class's mean intensity as an input (a piecewise-constant image): pix2pix is
deterministic, so from training CTs of different contrast phases (a non-contrast and a portal-venous one) it
paints every map in an average phase that no scan has; given the means (the training patch's own in training,
one training volume's per map in sampling, from the table ``class_means.json`` that the run stores when training
ends) it renders one phase. The step is in :mod:`medgen.engines.label2image`, sampling in
:mod:`medgen.inference.synthesizers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medgen.config import LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.data.synthseg import generation_labels
from medgen.io import atomic_write, read_run_artifact
from medgen.keys import Keys
from medgen.models.cyclegan import DiscriminatorConfig, GeneratorConfig
from medgen.networks.generators import build_discriminator, build_generator

CLASS_MEANS_FILE = "class_means.json"


@dataclass
class Label2ImageLossConfig:
    lambda_l1: float = 100.0  # L1 to the real image ([-1, 1] units), pix2pix's weight
    gan_mode: str = "lsgan"  # lsgan (MSE) | vanilla (BCE with logits)


@dataclass
class Label2ImageConfig:
    task: str = "label2image"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=lambda: LabelledDataConfig(patch_size=[128, 128]))
    # sampling: label maps from this VAE/GAN run (None: the training label maps); the default of `medgen synth --labels`
    labels: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(name="unet", ngf=32, output="linear"))
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(ndf=32, n_layers=3))
    spatial: bool = True  # random rotation and scaling of the training patches (label maps with their images)
    # > 0: the unlabelled body as this many intensity classes, extra generator inputs (needs labels: null)
    body_classes: int = 0
    # the mean intensity of each class as one more generator (and discriminator) input: the training patch's own
    # in training, one training volume's (drawn per map) in sampling, so a map is rendered in one contrast phase
    class_means: bool = False
    loss: Label2ImageLossConfig = field(default_factory=Label2ImageLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=[0.5, 0.999], decay_from=0.5))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.body_classes < 0:
            raise ValueError("body_classes", f"must be 0 or more, not {self.body_classes}")
        if self.body_classes and self.labels:
            raise ValueError("body_classes", "needs labels: null (a VAE/GAN run's maps have no body classes)")


def n_organ_channels(cfg: Label2ImageConfig) -> int:
    """Background plus each class of ``data.label_map``."""
    return max(cfg.data.label_map.values(), default=1) + 1


def n_label_channels(cfg: Label2ImageConfig) -> int:
    """Generator inputs: background, each class of ``data.label_map``, then the ``body_classes``.

    >>> n_label_channels(Label2ImageConfig(data=LabelledDataConfig(label_map={1: 1, 2: 2, 7: 3})))
    4
    >>> n_label_channels(Label2ImageConfig(data=LabelledDataConfig(label_map={1: 1, 2: 2, 7: 3}), body_classes=4))
    8
    """
    return n_organ_channels(cfg) + cfg.body_classes


def n_inputs(cfg: Label2ImageConfig) -> int:
    """Generator inputs: the label channels, plus the class-mean image with ``class_means``."""
    return n_label_channels(cfg) + int(cfg.class_means)


def with_body_classes(cfg: Label2ImageConfig, volumes: list[dict]) -> list[dict]:
    """The generator's label maps of cached volumes: organ classes, then the unlabelled body's ``body_classes``
    intensity classes numbered from :func:`n_organ_channels` (the volumes as they are when ``body_classes`` is 0)."""
    if not cfg.body_classes:
        return volumes
    first = n_organ_channels(cfg)
    out = []
    for v in volumes:
        label = v[Keys.LABEL]
        maps = generation_labels(v[Keys.IMAGE][0].numpy(), label[0].numpy(), cfg.body_classes, first)
        out.append({**v, Keys.LABEL: torch.from_numpy(maps).to(label.dtype)[None]})
    return out


def volume_class_means(cfg: Label2ImageConfig, volumes: list[dict]) -> torch.Tensor:
    """``(V, C)``: the mean image intensity of each of the ``C`` label channels in each cached volume (its label
    maps as the generator sees them, body classes included); a class a volume lacks gets the mean over the
    volumes that have it (0 when none has).

    >>> vol = {Keys.IMAGE: torch.tensor([[[[-1.0, 0.5, 0.7]]]]), Keys.LABEL: torch.tensor([[[[0, 1, 1]]]])}
    >>> volume_class_means(Label2ImageConfig(data=LabelledDataConfig(label_map={1: 1, 2: 2})), [vol])[0].tolist()
    [-1.0, 0.6000000238418579, 0.0]
    """
    c = n_label_channels(cfg)
    sums, counts = torch.zeros(len(volumes), c, dtype=torch.float64), torch.zeros(len(volumes), c, dtype=torch.float64)
    for i, v in enumerate(volumes):
        labels = v[Keys.LABEL].flatten().long()
        labels = torch.where((labels >= 0) & (labels < c), labels, torch.zeros_like(labels))
        sums[i] = torch.bincount(labels, v[Keys.IMAGE].flatten().double(), minlength=c)
        counts[i] = torch.bincount(labels, minlength=c).double()
    means = sums / counts.clamp_min(1)
    fallback = sums.sum(0) / counts.sum(0).clamp_min(1)
    return torch.where(counts > 0, means, fallback).float()


def write_class_means(run_dir: str | Path, table: torch.Tensor) -> Path:
    """``RUN/class_means.json``: the :func:`volume_class_means` table of the training volumes, which a
    ``class_means`` run's sampling draws from (written once, when training ends)."""
    text = json.dumps({"class_means": table.tolist()}) + "\n"
    return atomic_write(Path(run_dir) / CLASS_MEANS_FILE, lambda tmp: Path(tmp).write_text(text))


def read_class_means(run_dir: str | Path, channels: int) -> torch.Tensor:
    """``(V, channels)`` float32: the table of :func:`write_class_means`; missing or not such a table: a
    ``MedgenError`` that says how to write it again."""

    def parse(path: Path) -> torch.Tensor:
        table = torch.tensor(json.loads(path.read_text())["class_means"], dtype=torch.float32)
        if table.dim() != 2 or table.shape[0] == 0 or table.shape[1] != channels:
            raise ValueError(f"a table of shape {list(table.shape)}, not (volumes, {channels})")
        return table

    return read_run_artifact(run_dir, CLASS_MEANS_FILE, "the training volumes' class means a class_means run renders "
                             "in", parse)


def class_mean_image(cond: torch.Tensor, image: torch.Tensor | None = None,
                     means: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot maps ``(B, C, ...)`` -> ``(B, 1, ...)``: each voxel its class's mean intensity, from ``means``
    ``(B, C)`` or, without them, of ``image`` ``(B, 1, ...)`` within each map.

    >>> cond = one_hot(torch.tensor([[[0, 1, 1]]]), 2)
    >>> class_mean_image(cond, torch.tensor([[[-1.0, 0.2, 0.4]]])).tolist()
    [[[-1.0, 0.30000001192092896, 0.30000001192092896]]]
    >>> class_mean_image(cond, means=torch.tensor([[-0.5, 0.9]])).tolist()
    [[[-0.5, 0.8999999761581421, 0.8999999761581421]]]
    """
    dims = tuple(range(2, cond.dim()))
    if means is None:
        means = (cond * image).sum(dims) / cond.sum(dims).clamp_min(1.0)
    return (cond * means.to(cond).view(*means.shape, *([1] * len(dims)))).sum(1, keepdim=True)


def organ_labels(cfg: Label2ImageConfig, maps: torch.Tensor) -> torch.Tensor:
    """Rendered label maps without their body classes: the organ classes of the written pairs."""
    return torch.where(maps < n_organ_channels(cfg), maps, torch.zeros_like(maps))


def one_hot(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Integer label maps ``(B, 1, ...)`` -> ``(B, channels, ...)`` in {0, 1} (values beyond: background).

    >>> one_hot(torch.tensor([[[0, 2, 5]]]), 3)[0].tolist()
    [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    labels = labels.long().clamp_min(0)
    labels = torch.where(labels < channels, labels, torch.zeros_like(labels))
    out = torch.zeros((labels.shape[0], channels, *labels.shape[2:]), device=labels.device)
    return out.scatter_(1, labels, 1.0)


def build_nets(cfg: Label2ImageConfig) -> dict[str, torch.nn.Module]:
    """``G`` (label channels -> image in [-1, 1]) and ``D`` (label channels + image -> patch logits).

    >>> sorted(build_nets(Label2ImageConfig(generator=GeneratorConfig(name="unet", ngf=4))))
    ['D', 'G']
    """
    k = n_inputs(cfg)
    return {"G": build_generator(cfg.generator, cfg.spatial_dims, k, 1, channels_last_layout=False),
            "D": build_discriminator(cfg.discriminator, cfg.spatial_dims, k + 1)}
