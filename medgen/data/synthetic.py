"""Synthetic image + label pairs: sampling a synthesizer run, writing them, and mixing them into training.

>>> write_synthetic("runs/vae", "synthetic", n=50, seed=0)  # OUT/images, OUT/labels, OUT/dataset.json  # doctest: +SKIP

In a segmenter config::

    augment:
      synthetic: {source: synthetic/, ratio: 0.5}   # or source: runs/vae (sampled at setup)

From user code, any MONAI-style sample stream can be mixed the same way::

    samples = MixedSamples(real_patches, synthetic_patches, ratio=0.3, seed=0)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.errors import MedgenError
from medgen.io import atomic_write, header_from_affine
from medgen.keys import Keys, Modality
from medgen.transforms import unit_to_ct, unit_to_mri


class MixedSamples(Dataset):
    """Sample ``n`` comes from ``synthetic`` with probability ``ratio`` (decided by ``(seed, n)``), else ``real``."""

    def __init__(self, real: Dataset, synthetic: Dataset, ratio: float, seed: int = 0):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], not {ratio}")
        self.real, self.synthetic, self.ratio, self.seed = real, synthetic, ratio, seed

    def __len__(self) -> int:
        return min(len(self.real), len(self.synthetic))  # type: ignore[arg-type]

    def __getitem__(self, n: int):
        use_synthetic = np.random.default_rng([self.seed, int(n)]).random() < self.ratio
        return (self.synthetic if use_synthetic else self.real)[n]


def load_synthesizer(run_dir: str | Path, device: torch.device):
    """A trained synthesizer run -> (config, sampling model on ``device``, synth.json dict)."""
    from torch.optim.swa_utils import AveragedModel

    from medgen.engines.synth import build_model
    from medgen.runs import load_run, load_weights

    run = Path(run_dir)
    cfg = load_run(run, ("vae", "gan"))
    model = build_model(cfg).to(device)
    if cfg.task == "gan":
        ema = AveragedModel(model)
        load_weights(run, ["model_ema"], [ema])
        model = ema.module
    else:
        load_weights(run, ["model"], [model])
    meta = json.loads((run / "synth.json").read_text()) if (run / "synth.json").exists() else {}
    return cfg, model.eval(), meta


@torch.inference_mode()
def sample_pairs(run_dir: str | Path, n: int, seed: int = 0, device: str = "auto"):
    """``n`` synthetic pairs: images in HU (CT) or MRI units, integer label maps, and the voxel spacing."""
    from medgen.engines.common import resolve_device

    dev = resolve_device(device)
    cfg, model, meta = load_synthesizer(run_dir, dev)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n, model.latent_size, generator=gen).to(dev)
    out = torch.cat([model.sample(chunk) for chunk in z.split(32)]).float().cpu()
    image = out[:, 0]
    if cfg.data.modality == Modality.CT:
        image = unit_to_ct(image, cfg.preprocess.ct_window)
    else:
        image = unit_to_mri(image, *(meta.get("mri_scale") or (0.0, 1.0)))
    fg = out[:, 1:]
    labels = torch.where(fg.max(1).values > 0, fg.argmax(1) + 1, 0).to(torch.uint8)
    spacing = meta.get("spacing") or [1.0, 1.0, 1.0]
    return image.numpy(), labels.numpy(), spacing, cfg


def write_synthetic(run_dir: str | Path, out: str | Path, n: int, seed: int = 0, device: str = "auto",
                    overwrite: bool = False) -> dict:
    """``medgen synth``: ``OUT/images/synth_XXXX.nii.gz``, ``OUT/labels/...`` and ``OUT/dataset.json``.

    2D samples are written as one-slice volumes; the voxel size is the training data's (after the
    run's resampling), in RAS orientation.
    """
    import nibabel as nib

    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise MedgenError(out, "already holds a dataset.json (pass --overwrite to replace it)")
    images, labels, spacing, cfg = sample_pairs(run_dir, n, seed, device)
    affine = np.diag([*map(float, spacing), 1.0])
    entries = []
    for i, (image, label) in enumerate(zip(images, labels)):
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        header = header_from_affine(affine, image.shape)
        name = f"synth_{i:04d}"
        if cfg.data.modality == Modality.CT:
            image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
        for folder, array in (("images", image), ("labels", label)):
            img = nib.Nifti1Image(array, None, header=header.copy())
            img.set_data_dtype(array.dtype)
            atomic_write(out / folder / f"{name}.nii.gz", lambda tmp, img=img: nib.save(img, tmp))
        entries.append({"name": name, "image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"})
    classes = sorted(set(cfg.data.label_map.values()))
    info = {"name": "medgen synthetic pairs", "generator": str(Path(run_dir).resolve()), "task": cfg.task,
            "seed": int(seed), "spacing": list(map(float, spacing)), "modality": str(cfg.data.modality),
            "labels": {"0": "background", **{str(c): f"class_{c}" for c in classes}}, "training": entries}
    atomic_write(out / "dataset.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return info


def _segmenter_volumes(pairs, seg_cfg, label_map) -> list[dict]:
    from medgen.data.volumes import cached_volumes
    from medgen.transforms import Preprocessor

    return cached_volumes([{Keys.IMAGE: i, Keys.LABEL: lab} for i, lab in pairs],
                          {Keys.IMAGE: Preprocessor.from_config(Modality(seg_cfg.data.modality), seg_cfg.preprocess),
                           Keys.LABEL: Preprocessor.from_config(None, seg_cfg.preprocess)},
                          label_key=Keys.LABEL, label_map=label_map, num_workers=1)


def cycled_volumes(translator_run: str | Path, pairs, seg_cfg) -> list[dict]:
    """Training CTs passed CT -> MRI -> CT through a CycleGAN run, with their own labels.

    The cycled CTs carry the translator's artifacts (noise, intensity bias, blur) on exactly known
    anatomy, so a segmenter trained with them is ready for the synthetic CTs of the MRI pipeline.
    """
    from medgen.inference.translate import Translator
    from medgen.io import load_image, save_like

    to_mri, to_ct = Translator(translator_run, "ct2mri"), Translator(translator_run, "mri2ct")
    with tempfile.TemporaryDirectory() as tmp:
        cycled = []
        for i, (image, label) in enumerate(pairs):
            ct, ref = load_image(image)
            out = save_like(to_ct.translate(to_mri.translate(ct, ref)[0], ref)[0], ref, Path(tmp) / f"c{i:04d}.nii.gz")
            cycled.append((out, label))
        return _segmenter_volumes(cycled, seg_cfg, seg_cfg.data.label_map)


def synthetic_volumes(syn_cfg, seg_cfg) -> list[dict]:
    """Synthetic pairs for segmenter training, preprocessed like the real ones and cached in memory.

    ``syn_cfg.source`` is a folder written by :func:`write_synthetic` (or holding ``images/`` and
    ``labels/``), or a synthesizer run, sampled once (``syn_cfg.cases`` pairs, seeded by train.seed).
    """
    from medgen.data.datalist import image_label_pairs

    src = Path(syn_cfg.source)
    classes = {c: c for c in seg_cfg.data.label_map.values()}

    def load(folder: Path) -> list[dict]:
        if (folder / "dataset.json").is_file():
            pairs = image_label_pairs(folder / "dataset.json", folder / "dataset.json")
        else:
            pairs = image_label_pairs(folder / "images", folder / "labels")
        return _segmenter_volumes(pairs, seg_cfg, classes)

    if (src / "config.yaml").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            write_synthetic(src, tmp, syn_cfg.cases, seg_cfg.train.seed)
            return load(Path(tmp))
    if not src.is_dir():
        raise MedgenError(src, "synthetic source must be a folder of pairs or a synthesizer run directory")
    return load(src)
