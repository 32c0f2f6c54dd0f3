"""Whole-volume translation behind one interface, :class:`Translator`, with a registry of backends.

A backend is a class with ``accepts(spec) -> bool`` (a classmethod), a constructor
``(spec, direction, device, cycle=False, checkpoint=None)`` and the :class:`Translator` methods; adding
one is that class and one line in :data:`TRANSLATORS`. :class:`RunTranslator` serves every trained
translator task of :data:`medgen.models.registry.TASKS` (its ``build`` and ``generators``), so a new
translator model needs no line here.

>>> t = load_translator("runs/demo_cyclegan", direction="mri2ct")  # doctest: +SKIP
>>> sct, _ = t.translate(*load_image("mri/case_016.nii.gz"))  # HU on the input's grid  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from medgen.data.datalist import input_output_pairs, list_volumes
from medgen.data.volumes import remap_labels
from medgen.errors import MedgenError, each_case
from medgen.inference.volume import infer_volume
from medgen.io import ImageRef, case_name, load_image, save_hu, save_like
from medgen.keys import Direction, Modality
from medgen.models.fit_model import MODEL_FILE, model_translator
from medgen.models.registry import TASKS
from medgen.models.run import EMA_SUFFIX, NORM_TASKS, load_averages, load_run, load_weights, read_norm
from medgen.models.synthmri import label_classes, with_labels
from medgen.runtime import resolve_device
from medgen.validate import check_label_values, check_output_of, check_same_grid, check_volume
from medgen.transforms import Preprocessor


class Translator(Protocol):
    """What the pipeline, evaluation and segmenter augmentation need of a translator."""

    direction: Direction
    reads_labels: bool  # its generator reads the input's label map too (translate needs labels)

    def translate(self, array: np.ndarray, ref: ImageRef,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        """A volume on its own grid (``labels``: its label map, for a translator that reads one) -> (translation on
        the same grid, HU for CT, float32; cycle error or None)."""

    def identity(self, array: np.ndarray) -> np.ndarray:
        """The no-translation baseline of an ``mri2ct`` translator: the MRI through its own MRI preset,
        rescaled into the training CTs' range (HU)."""


def translate_array(net: torch.nn.Module, cfg, array: np.ndarray, ref, device: torch.device,
                    source: Modality = Modality.MRI, mri_scale: Sequence[float] | None = None,
                    back_net: torch.nn.Module | None = None,
                    labels: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
    """Translate one volume with ``net`` and run config ``cfg`` (``preprocess``, ``inference``, ``spatial_dims``;
    ``labels``: the volume's label map in source values, which a ``label_input`` run needs and no other takes).

    Returns the translation as float32 on the input's grid (HU when translating to CT; MRI intensities
    scaled by ``mri_scale`` otherwise) and, when the reverse generator ``back_net`` is given, the mean
    cycle-consistency error: |back_net(net(x)) - x| inside the body, in the networks' [-1, 1] units.
    """
    target = Modality.CT if source is Modality.MRI else Modality.MRI
    pre_in = Preprocessor.from_config(source, cfg.preprocess)
    pre_out = Preprocessor.from_config(target, cfg.preprocess)
    x, geom = pre_in.forward(array, ref)
    if labels is not None:
        label, _ = pre_in.forward(remap_labels(labels, cfg.data.label_map), ref, label=True)
        x = with_labels(x[None], label[None], label_classes(cfg))[0]
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


class RunTranslator:
    """A trained translator run (any translator task): its generator with the run's preprocessing.

    Args:
        run_dir: a ``medgen train`` run directory of a translator task (e.g. ``cyclegan``).
        direction: ``mri2ct`` or ``ct2mri``.
        device: ``auto`` | ``cpu`` | ``cuda``.
        cycle: also load the reverse generator, so :meth:`translate` reports the cycle-consistency error.
        checkpoint: a specific checkpoint file (default: the run's latest).
    """

    @classmethod
    def accepts(cls, spec: str | Path) -> bool:
        return Path(spec).is_dir()

    def __init__(self, run_dir: str | Path, direction: str = "mri2ct", device: str = "auto", cycle: bool = False,
                 checkpoint: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = load_run(self.run_dir, "translator")
        task = TASKS[self.cfg.task]
        self.direction = Direction(direction)
        if self.direction.value not in task.generators:
            raise MedgenError(self.run_dir, f"a {self.cfg.task} run cannot translate {self.direction} "
                                            f"(only {', '.join(task.generators)})")
        self.device = resolve_device(device)
        self.source = Modality.MRI if self.direction is Direction.MRI2CT else Modality.CT
        reverse = (Direction.CT2MRI if self.direction is Direction.MRI2CT else Direction.MRI2CT).value
        names = [task.generators[self.direction.value]]
        if cycle and reverse in task.generators:
            names.append(task.generators[reverse])
        nets = task.build(self.cfg)  # channels-last: faster in inference at every precision (see prefers_channels_last)
        models = [nets[name].to(self.device) for name in names]
        if getattr(self.cfg, "ema_decay", 0.0) > 0:  # the generators' weight averages (synthct)
            self.checkpoint, models = load_averages(self.run_dir, [n + EMA_SUFFIX for n in names], models, checkpoint)
        else:
            self.checkpoint = load_weights(self.run_dir, names, models, checkpoint)
        self.net, self.back_net = models[0], (models[1] if len(models) > 1 else None)
        self.mri_scale, self.ct_range = read_norm(self.run_dir, self.cfg.task in NORM_TASKS)
        self.reads_labels = label_classes(self.cfg) > 0

    def translate(self, array: np.ndarray, ref: ImageRef,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        check_labels_given(self, labels is not None, self.run_dir)
        return translate_array(self.net, self.cfg, array, ref, self.device, self.source, self.mri_scale, self.back_net,
                               labels)

    def identity(self, array: np.ndarray) -> np.ndarray:
        if self.direction is not Direction.MRI2CT:
            raise MedgenError(self.run_dir, "the identity baseline is defined for mri2ct translation only")
        return Preprocessor.from_config(Modality.MRI, self.cfg.preprocess).identity_baseline(array, self.ct_range)


# backend name -> class, tried in order by load_translator
TRANSLATORS: dict[str, type] = {
    "run": RunTranslator,
}


def load_translator(spec: str | Path, direction: str = "mri2ct", device: str = "auto", cycle: bool = False,
                    checkpoint: str | Path | None = None) -> Translator:
    """The first backend of :data:`TRANSLATORS` that accepts ``spec`` (today: a translator run directory, or a fit
    model directory whose ``model.json`` names one for ``direction``, e.g. from ``medgen fit mri-ct``)."""
    if (Path(spec) / MODEL_FILE).is_file():
        translator = model_translator(spec, direction)
        if translator is None:
            raise MedgenError(Path(spec) / MODEL_FILE, f"this fit model has no {direction} translator (fit one with "
                                                       "`medgen fit mri-ct`)")
        spec = translator
    for backend in TRANSLATORS.values():
        if backend.accepts(spec):
            return backend(spec, direction, device, cycle=cycle, checkpoint=checkpoint)
    raise MedgenError(spec, "no such translator (a medgen translator run directory)")


def save_translation(translator: Translator, array: np.ndarray, ref: ImageRef, dst: str | Path,
                     overwrite: bool = False, labels: np.ndarray | None = None) -> Path:
    """Translate and write on ``ref``'s grid: int16 HU for ``mri2ct``, float32 MRI intensities otherwise."""
    out, _ = translator.translate(array, ref, labels)
    save = save_hu if translator.direction is Direction.MRI2CT else save_like
    return save(out, ref, dst, overwrite=overwrite)


def check_labels_given(translator: Translator, given: bool, where: str | Path) -> None:
    """Refuse labels to a translator that reads none, and a translator that reads them without them."""
    if translator.reads_labels and not given:
        raise MedgenError(where, "this translator reads the CT's label map too (fitted with ct2mri.label_input=true): "
                                 "give --labels")
    if given and not translator.reads_labels:
        raise MedgenError(where, "this translator reads no label map (--labels is for a ct2mri translator fitted "
                                 "with ct2mri.label_input=true)")


def _label_maps(labels: str | Path, pairs: list[tuple[Path, Path]], single: bool) -> dict[str, Path]:
    """``--labels``: case name -> label map file (a single input's: the file itself)."""
    if single:
        return {case_name(pairs[0][0]): Path(labels)}
    return {case_name(p): p for p in list_volumes(labels)}


def _label_map_of(src: Path, by_name: dict[str, Path], ref: ImageRef) -> np.ndarray:
    """The label map of input ``src`` (:func:`_label_maps`), checked: on ``src``'s grid, integer values."""
    path = by_name.get(case_name(src))
    if path is None:
        raise MedgenError(src, "no label map of this case in --labels")
    array, label_ref = load_image(path)
    check_same_grid(ref, label_ref)
    return check_label_values(array, path)


def translate_files(run_dir: str | Path, inputs: str | Path, output: str | Path, direction: str = "mri2ct",
                    device: str = "auto", overwrite: bool = False,
                    labels: str | Path | None = None) -> tuple[list[Path], int]:
    """``medgen translate``: file -> file, or every volume of a folder -> a folder (``case.nii.gz``; a bad file
    is reported on its line and skipped, :func:`medgen.errors.each_case`); ``labels``: the inputs' label maps (a file,
    or a folder matched by case name) for a translator that reads them. Returns the written files and the number of
    failed inputs."""
    translator = load_translator(run_dir, direction, device)
    check_labels_given(translator, labels is not None, run_dir)  # before any volume is read
    single, pairs = input_output_pairs(inputs, output)
    check_output_of(inputs, output, single)  # before any volume is translated
    by_name = None if labels is None else _label_maps(labels, pairs, single)

    def one(src: Path, dst: Path) -> Path:
        array, ref = load_image(src)
        check_volume(array, src)
        label = None if by_name is None else _label_map_of(src, by_name, ref)
        written = save_translation(translator, array, ref, dst, overwrite, label)
        if not single:
            print(f"[medgen] {src} -> {dst}", flush=True)
        return written

    return each_case(pairs, single, one)
