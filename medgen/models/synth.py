"""Joint image + label synthesizers (VAE, GAN) as training and inference share them: configs, the
sampling network, the ``1 + K`` channel layout of a sample, and the run artifacts: ``synth.json``, and a VAE's
``latents.pt`` (what its posterior and mixture sampling fit, computed once when training ends).

The training steps are in :mod:`medgen.engines.synth`, sampling in :mod:`medgen.inference.synthesizers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medgen.config import LabelledDataConfig, OptimConfig, PreprocessConfig, TrainConfig
from medgen.data.patches import labelled_patches
from medgen.io import atomic_write, read_run_artifact
from medgen.keys import Keys
from medgen.networks.synth import JointGenerator, JointVAE

SYNTH_FILE = "synth.json"
LATENTS_FILE = "latents.pt"
MIXTURE_PATCHES = 2000  # training patches a VAE encodes when its training ends (drawn with train.seed)


@dataclass
class VAEModelConfig:
    latent_size: int = 64
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # encoder filters (stride 2 each)
    num_res_units: int = 1
    # the sampling keys (temperature, sampling, mixture_components, keep_largest) are the run's defaults of the
    # `medgen synth` options of the same names
    # sampling temperature: latents drawn from N(0, temperature^2); < 1 trades diversity for samples nearer the
    # data (fewer stray fragments), as in Glow and NVAE; MS-SSIM diversity is reported beside plausibility
    temperature: float = 1.0
    # prior: latents from N(0, T^2), new anatomy; posterior: each sample decodes mu + T * sigma * noise around the
    # encoding of one training patch (of the MIXTURE_PATCHES stored in latents.pt), a variation of that real anatomy;
    # mixture: latents from a Gaussian mixture fitted to the training patches' encodings (ex-post density
    # estimation, Ghosh et al. 2020), each component's spread times T: new anatomy where the data lies, not in the
    # prior's holes
    sampling: str = "prior"
    mixture_components: int = 10  # components of the mixture (full covariance), fitted when training ends
    # sampled label maps keep each class's largest face-connected component (the plausibility rule's connectivity);
    # the voxels of its other components become background, in the map only (a VAE/GAN image keeps them)
    keep_largest: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in ("prior", "posterior", "mixture"):
            raise ValueError("sampling", f"must be prior, posterior or mixture, not {self.sampling!r}")
        if self.mixture_components < 1:
            raise ValueError("mixture_components", f"must be at least 1, not {self.mixture_components}")


@dataclass
class VAELossConfig:
    lambda_image: float = 1.0  # L1 on the image channel
    lambda_label: float = 1.0  # weight of the label term
    # categorical: one class per voxel (softmax over a background logit fixed at 0 and the K class logits,
    # cross-entropy), so organs never overlap and boundaries are an argmax; independent: a BCE per class
    label_loss: str = "categorical"
    # with categorical: + this weight x a soft Dice over the batch per class (MONAI DiceLoss, background out), so
    # small organs (kidneys, aorta: a few voxels at 6 mm) weigh as much as the liver instead of vanishing
    lambda_dice: float = 0.0
    beta: float = 0.5  # KL weight (per voxel), reached after the warm-up
    kl_warmup: float = 0.3  # fraction of train.iterations over which the KL weight grows from 0 to beta
    lambda_adv: float = 0.0  # optional adversarial term (PatchGAN, LSGAN); 0 disables
    ndf: int = 32  # discriminator filters (only with lambda_adv > 0)

    def __post_init__(self) -> None:  # from_dict turns this into a one-line error naming the file and key
        if self.label_loss not in ("categorical", "independent"):
            raise ValueError("label_loss", f"must be categorical or independent, not {self.label_loss!r}")


@dataclass
class VAEConfig:
    task: str = "vae"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=lambda: LabelledDataConfig(patch_size=[64, 64], pos_prob=1.0))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=[0.9, 0.999], decay_from=0.7))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class GANModelConfig:
    latent_size: int = 128
    channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32])  # generator: from the 1/16 grid up
    disc_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # discriminator (stride 2 each)
    spectral_norm: bool = True  # spectral normalisation of every discriminator layer
    ema_decay: float = 0.999  # EMA of generator weights (sampling uses it)
    temperature: float = 1.0  # latents drawn from N(0, temperature^2) when sampling (the VAE's key)
    # categorical: one class per voxel (a softmax with a background logit 0); independent: a tanh per class (label
    # channels can overlap; runs trained before this key)
    label_output: str = "independent"
    keep_largest: bool = False  # as the VAE's: sampled maps keep each class's largest component

    def __post_init__(self) -> None:
        if self.label_output not in ("categorical", "independent"):
            raise ValueError("label_output", f"must be categorical or independent, not {self.label_output!r}")


@dataclass
class GANLossConfig:
    r1_gamma: float = 1.0  # R1 gradient penalty on real samples (0 disables)
    r1_every: int = 4  # lazy regularisation: apply R1 every N steps, scaled by N


@dataclass
class GANConfig:
    task: str = "gan"
    spatial_dims: int = 2
    data: LabelledDataConfig = field(default_factory=lambda: LabelledDataConfig(patch_size=[64, 64], pos_prob=1.0))
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: GANModelConfig = field(default_factory=GANModelConfig)
    loss: GANLossConfig = field(default_factory=GANLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=[0.0, 0.99], decay_from=1.0))
    train: TrainConfig = field(default_factory=TrainConfig)


def categorical_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, ...)`` class logits -> ``(B, 1 + K, ...)`` with the background logit 0 in front: the softmax of a
    categorical label map whose argmax is the class of :func:`split_joint` (the largest positive logit, else 0).

    >>> categorical_logits(torch.tensor([[[2.0, -1.0]]])).tolist()
    [[[0.0, 0.0], [2.0, -1.0]]]
    """
    return torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)


def n_foreground(cfg: VAEConfig | GANConfig) -> int:
    """Foreground classes K (label channels of a sample).

    >>> n_foreground(VAEConfig(data=LabelledDataConfig(label_map={5: 1, 6: 2})))
    2
    """
    return max(cfg.data.label_map.values(), default=1)


def joint_tensor(batch: Mapping, n_classes: int, device: torch.device) -> torch.Tensor:
    """``(B, 1 + K, ...)``: the image, then each foreground class as a channel in {-1, 1}.

    >>> x = joint_tensor({Keys.IMAGE: torch.zeros(1, 1, 2), Keys.LABEL: torch.tensor([[[0, 2]]])}, 2, "cpu")
    >>> x[0].tolist()
    [[0.0, 0.0], [-1.0, -1.0], [-1.0, 1.0]]
    """
    image = batch[Keys.IMAGE].to(device, non_blocking=True).float()
    label = batch[Keys.LABEL].to(device, non_blocking=True)
    classes = torch.arange(1, n_classes + 1, device=device).view(1, -1, *([1] * (label.dim() - 2)))
    return torch.cat([image, (label == classes).float() * 2 - 1], dim=1)


def split_joint(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``(B, 1 + K, ...)`` in [-1, 1] -> image ``(B, ...)`` and an integer label map ``(B, ...)``
    (the class of the largest positive label channel, 0 where none is positive); inverse of :func:`joint_tensor`.

    >>> image, labels = split_joint(torch.tensor([[[0.5, 0.1], [-1.0, 0.3], [-0.2, 0.9]]]))
    >>> labels.tolist()
    [[0, 2]]
    """
    fg = samples[:, 1:]
    labels = torch.where(fg.max(1).values > 0, fg.argmax(1) + 1, 0).to(torch.uint8)
    return samples[:, 0], labels


def build_model(cfg: VAEConfig | GANConfig) -> torch.nn.Module:
    """The sampling network: a :class:`JointVAE` (``vae``) or :class:`JointGenerator` (``gan``), saved as ``model``."""
    shape = (1 + n_foreground(cfg), *cfg.data.patch_size)
    if cfg.task == "vae":
        m = cfg.model
        return JointVAE(cfg.spatial_dims, shape, m.latent_size, m.channels, [2] * len(m.channels), m.num_res_units)
    return JointGenerator(shape, cfg.model.latent_size, cfg.model.channels, cfg.model.label_output == "categorical")


def synth_artifact(spacings: Sequence[Sequence[float]], mri_scales: Sequence[Sequence[float]]) -> dict:
    """``RUN/synth.json``: the training volumes' median voxel size (written into samples) and MRI scale.

    >>> synth_artifact([(3, 3, 3), (2, 2, 4)], [])
    {'spacing': [2.5, 2.5, 3.5], 'n_training_volumes': 2, 'mri_scale': None}
    """
    spacing = np.median(np.asarray(spacings, float), axis=0)
    return {"spacing": [float(s) for s in spacing], "n_training_volumes": len(spacings),
            "mri_scale": np.median(np.asarray(mri_scales, float), axis=0).tolist() if len(mri_scales) else None}


def synth_artifacts(volumes: Sequence[Mapping]) -> dict[str, dict]:
    """The run artifacts of a synthesizer trained on cached ``volumes``: ``{SYNTH_FILE: synth_artifact(...)}``."""
    scale_key = f"{Keys.IMAGE}_{Keys.SCALE}"
    return {SYNTH_FILE: synth_artifact([v[f"{Keys.IMAGE}_{Keys.SPACING}"] for v in volumes],
                                       [v[scale_key] for v in volumes if scale_key in v])}


def read_synth(run_dir: Path) -> dict:
    """``RUN/synth.json`` (empty for runs without it)."""
    path = Path(run_dir) / SYNTH_FILE
    return json.loads(path.read_text()) if path.exists() else {}


@torch.inference_mode()
def encode_patches(model: torch.nn.Module, cfg: VAEConfig, patches, n: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
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


def fit_mixture(mu: torch.Tensor, components: int) -> dict[str, torch.Tensor]:
    """A full-covariance Gaussian mixture of ``components`` (scikit-learn, ``reg_covar`` 1e-4, ``random_state`` 0:
    the same fit of the same latents) fitted to latents ``mu`` ``(P, L)``: its ``mixture_weights`` ``(C,)``,
    ``mixture_means`` ``(C, L)`` and ``mixture_covariances`` ``(C, L, L)``, float64.

    >>> fit = fit_mixture(torch.tensor([[0.0], [2.0]]), 1)
    >>> round(float(fit["mixture_means"][0, 0]), 6), round(float(fit["mixture_covariances"][0, 0, 0]), 6)
    (1.0, 1.0001)
    """
    from sklearn.mixture import GaussianMixture  # scikit-learn: 0.5 s to import, for VAEs only

    gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=0).fit(mu.double().numpy())
    return {"mixture_weights": torch.from_numpy(gmm.weights_), "mixture_means": torch.from_numpy(gmm.means_),
            "mixture_covariances": torch.from_numpy(gmm.covariances_)}


def fit_latents(model: torch.nn.Module, cfg: VAEConfig, volumes: Sequence[Mapping],
                device: torch.device) -> dict[str, torch.Tensor]:
    """What a VAE's sampling fits, once, when its training ends (``RUN/latents.pt``): the posteriors ``mu`` and
    ``logvar`` ``(P, L)`` of ``MIXTURE_PATCHES`` training patches drawn from ``volumes`` with ``train.seed``, and
    the ``model.mixture_components`` mixture of their means (:func:`fit_mixture`)."""
    patches = labelled_patches(volumes, cfg.data, cfg.spatial_dims, cfg.train.seed)
    training = model.training
    model.eval()
    try:
        mu, logvar = encode_patches(model, cfg, patches, MIXTURE_PATCHES, device)
    finally:
        model.train(training)
    return {"mu": mu, "logvar": logvar, **fit_mixture(mu, cfg.model.mixture_components)}


def write_latents(run_dir: str | Path, fitted: Mapping[str, torch.Tensor]) -> Path:
    """``RUN/latents.pt``: the tensors of :func:`fit_latents` (read back with ``weights_only``), written atomically."""
    return atomic_write(Path(run_dir) / LATENTS_FILE, lambda tmp: torch.save(dict(fitted), tmp))


def read_latents(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """``RUN/latents.pt`` (:func:`fit_latents`), read with ``weights_only``; missing or unreadable: a ``MedgenError``
    that says how to write it again."""

    def parse(path: Path) -> dict[str, torch.Tensor]:
        fitted = torch.load(path, map_location="cpu", weights_only=True)
        if not {"mu", "logvar", "mixture_weights", "mixture_means", "mixture_covariances"} <= set(fitted):
            raise ValueError(f"holds {sorted(fitted)}")
        return fitted

    return read_run_artifact(run_dir, LATENTS_FILE, "the encodings a VAE's posterior and mixture sampling need", parse)
