"""Synthesizer runs behind one interface, :class:`Synthesizer`, with a registry of backends keyed by task.

:data:`SYNTHESIZERS` maps each synthesizer task of :data:`medgen.models.registry.TASKS` to its backend: a class
with a constructor ``(run_dir, cfg, device, options, volumes)`` and the :class:`Synthesizer` members. Sampling
(:mod:`medgen.inference.synthesize`) and evaluation (:mod:`medgen.evaluation.synthesis`) never ask which task
a run is; a new synthesizer is its backend and one line here.

- ``vae``, ``gan`` (:class:`JointSynthesizer`): image and label map drawn together from the latent space; a VAE's
  posterior and mixture sampling read the encodings the run stored when its training ended (``latents.pt``).
- ``label2image`` (:class:`Label2ImageSynthesizer`): label maps, a VAE/GAN run's or the training label maps,
  rendered by the generator; with ``class_means`` in the class means of one training volume, from the table the
  run stored when its training ended (``class_means.json``).

How a run is sampled is :class:`SamplingOptions`, the options of ``medgen synth``, whose defaults are the run's
config keys. Nothing here reads the training data, except a label2image run whose label maps *are* its
training label maps.

>>> synth = load_synthesizer("runs/vae", "cpu", SamplingOptions(temperature=0.7))  # doctest: +SKIP
>>> images, labels = synth.sample(8, seed=0)  # HU (CT) or MRI units, integer label maps  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medgen.data.patches import labelled_patches
from medgen.data.volumes import class_translation, config_volumes, remap_labels
from medgen.errors import MedgenError
from medgen.keys import Keys, Modality
from medgen.models.label2image import (build_nets, class_mean_image, n_label_channels, one_hot, organ_labels,
                                      read_class_means, with_body_classes)
from medgen.models.run import EMA_SUFFIX, load_averages, load_run, load_weights
from medgen.models.synth import build_model, fit_mixture, n_foreground, read_latents, read_synth, split_joint
from medgen.runtime import resolve_device
from medgen.transforms import keep_largest_components, unit_to_ct, unit_to_mri

TRAINING_LABELS = "training"  # SamplingOptions.labels: a label2image run's own training label maps


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample a synthesizer run; each None: the run's own config key of that name.

    Args:
        temperature: ``model.temperature`` (VAE, GAN): latents from N(0, T^2), a mixture component's spread or a
            posterior's sigma times T.
        sampling: ``model.sampling`` (VAE): ``prior`` | ``posterior`` | ``mixture``.
        mixture_components: ``model.mixture_components`` (VAE); a count other than the stored fit's is fitted on
            the stored encodings.
        keep_largest: ``model.keep_largest`` (VAE, GAN): each class's largest component in every sampled map.
        labels: ``labels`` (label2image): a VAE/GAN run whose maps it renders, or ``training`` (its training label
            maps). The four settings above then go to that label-map run.
    """

    temperature: float | None = None
    sampling: str | None = None
    mixture_components: int | None = None
    keep_largest: bool | None = None
    labels: str | None = None

    def model_keys(self) -> dict[str, Any]:
        """The given VAE/GAN settings, by their ``model`` key.

        >>> SamplingOptions(temperature=0.5, labels="runs/vae").model_keys()
        {'temperature': 0.5}
        """
        return {k: v for k in ("temperature", "sampling", "mixture_components", "keep_largest")
                if (v := getattr(self, k)) is not None}


@dataclass
class Draw:
    """``n`` pairs of a synthesizer in its networks' units.

    Args:
        images: ``(n, 1, *spatial)`` in [-1, 1].
        labels: ``(n, *spatial)`` integer label maps, as written.
        raw_labels: the network's maps before ``keep_largest`` cleaned them (None: not cleaned).
        channels: ``(n, K, *spatial)`` label channels that can claim one voxel twice (independent channels), > 0
            meaning the class; None when each voxel has one class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    raw_labels: torch.Tensor | None = None
    channels: np.ndarray | None = None


class Synthesizer(Protocol):
    """What ``medgen synth``, its judge and ``evaluate synthesis`` need of a synthesizer run."""

    cfg: Any  # the run's config, the sampling options applied
    spacing: list[float]  # the training data's voxel size, written into the samples
    evaluation_seed_offset: int  # evaluate synthesis draws with seed + this (see Label2ImageSynthesizer)

    def draw(self, n: int, seed: int) -> Draw:
        """``n`` pairs in the networks' units; the same seed, the same pairs."""

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pairs: images ``(n, *spatial)`` in HU (CT) or MRI units and their integer label maps."""

    def settings(self) -> dict:
        """The sampling settings a report records."""


class RunSynthesizer:
    """What every synthesizer run shares: its config with the options applied (:meth:`configure`), ``synth.json``
    (voxel size, MRI scale) and the conversion of a draw into HU or MRI units."""

    evaluation_seed_offset = 0
    label_source = False  # draws label maps of its own, which a label2image run can render (its ``labels``)
    renders_label_maps = False  # renders another run's label maps (a label-map synthesizer's, ``labels``)

    def __init__(self, run_dir: str | Path, cfg, device: str | torch.device = "auto",
                 options: SamplingOptions | None = None, volumes: list | None = None):
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.options = options or SamplingOptions()
        self.cfg = self.configure(cfg, self.options)
        self.meta = read_synth(self.run_dir)
        self.spacing = self.meta.get("spacing") or [1.0, 1.0, 1.0]

    def configure(self, cfg, options: SamplingOptions):
        return cfg

    def _replaced(self, section, keys: dict):
        """``dataclasses.replace`` of a config section, its checks turned into one line naming the option."""
        try:
            return dataclasses.replace(section, **keys)
        except ValueError as exc:  # a __post_init__ check: (key, problem)
            key, problem = exc.args if len(exc.args) == 2 else ("", str(exc))
            raise MedgenError(self.run_dir, f"--{key.replace('_', '-')}: {problem}") from None

    def draw(self, n: int, seed: int) -> Draw:
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        drawn = self.draw(n, seed)
        image = drawn.images[:, 0]
        if self.cfg.data.modality == Modality.CT:
            image = unit_to_ct(image, self.cfg.preprocess.ct_window)
        else:
            image = unit_to_mri(image, *(self.meta.get("mri_scale") or (0.0, 1.0)))
        return image.numpy(), drawn.labels.numpy()


class JointSynthesizer(RunSynthesizer):
    """A VAE run: image and label map drawn together, latents from the prior N(0, T^2), around the stored
    encodings of training patches (``posterior``) or from the stored mixture over them (``mixture``)."""

    weights = "model"
    label_source = True

    def __init__(self, run_dir, cfg, device="auto", options=None, volumes=None):
        super().__init__(run_dir, cfg, device, options, volumes)
        model = build_model(self.cfg).to(self.device)
        self.model = self.load(model).eval()
        self._mixture = None
        sampling = getattr(self.cfg.model, "sampling", "prior")
        self.stored = read_latents(self.run_dir) if sampling in ("posterior", "mixture") else None  # read once

    def load(self, model: torch.nn.Module) -> torch.nn.Module:
        load_weights(self.run_dir, [self.weights], [model])
        return model

    def configure(self, cfg, options: SamplingOptions):
        if options.labels is not None:
            raise MedgenError(self.run_dir, f"--labels: a {cfg.task} run draws its own label maps (the option is a "
                                            "label2image run's)")
        keys = options.model_keys()
        return dataclasses.replace(cfg, model=self._replaced(cfg.model, keys)) if keys else cfg

    @property
    def categorical(self) -> bool:
        """One class per voxel (a softmax); False: a channel per class, which can claim one voxel twice."""
        return self.cfg.loss.label_loss == "categorical"

    def settings(self) -> dict:
        m = self.cfg.model
        return {"label_maps": "the synthesizer's own", "temperature": m.temperature, "keep_largest": m.keep_largest,
                "sampling": getattr(m, "sampling", "prior")}

    @torch.inference_mode()
    def latents(self, n: int, seed: int) -> torch.Tensor:
        """``n`` latents ``(n, L)``: ``T x N(0, 1)`` (a CPU generator seeded with ``seed``); ``posterior``: around the
        encodings of ``n`` of the stored training patches (picked with ``seed``); ``mixture``: from the mixture."""
        m = self.cfg.model
        z = m.temperature * torch.randn(n, self.model.latent_size, generator=torch.Generator().manual_seed(int(seed)))
        sampling = getattr(m, "sampling", "prior")
        if sampling == "posterior":
            mu, logvar = self.stored["mu"], self.stored["logvar"]
            index = np.random.default_rng(seed).choice(len(mu), n, replace=n > len(mu))
            z = mu[index] + torch.exp(0.5 * logvar[index]) * z
        elif sampling == "mixture":
            z = mixture_latents(self.mixture(), n, seed, m.temperature)
        return z

    def mixture(self) -> dict[str, torch.Tensor]:
        """The latent mixture of ``model.mixture_components``: the one stored when training ended, or one fitted on
        the stored encodings for another count."""
        if self._mixture is None:
            stored, components = self.stored or read_latents(self.run_dir), self.cfg.model.mixture_components
            self._mixture = stored if len(stored["mixture_weights"]) == components else fit_mixture(stored["mu"], components)
        return self._mixture

    @torch.inference_mode()
    def draw(self, n: int, seed: int) -> Draw:
        samples = torch.cat([self.model.sample(chunk.to(self.device)).float().cpu()
                             for chunk in self.latents(n, seed).split(32)])
        raw = split_joint(samples)[1]
        labels, cleaned = raw, self.cfg.model.keep_largest
        if cleaned:
            labels = torch.from_numpy(keep_largest_components(raw.numpy(), range(1, n_foreground(self.cfg) + 1)))
        return Draw(samples[:, :1], labels, raw if cleaned else None,
                    None if self.categorical else samples[:, 1:].numpy())


class GANSynthesizer(JointSynthesizer):
    """A GAN run: image and label map from latents of N(0, T^2), through the generator's weight average."""

    weights = "model" + EMA_SUFFIX

    def load(self, model: torch.nn.Module) -> torch.nn.Module:
        return load_averages(self.run_dir, [self.weights], [model])[1][0]

    def configure(self, cfg, options: SamplingOptions):
        if options.sampling not in (None, "prior") or options.mixture_components is not None:
            raise MedgenError(self.run_dir, f"a {cfg.task} run samples its prior only (--sampling and "
                                            "--mixture-components are a VAE's)")
        return super().configure(cfg, dataclasses.replace(options, sampling=None))  # no model.sampling key

    @property
    def categorical(self) -> bool:
        return self.cfg.model.label_output == "categorical"


def mixture_latents(mixture: dict[str, torch.Tensor], n: int, seed: int, temperature: float) -> torch.Tensor:
    """``n`` latents of a :func:`medgen.models.synth.fit_mixture` mixture: a component by its weight, then its mean
    + T x its spread (numpy's generator seeded with ``seed``).

    >>> fit = {"mixture_weights": torch.tensor([1.0]), "mixture_means": torch.tensor([[3.0]]),
    ...        "mixture_covariances": torch.tensor([[[4.0]]])}
    >>> mixture_latents(fit, 2, 0, 0.0).tolist()
    [[3.0], [3.0]]
    """
    weights, means = mixture["mixture_weights"].double().numpy(), mixture["mixture_means"].double().numpy()
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    chol = np.linalg.cholesky(mixture["mixture_covariances"].double().numpy())[comp]
    noise = rng.standard_normal((n, means.shape[1]))
    return torch.from_numpy(means[comp] + temperature * np.einsum("nij,nj->ni", chol, noise)).float()


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


class Label2ImageSynthesizer(RunSynthesizer):
    """A label2image run: label maps from its ``labels`` run (a VAE or GAN, read in this run's classes) or its
    training label maps (drawn as training drew them), rendered by its generator; with ``class_means`` each map in
    the class means of one training volume (the stored table's row drawn with ``seed + 1``).

    ``evaluate synthesis`` draws its real samples with seeds ``seed + 1`` and ``+ 3``; this run's training label maps
    are drawn with ``seed + 2`` there (:attr:`evaluation_seed_offset`), other patches than the real ones.
    """

    evaluation_seed_offset = 2
    renders_label_maps = True

    def __init__(self, run_dir, cfg, device="auto", options=None, volumes=None):
        super().__init__(run_dir, cfg, device, options, volumes)
        self.generator = build_nets(self.cfg)["G"].to(self.device)
        load_weights(self.run_dir, ["G"], [self.generator])
        self.generator.eval()
        self._volumes, self._maps = volumes, None
        self.source, self.classes = self._label_source() if self.cfg.labels else (None, None)
        if self.source is None and self.options.model_keys():
            raise MedgenError(self.run_dir, f"--{next(iter(self.options.model_keys())).replace('_', '-')}: this "
                                            "label2image run renders its training label maps (no latent space to "
                                            "sample; --labels RUN renders a VAE or GAN run's maps)")
        self.means = read_class_means(self.run_dir, n_label_channels(self.cfg)) if self.cfg.class_means else None

    def configure(self, cfg, options: SamplingOptions):
        if options.labels is None:
            return cfg
        return self._replaced(cfg, {"labels": None if options.labels == TRAINING_LABELS else str(options.labels)})

    def _label_source(self) -> tuple[RunSynthesizer, dict]:
        """The VAE/GAN run of ``labels``, sampled with this run's VAE/GAN options, and its classes in this run's."""
        labels = self.cfg.labels
        source = load_run(labels, "synthesizer")
        backend = SYNTHESIZERS[source.task]
        if not backend.label_source:
            raise MedgenError(labels, f"labels: must be a VAE or GAN run, not a {source.task} run")
        # the label-map run's classes, read in this run's by their source labels (its liver 1 may be this run's 6)
        classes = class_translation(source.data.label_map, self.cfg.data.label_map, labels)
        if source.data.label_map and len(classes) < len(set(source.data.label_map.values())):
            raise MedgenError(labels, "labels: must be a VAE or GAN run whose classes the label2image run knows")
        options = dataclasses.replace(self.options, labels=None)
        return backend(labels, source, self.device, options), classes

    def training_maps(self) -> list:
        """The training volumes with their body classes (read once): the source of the training label maps."""
        if self._maps is None:
            self._maps = with_body_classes(self.cfg, config_volumes(self.cfg) if self._volumes is None else self._volumes)
        return self._maps

    def settings(self) -> dict:
        source = {} if self.source is None else {k: v for k, v in self.source.settings().items() if k != "label_maps"}
        return {"label_maps": self.cfg.labels or "training label maps", **source}

    def label_maps(self, n: int, seed: int) -> torch.Tensor:
        """``n`` label maps ``(n, *patch)`` to render: the ``labels`` run's, else training label maps."""
        if self.source is not None:
            return torch.as_tensor(remap_labels(self.source.sample(n, seed)[1], self.classes)).long()
        patches = training_patches(self.cfg, seed, self.training_maps())
        return torch.stack([patches[i][Keys.LABEL][0] for i in range(n)]).long()

    def draw(self, n: int, seed: int) -> Draw:
        maps = self.label_maps(n, seed)
        means = None
        if self.means is not None:
            means = self.means[torch.randint(len(self.means), (n,), generator=torch.Generator().manual_seed(int(seed) + 1))]
        images = render_maps(self.generator, maps, self.cfg, self.device, means)
        return Draw(images, organ_labels(self.cfg, maps).to(torch.uint8))


# synthesizer task -> backend (every task of kind "synthesizer" in medgen.models.registry.TASKS)
SYNTHESIZERS: dict[str, type] = {
    "vae": JointSynthesizer,
    "gan": GANSynthesizer,
    "label2image": Label2ImageSynthesizer,
}


def load_synthesizer(run_dir: str | Path, device: str | torch.device = "auto", options: SamplingOptions | None = None,
                     volumes: list | None = None) -> Synthesizer:
    """The backend of a synthesizer run's task (:data:`SYNTHESIZERS`), sampling as ``options`` say (default: as
    its config says); ``volumes``: its training volumes, when already loaded (read only by a backend that needs
    them)."""
    cfg = load_run(run_dir, "synthesizer")
    if cfg.task not in SYNTHESIZERS:
        raise MedgenError(run_dir, f"no synthesizer backend samples a {cfg.task} run")
    return SYNTHESIZERS[cfg.task](run_dir, cfg, device, options, volumes)
