"""Sampling a trained synthesizer run (VAE or GAN): image + label pairs in HU (CT) or MRI units.

>>> write_synthetic("runs/vae", "synthetic", n=50, seed=0)  # OUT/images, OUT/labels, OUT/dataset.json  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medgen.errors import MedgenError
from medgen.io import atomic_write, ref_from_affine, save_hu, save_like
from medgen.keys import Modality
from medgen.models.run import EMA_SUFFIX, load_averages, load_run, load_weights
from medgen.models.synth import build_model, read_synth, split_joint
from medgen.runtime import resolve_device
from medgen.transforms import unit_to_ct, unit_to_mri


def load_synthesizer(run_dir: str | Path, device: torch.device):
    """A trained synthesizer run -> (config, sampling model on ``device``, synth.json dict)."""
    run = Path(run_dir)
    cfg = load_run(run, "synthesizer")
    model = build_model(cfg).to(device)
    if cfg.task == "gan":
        _, (model,) = load_averages(run, ["model" + EMA_SUFFIX], [model])
    else:
        load_weights(run, ["model"], [model])
    return cfg, model.eval(), read_synth(run)


@torch.inference_mode()
def sample_pairs(run_dir: str | Path, n: int, seed: int = 0, device: str = "auto"):
    """``n`` synthetic pairs: images in HU (CT) or MRI units, integer label maps, the voxel spacing, the config."""
    dev = resolve_device(device)
    cfg, model, meta = load_synthesizer(run_dir, dev)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n, model.latent_size, generator=gen).to(dev)
    image, labels = split_joint(torch.cat([model.sample(chunk) for chunk in z.split(32)]).float().cpu())
    if cfg.data.modality == Modality.CT:
        image = unit_to_ct(image, cfg.preprocess.ct_window)
    else:
        image = unit_to_mri(image, *(meta.get("mri_scale") or (0.0, 1.0)))
    spacing = meta.get("spacing") or [1.0, 1.0, 1.0]
    return image.numpy(), labels.numpy(), spacing, cfg


def write_synthetic(run_dir: str | Path, out: str | Path, n: int, seed: int = 0, device: str = "auto",
                    overwrite: bool = False) -> dict:
    """``medgen synth``: ``OUT/images/synth_XXXX.nii.gz``, ``OUT/labels/...`` and ``OUT/dataset.json``.

    2D samples are written as one-slice volumes; the voxel size is the training data's (after the
    run's resampling), in RAS orientation.
    """
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise MedgenError(out, "already holds a dataset.json (pass --overwrite to replace it)")
    images, labels, spacing, cfg = sample_pairs(run_dir, n, seed, device)
    affine = np.diag([*map(float, spacing), 1.0])
    save_image = save_hu if cfg.data.modality == Modality.CT else save_like
    entries = []
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        ref = ref_from_affine(affine, image.shape)
        name = f"synth_{i:04d}"
        save_image(image, ref, out / "images" / f"{name}.nii.gz", overwrite=True)
        save_like(label, ref, out / "labels" / f"{name}.nii.gz", overwrite=True)
        entries.append({"name": name, "image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"})
    classes = sorted(set(cfg.data.label_map.values()))
    info = {"name": "medgen synthetic pairs", "generator": str(Path(run_dir).resolve()), "task": cfg.task,
            "seed": int(seed), "spacing": list(map(float, spacing)), "modality": str(cfg.data.modality),
            "labels": {"0": "background", **{str(c): f"class_{c}" for c in classes}}, "training": entries}
    atomic_write(out / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return info
