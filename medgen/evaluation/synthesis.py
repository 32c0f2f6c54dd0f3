"""Synthesis fidelity, diversity and label plausibility, against real samples drawn the way training drew them.

- FID and KID on features of a network trained in this project (beside the same figures between two draws of
  real samples, the floor a perfect synthesizer would reach): the deepest activations (global average
  pooled) of a medgen segmenter run, since no pretrained ImageNet/MedicalNet weights can be downloaded.
  FID uses MONAI's ``FIDMetric``; KID is the unbiased MMD^2 with the cubic polynomial kernel
  (Binkowski et al. 2018), averaged over subsets (MONAI has no KID).
- Diversity: mean MS-SSIM (MONAI) between random pairs of synthetic samples (lower is more diverse),
  beside the same figure for real samples.
- Label plausibility: per sample, the connected components of each class; a sample is plausible when the
  class forms one component whose size lies within [0.5 x min, 1.5 x max] of the real sizes; and for all the
  organs at once (``organs``): each absent or so, and no voxel claimed by two classes. Size
  distributions (area in cm^2 for 2D samples, volume in mL for 3D) are compared by the Wasserstein
  distance and the Kolmogorov-Smirnov statistic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric
from scipy import ndimage, stats

from medgen.data.patches import labelled_patches
from medgen.data.volumes import config_volumes
from medgen.inference.synthesize import sample_pairs
from medgen.inference.synthesizers import SamplingOptions, load_synthesizer
from medgen.io import atomic_write
from medgen.keys import Keys, Modality
from medgen.models.run import load_run, load_weights
from medgen.models.segmenter import build_network
from medgen.models.shipped import resolve_model
from medgen.models.synth import joint_tensor, n_foreground
from medgen.runtime import resolve_device
from medgen.transforms import ct_to_unit, mri_range, unit_to_ct


def real_samples(cfg, n: int, seed: int, volumes: list | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` real samples drawn like the synthesizer's training samples: ``(n, 1+K, ...)`` in [-1, 1], labels
    (``volumes``: the training volumes, when already loaded)."""
    if volumes is None:
        volumes = config_volumes(cfg)
    patches = labelled_patches(volumes, cfg.data, cfg.spatial_dims, seed)
    batch = [patches[i] for i in range(n)]
    stacked = {k: torch.stack([b[k] for b in batch]) for k in (Keys.IMAGE, Keys.LABEL)}
    return joint_tensor(stacked, n_foreground(cfg), torch.device("cpu")), stacked[Keys.LABEL][:, 0].numpy()


class DeepFeatures:
    """Global-average-pooled activations of the deepest convolution of a segmenter run's network."""

    def __init__(self, seg_run: str | Path, device: torch.device):
        seg_run = resolve_model(seg_run)  # a shipped model's name: its checked run directory
        self.cfg = load_run(seg_run, "segmenter")
        self.net = build_network(self.cfg).to(device)
        load_weights(Path(seg_run), ["net"], [self.net])
        self.device = device
        self.outputs: list[torch.Tensor] = []
        for m in self.net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
                m.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))

    @torch.inference_mode()
    def __call__(self, images_hu: torch.Tensor) -> torch.Tensor:
        feats = []
        for chunk in images_hu.split(16):
            self.outputs.clear()
            x = ct_to_unit(chunk, self.cfg.preprocess.ct_window).to(self.device)
            slices = getattr(self.cfg.network, "slices", 1)  # a 2.5D net: the slice as its own neighbours
            self.net(x.repeat_interleave(slices, 1) if slices > 1 and x.shape[1] == 1 else x)
            deepest = min(self.outputs, key=lambda t: t[0, 0].numel())
            feats.append(deepest.float().mean(dim=tuple(range(2, deepest.dim()))).cpu())
        return torch.cat(feats)


def kid(x: torch.Tensor, y: torch.Tensor, subsets: int = 10, subset_size: int = 50, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, mean over random subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(x), len(y))
    d = x.shape[1]
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)].double()
        b = y[rng.choice(len(y), m, replace=False)].double()
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        off = 1 - torch.eye(m, dtype=torch.float64)
        values.append(float((kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean()))
    return float(np.mean(values))


def ms_ssim_diversity(images: torch.Tensor, spatial_dims: int, pairs: int = 100, seed: int = 0) -> float:
    """Mean MS-SSIM between random pairs (3 scales, 7-voxel window); images in [-1, 1]."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(images), size=(2, pairs))
    keep = i != j
    metric = MultiScaleSSIMMetric(spatial_dims, data_range=1.0, kernel_size=7, weights=(0.0448, 0.2856, 0.3001))
    a, b = (images[i[keep]] + 1) / 2, (images[j[keep]] + 1) / 2
    return float(metric(a, b).mean())


def label_stats(labels: np.ndarray, voxel: float, cls: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: number of connected components of ``cls`` and its size (voxel count x ``voxel``)."""
    comps, sizes = [], []
    for lab in labels:
        mask = lab == cls
        comps.append(ndimage.label(mask)[1])
        sizes.append(mask.sum() * voxel)
    return np.array(comps), np.array(sizes, float)


def label_plausibility(real_labels: np.ndarray, fake_labels: np.ndarray, voxel: float, cls: int = 1) -> dict:
    """How plausible the synthetic labels of class ``cls`` are next to the real ones: a sample is plausible
    when the class forms one component whose size lies in [0.5 x smallest, 1.5 x largest] real size.

    >>> real = np.zeros((2, 8, 8), np.uint8); real[0, :2, :2] = 1; real[1, :4, :4] = 1  # sizes 4 and 16
    >>> fake = np.zeros((3, 8, 8), np.uint8); fake[0, :3, :3] = 1; fake[1, :2, :2] = fake[1, 5:, 5:] = 1
    >>> fake[2, :5, :5] = 1  # 9 voxels: plausible; two components; 25 > 1.5 x 16
    >>> p = label_plausibility(real, fake, 1.0)
    >>> p["plausible_fraction"], p["single_component_fraction"], p["size_real_mean"]
    (0.3333333333333333, 0.6666666666666666, 10.0)
    """
    rc, rs = label_stats(real_labels, voxel, cls)
    fc, fs = label_stats(fake_labels, voxel, cls)
    present = rs[rs > 0]
    lo, hi = (0.5 * present.min(), 1.5 * present.max()) if present.size else (0.0, np.inf)
    return {
        "plausible_fraction": float(np.mean((fc == 1) & (fs >= lo) & (fs <= hi))),
        "single_component_fraction": float(np.mean(fc == 1)),
        "real_single_component_fraction": float(np.mean(rc == 1)),
        "size_synthetic_mean": float(fs.mean()), "size_synthetic_sd": float(fs.std()),
        "size_real_mean": float(rs.mean()), "size_real_sd": float(rs.std()),
        "size_wasserstein": float(stats.wasserstein_distance(fs, rs)),
        "size_ks": float(stats.ks_2samp(fs, rs).statistic),
    }


def organs_plausibility(real_labels: np.ndarray, fake_labels: np.ndarray, voxel: float, classes: list[int],
                        fake_channels: np.ndarray | None = None) -> dict:
    """Every organ of a sample at once: a sample is plausible when each class is either absent (and some real
    samples lack it too) or one component of a size within [0.5 x smallest, 1.5 x largest] real size, and no
    voxel is claimed by two classes (independent label channels ``fake_channels`` ``(n, K, ...)``, > 0 meaning the
    class; None for integer maps, one class per voxel, which cannot overlap).

    >>> real = np.zeros((2, 8, 8), np.uint8); real[0, :2, :2] = 1; real[1, :4, :4] = 1; real[1, 6:, 6:] = 2
    >>> fake = real.copy(); fake[1, :2, 6:] = 2  # class 2 in two components
    >>> ch = np.stack([np.where(fake == c, 1.0, -1.0) for c in (1, 2)], axis=1); ch[0, 1, 0, 0] = 1.0  # overlap
    >>> p = organs_plausibility(real, fake, 1.0, [1, 2], ch)
    >>> p["plausible_fraction"], p["overlap_fraction"]
    (0.0, 0.5)
    >>> organs_plausibility(real, real, 1.0, [1, 2])["plausible_fraction"]
    1.0
    """
    ok = np.ones(len(fake_labels), bool)
    for cls in classes:
        rc, rs = label_stats(real_labels, voxel, cls)
        fc, fs = label_stats(fake_labels, voxel, cls)
        present = rs[rc > 0]
        lo, hi = (0.5 * present.min(), 1.5 * present.max()) if present.size else (0.0, 0.0)
        ok &= ((fc == 0) & bool((rc == 0).any())) | ((fc == 1) & (fs >= lo) & (fs <= hi))
    overlap = (np.zeros(len(fake_labels), bool) if fake_channels is None
               else ((fake_channels > 0).sum(axis=1) > 1).reshape(len(fake_channels), -1).any(axis=1))
    return {"plausible_fraction": float(np.mean(ok & ~overlap)), "overlap_fraction": float(np.mean(overlap)),
            "classes": classes}


def removed_components(raw: np.ndarray, clean: np.ndarray, classes: list[int]) -> dict:
    """What a clean-up (``model.keep_largest``) took out of label maps ``(n, ...)``: the fraction of the foreground
    voxels and of the maps it changed, and the components it removed (count, median and 90th percentile size in
    voxels).

    >>> raw = np.zeros((2, 6, 6), np.uint8); raw[:, :3, :3] = 1; raw[0, 5, 5] = 1; raw[0, 4, :2] = 2
    >>> clean = raw.copy(); clean[0, 5, 5] = 0
    >>> r = removed_components(raw, clean, [1, 2]); r["components"], r["component_voxels_median"], r["maps_changed_fraction"]
    (1, 1.0, 0.5)
    """
    sizes = [int(s) for raw_map, clean_map in zip(raw, clean) for cls in classes
             for s in np.bincount(ndimage.label((raw_map == cls) & (clean_map != cls))[0].ravel())[1:]]
    changed = raw != clean
    return {"foreground_fraction": float(changed.sum() / max((raw > 0).sum(), 1)),
            "maps_changed_fraction": float(changed.reshape(len(raw), -1).any(axis=1).mean()),
            "components": len(sizes), "component_voxels_median": float(np.median(sizes)) if sizes else 0.0,
            "component_voxels_p90": float(np.percentile(sizes, 90)) if sizes else 0.0}


def evaluate_synthesis(synth_run: str | Path, features_run: str | Path, n: int = 200, seed: int = 0,
                       device: str = "auto", options: SamplingOptions | None = None) -> dict:
    """Fidelity (FID, KID), diversity (MS-SSIM) and label plausibility of a synthesizer run, sampled as ``options``
    say (default: as its config says)."""
    dev = resolve_device(device)
    cfg = load_run(synth_run, "synthesizer")
    volumes = config_volumes(cfg)  # the real samples' (and training label maps') volumes, read once
    synth = load_synthesizer(synth_run, dev, options, volumes)
    cfg = synth.cfg
    fake = synth.draw(n, seed + synth.evaluation_seed_offset)
    fake_image, fake_labels = fake.images, fake.labels.numpy()
    real, real_labels = real_samples(cfg, n, seed + 1, volumes)
    other = real_samples(cfg, n, seed + 3, volumes)[0][:, :1]  # a second real draw: the real-vs-real yardstick
    features = DeepFeatures(features_run, dev)
    f_fake, f_real, f_other = (features(unit_to_ct(x, cfg.preprocess.ct_window)) for x in (fake_image, real[:, :1], other))
    spacing = synth.spacing
    dims = cfg.spatial_dims
    voxel = float(np.prod(spacing[:dims])) / (100.0 if dims == 2 else 1000.0)  # cm^2 (2D) or mL (3D)
    report = {"samples": n, "features": str(features_run), "fid": float(FIDMetric()(f_fake, f_real)),
              "kid": kid(f_fake, f_real, seed=seed), "fid_real_vs_real": float(FIDMetric()(f_other, f_real)),
              "kid_real_vs_real": kid(f_other, f_real, seed=seed),
              "ms_ssim_synthetic": ms_ssim_diversity(fake_image, dims, seed=seed),
              "ms_ssim_real": ms_ssim_diversity(real[:, :1], dims, seed=seed), "size_unit": "cm2" if dims == 2 else "mL",
              **synth.settings()}
    classes = sorted(set(cfg.data.label_map.values()))
    for cls in classes:
        report[f"class_{cls}"] = label_plausibility(real_labels, fake_labels, voxel, cls)
    report["organs"] = organs_plausibility(real_labels, fake_labels, voxel, classes, fake.channels)
    report["organs"]["real_plausible_fraction"] = organs_plausibility(  # the yardstick: real maps by the same rule
        real_labels, real_labels, voxel, classes)["plausible_fraction"]
    if fake.raw_labels is not None:  # the network's maps before the clean-up, by the same rule, and what it removed
        raw_labels = fake.raw_labels.numpy()
        report["organs"]["raw_plausible_fraction"] = organs_plausibility(
            real_labels, raw_labels, voxel, classes, fake.channels)["plausible_fraction"]
        report["organs"]["removed"] = removed_components(raw_labels, fake_labels, classes)
    return report


def display_window(images: np.ndarray, cfg) -> tuple[float, float]:
    """Grey-level range to show samples in: a CT's window (HU); for an MRI (MRI units) its samples' robust range."""
    if cfg.data.modality == Modality.CT:
        return tuple(map(float, cfg.preprocess.ct_window))
    return mri_range(images, cfg.preprocess.mri_percentiles)


def write_synthesis_report(report: dict, out: str | Path, synth_run: str | Path, n_show: int = 8,
                           options: SamplingOptions | None = None) -> Path:
    """``OUT/synthesis.json`` and ``OUT/samples.png`` (synthetic samples with their label contours, sampled as
    ``options`` say)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    atomic_write(out / "synthesis.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    images, labels, _, cfg = sample_pairs(synth_run, n_show, seed=123, options=options)
    vmin, vmax = display_window(images, cfg)
    fig, axes = plt.subplots(1, n_show, figsize=(2 * n_show, 2.2))
    for ax, image, label in zip(np.atleast_1d(axes), images, labels):
        if image.ndim == 3:
            image, label = image[..., image.shape[-1] // 2], label[..., label.shape[-1] // 2]
        ax.imshow(image.T[::-1], cmap="gray", vmin=vmin, vmax=vmax)
        if label.any():
            ax.contour(label.T[::-1] > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.axis("off")
    fig.tight_layout()
    atomic_write(out / "samples.png", lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return out / "synthesis.json"
