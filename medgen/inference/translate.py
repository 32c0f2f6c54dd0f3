"""Translate whole volumes with a trained CycleGAN run directory (config, checkpoint, normalisation).

>>> t = Translator("runs/demo_cyclegan", direction="mri2ct")  # doctest: +SKIP
>>> t.translate_path("mri/case_016.nii.gz", "synth_ct/case_016.nii.gz")  # HU, the input's header  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medgen.engines.common import resolve_device
from medgen.inference.volume import infer_volume
from medgen.runs import load_run, load_weights
from medgen.io import case_name, load_image, save_like
from medgen.keys import Direction, Modality
from medgen.transforms import Preprocessor

NORM_FILE = "norm.json"


def norm_artifact(mri_scales: Sequence[tuple[float, float]], ct_ranges: Sequence[tuple[float, float]]) -> dict:
    """Training-set intensity references, saved as ``RUN/norm.json``.

    ``mri_scale``: the training MRIs' median robust range (CT -> MRI outputs are scaled back with it);
    ``ct_range``: the training CTs' median 0.5/99.5 percentiles in HU (the identity baseline maps each
    MRI's robust range onto it).
    """
    lo, hi = np.median(np.asarray(mri_scales, float), axis=0) if len(mri_scales) else (0.0, 1.0)
    c_lo, c_hi = np.median(np.asarray(ct_ranges, float), axis=0) if len(ct_ranges) else (-1000.0, 1000.0)
    return {"mri_scale": [float(lo), float(hi)], "ct_range": [float(c_lo), float(c_hi)]}


def translate_array(net: torch.nn.Module, cfg, array: np.ndarray, ref, device: torch.device,
                    source: Modality = Modality.MRI, mri_scale: Sequence[float] | None = None,
                    back_net: torch.nn.Module | None = None) -> tuple[np.ndarray, float | None]:
    """Translate one volume with ``net`` and run config ``cfg``.

    Returns the translation as float32 on the input's grid (HU when translating to CT; MRI intensities
    scaled by ``mri_scale`` otherwise) and, when the reverse generator ``back_net`` is given, the mean
    cycle-consistency error: |back_net(net(x)) - x| inside the body, in the networks' [-1, 1] units.
    """
    target = Modality.CT if source is Modality.MRI else Modality.MRI
    pre_in = Preprocessor.from_config(source, cfg.preprocess)
    pre_out = Preprocessor.from_config(target, cfg.preprocess)
    x, geom = pre_in.forward(array, ref)
    inf = cfg.inference

    def run(model: torch.nn.Module, volume: torch.Tensor) -> torch.Tensor:
        return infer_volume(model, volume, cfg.spatial_dims, device, inf.amp, inf.batch_size, inf.roi_size,
                            inf.overlap, getattr(model, "multiple", 4))

    y = run(net, x)
    cycle = None
    if back_net is not None:
        body = x > -0.9
        cycle = float((run(back_net, y) - x).abs()[body].mean()) if body.any() else float("nan")
    values = pre_out.to_intensity(y, geom, scale=tuple(mri_scale) if mri_scale else None)
    return pre_in.restore(values[0], geom).astype(np.float32), cycle


class Translator:
    """A CycleGAN generator with the run's preprocessing, applied to whole volumes.

    Args:
        run_dir: a ``medgen train`` CycleGAN run directory.
        direction: ``mri2ct`` (G_ab) or ``ct2mri`` (G_ba).
        device: ``auto`` | ``cpu`` | ``cuda``.
        checkpoint: a specific checkpoint file (default: the run's latest).
        cycle: also load the reverse generator, so :meth:`translate` reports the cycle-consistency error.
    """

    def __init__(self, run_dir: str | Path, direction: str = "mri2ct", device: str = "auto",
                 checkpoint: str | Path | None = None, cycle: bool = False):
        from medgen.engines.cyclegan import build_nets

        self.run_dir = Path(run_dir)
        self.cfg = load_run(self.run_dir, "cyclegan")
        self.direction = Direction(direction)
        self.device = resolve_device(device)
        self.source = Modality.MRI if self.direction is Direction.MRI2CT else Modality.CT
        names = ["G_ab", "G_ba"] if self.direction is Direction.MRI2CT else ["G_ba", "G_ab"]
        nets = build_nets(self.cfg)  # channels-last: faster in inference at every precision (see prefers_channels_last)
        self.net = nets[names[0]].to(self.device)
        self.back_net = nets[names[1]].to(self.device) if cycle else None
        names, models = (names, [self.net, self.back_net]) if cycle else (names[:1], [self.net])
        self.checkpoint = load_weights(self.run_dir, names, models, checkpoint)
        norm = self.run_dir / NORM_FILE
        refs = json.loads(norm.read_text()) if norm.exists() else {}
        self.mri_scale = tuple(refs["mri_scale"]) if "mri_scale" in refs else None
        self.ct_range = tuple(refs.get("ct_range", (-1000.0, 1000.0)))

    def translate(self, array: np.ndarray, ref) -> tuple[np.ndarray, float | None]:
        """A volume on its own grid -> (translation on the same grid, HU for CT, float32; cycle error or None)."""
        return translate_array(self.net, self.cfg, array, ref, self.device, self.source, self.mri_scale, self.back_net)

    def translate_path(self, src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
        array, ref = load_image(src)
        out, _ = self.translate(array, ref)
        if self.direction is Direction.MRI2CT:
            out = np.clip(np.rint(out), -1024, 3071).astype(np.int16)
        return save_like(out, ref, dst, overwrite=overwrite)


def output_path(src: Path, out_dir: Path, suffix: str = ".nii.gz") -> Path:
    return out_dir / f"{case_name(src)}{suffix}"


def translate_files(run_dir: str | Path, inputs: str | Path, output: str | Path, direction: str = "mri2ct",
                    device: str = "auto", overwrite: bool = False) -> list[Path]:
    """``medgen translate``: file -> file, or every volume of a folder -> a folder (``case.nii.gz``)."""
    from medgen.data.datalist import list_volumes

    translator = Translator(run_dir, direction, device)
    src = Path(inputs)
    if src.is_file() or (src.is_dir() and str(output).endswith((".nii", ".nii.gz"))):
        return [translator.translate_path(src, output, overwrite)]
    written = []
    for path in list_volumes(src):
        written.append(translator.translate_path(path, output_path(path, Path(output)), overwrite))
        print(f"[medgen] {path} -> {written[-1]}", flush=True)
    return written
