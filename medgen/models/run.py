"""Run directories: a trained model is its ``config.yaml`` plus ``checkpoints/`` (and small JSON artifacts
such as ``norm.json`` and ``synth.json``). Written by :mod:`medgen.engines`, read by everyone."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from medgen.config import to_dict
from medgen.errors import MedgenError, short
from medgen.models.inputs import changed_inputs
from medgen.models.registry import load_config, tasks_of

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint"
NORM_FILE = "norm.json"  # translator runs: training-set intensity references
NORM_TASKS = ("cyclegan", "synthct", "synthmri")  # the tasks whose training writes it: their runs need it
EMA_SUFFIX = "_ema"  # checkpoint entry of a network's weight average (an ``AveragedModel``): ``net_ema``, ``G_ema``


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest iteration in ``RUN/checkpoints`` (None when there is none)."""
    found = []
    for p in (Path(run_dir) / CHECKPOINT_DIR).glob(f"{CHECKPOINT_PREFIX}_*.pt"):
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def final_checkpoint(run_dir: str | Path, iterations: int) -> Path:
    """Where a run of ``iterations`` iterations keeps its last checkpoint."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{iterations}.pt"


def run_finished(run_dir: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()) -> bool:
    """The one "is this run finished" check (demo, fit, experiments): the run's ``config.yaml`` is readable and
    the checkpoint of its final iteration exists; given ``config`` (+ ``overrides``), also that the run was
    trained with exactly that resolved config and on input files of the same content
    (:func:`medgen.models.inputs.changed_inputs`). A run that was interrupted, trained with another value of any
    key, or on files that changed since, is not finished.
    """
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        return False
    try:
        saved = load_config(run / CONFIG_FILE)
    except MedgenError:
        return False
    if not final_checkpoint(run, saved.train.iterations).is_file():
        return False
    if config is None:
        return True
    return to_dict(load_config(config, overrides)) == to_dict(saved) and not changed_inputs(run, saved)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled)."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles on stderr before refusing them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise MedgenError(path, f"unreadable checkpoint ({short(exc, 120)})") from None


def load_run(run_dir: str | Path, kind: str):
    """The resolved config of a training run directory, checked to be a task of ``kind``
    (``translator``, ``segmenter`` or ``synthesizer``, see :data:`medgen.models.registry.TASKS`)."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise MedgenError(run, f"not a medgen run directory (no {CONFIG_FILE})")
    cfg = load_config(run / CONFIG_FILE)
    if cfg.task not in tasks_of(kind):
        raise MedgenError(run, f"is a {cfg.task} run, not a {kind} run ({' or '.join(tasks_of(kind))})")
    return cfg


def load_weights(run_dir: Path, names: Sequence[str], nets: Sequence[torch.nn.Module],
                 checkpoint: str | Path | None = None) -> Path:
    """Load networks ``names`` from a run's latest (or the given) checkpoint; returns the file used."""
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise MedgenError(run_dir, "run has no checkpoint yet (train it first)")
    state = load_checkpoint(path)
    for name, net in zip(names, nets):
        if name not in state:
            raise MedgenError(path, f"checkpoint has no '{name}' weights")
        try:
            net.load_state_dict(state[name])
        except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
            raise MedgenError(path, f"its '{name}' weights do not fit the run's network ({short(exc, 100)})") from None
        net.eval()
    return path


def load_averages(run_dir: Path, names: Sequence[str], nets: Sequence[torch.nn.Module],
                  checkpoint: str | Path | None = None) -> tuple[Path, list[torch.nn.Module]]:
    """Load weight averages (entries ``names``, each an ``AveragedModel`` of the matching network of ``nets``);
    returns the file used and the averaged networks, in eval mode (copies: ``nets`` are left as they were)."""
    averages = [AveragedModel(net) for net in nets]
    path = load_weights(run_dir, names, averages, checkpoint)
    return path, [average.module.eval() for average in averages]


def norm_artifact(mri_scales: Sequence[tuple[float, float]], ct_ranges: Sequence[tuple[float, float]]) -> dict:
    """A translator's training-set intensity references, saved as ``RUN/norm.json``.

    ``mri_scale``: the training MRIs' median robust range (CT -> MRI outputs are scaled back with it);
    ``ct_range``: the training CTs' median 0.5/99.5 percentiles in HU (the identity baseline maps each
    MRI's robust range onto it).

    >>> norm_artifact([(0, 100), (10, 300)], [(-1000, 300)])
    {'mri_scale': [5.0, 200.0], 'ct_range': [-1000.0, 300.0]}
    """
    lo, hi = np.median(np.asarray(mri_scales, float), axis=0) if len(mri_scales) else (0.0, 1.0)
    c_lo, c_hi = np.median(np.asarray(ct_ranges, float), axis=0) if len(ct_ranges) else (-1000.0, 1000.0)
    return {"mri_scale": [float(lo), float(hi)], "ct_range": [float(c_lo), float(c_hi)]}


def read_norm(run_dir: str | Path, required: bool = False) -> tuple[tuple[float, float] | None, tuple[float, float]]:
    """``(mri_scale or None, ct_range)`` from ``RUN/norm.json``; without it: ``(None, (-1000, 1000))``, or with
    ``required`` (translating whole volumes: the defaults give wrong HU, silently) a ``MedgenError``."""
    path = Path(run_dir) / NORM_FILE
    if not path.exists():
        if required:
            raise MedgenError(path, "missing: the translator's intensity references (written by `medgen train`; "
                                    "copy the run's norm.json back, or retrain)")
        return None, (-1000.0, 1000.0)
    try:
        refs = json.loads(path.read_text())
        mri_scale = tuple(float(v) for v in refs["mri_scale"]) if "mri_scale" in refs else None
        ct_range = tuple(float(v) for v in refs.get("ct_range", (-1000.0, 1000.0)))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise MedgenError(path, f"corrupt intensity references ({short(exc, 100)}): copy the run's norm.json "
                                "back, or retrain") from None
    if len(ct_range) != 2 or (mri_scale is not None and len(mri_scale) != 2):
        raise MedgenError(path, "corrupt intensity references: mri_scale and ct_range must be [low, high]")
    return mri_scale, ct_range
