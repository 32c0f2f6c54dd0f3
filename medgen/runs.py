"""Run directories: a trained model is its ``config.yaml`` plus ``checkpoints/`` (and small JSON artifacts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from medgen.config import load_config
from medgen.engines.common import latest_checkpoint, load_checkpoint
from medgen.errors import MedgenError


def load_run(run_dir: str | Path, task: str | tuple[str, ...]):
    """The resolved config of a training run directory, checked to be of ``task`` (or one of them)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise MedgenError(run, "not a medgen run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    tasks = (task,) if isinstance(task, str) else task
    if cfg.task not in tasks:
        raise MedgenError(run, f"is a {cfg.task} run, not a {' or '.join(tasks)} run")
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
        net.load_state_dict(state[name])
        net.eval()
    return path
