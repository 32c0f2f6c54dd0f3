"""``medgen train``: the single training entry for every task, in one process or under torchrun.

Under ``torchrun --nproc_per_node=N -m medgen train ...`` each process joins an ``ignite.distributed``
group (gloo on CPU, nccl on CUDA), draws its own share of samples and averages gradients; rank 0
writes the run directory.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import ignite.distributed as idist
import torch

from medgen.config import save_config, to_dict
from medgen.engines.common import TaskSetup, run_trainer, start_from
from medgen.errors import MedgenError
from medgen.io import atomic_write
from medgen.models.registry import TASKS, load_config
from medgen.models.run import CONFIG_FILE, latest_checkpoint, run_finished
from medgen.runtime import resolve_device, seed_everything

logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)


def task_setup(cfg, device: torch.device) -> TaskSetup:
    """The training setup of ``cfg.task``, named in the task registry (``medgen.models.registry.TASKS``)."""
    module, name = TASKS[cfg.task].setup.split(":")
    return getattr(importlib.import_module(module), name)(cfg, device)


def prepare_run(config: str | Path | None, out: str | Path, overrides: list[str], resume: bool):
    """Resolve the config (a resumed run reads ``RUN/config.yaml``) and check the run directory."""
    run = Path(out)
    saved = run / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise MedgenError(run, "nothing to resume: no config.yaml in this run directory")
        if latest_checkpoint(run) is None:
            raise MedgenError(run, "nothing to resume: no checkpoint in checkpoints/")
        return load_config(saved, overrides)
    if config is None:
        raise MedgenError(None, "a CONFIG file is needed (or --resume RUN)")
    if latest_checkpoint(run) is not None or saved.exists():
        raise MedgenError(run, "already holds a training run (use --resume to continue it, or another --out)")
    return load_config(config, overrides)


def _worker(local_rank: int, cfg, run: Path, resume: bool) -> None:
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)  # identical initial weights on every rank
    setup = task_setup(cfg, device)  # reads data, writes nothing
    if cfg.train.init and not resume:
        start_from(setup.to_save, cfg.train.init)
    if idist.get_rank() == 0:
        save_config(cfg, run / CONFIG_FILE)
        info = {"world_size": idist.get_world_size(), "backend": idist.backend(), "device": str(device),
                "torch": torch.__version__, "python": platform.python_version()}
        for name, content in {"environment.json": info, **setup.artifacts}.items():
            text = json.dumps(content, indent=2) + "\n"
            atomic_write(run / name, lambda tmp, text=text: Path(tmp).write_text(text))
    if idist.get_world_size() > 1:
        idist.barrier()
    run_trainer(cfg, run, setup, resume)


def train(config: str | Path | None, out: str | Path, overrides: list[str] = (), resume: bool = False) -> Path:
    """Train the model a config describes into run directory ``out`` (or resume it)."""
    cfg = prepare_run(config, out, list(overrides), resume)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = None
    if world > 1:
        backend = "nccl" if cfg.train.device != "cpu" and torch.cuda.is_available() else "gloo"
    with idist.Parallel(backend=backend) as parallel:
        parallel.run(_worker, cfg, Path(out), resume)
    return Path(out)


def train_or_reuse(config: str | Path, out: str | Path, overrides: list[str] = (), replace: bool = False,
                   tag: str = "medgen") -> float:
    """Train ``config`` (+ ``overrides``) into ``out`` unless that run is finished with exactly this resolved
    config (:func:`medgen.models.run.run_finished`); returns the training's wall time (0 when reused).

    An interrupted run of the same config is resumed from its last checkpoint (one that never reached a
    checkpoint is started again). A run trained with another config is an error, or with ``replace`` (work
    folders of demos and experiments) trained afresh in its place.
    """
    run, overrides = Path(out), list(overrides)
    if run_finished(run, config, overrides):
        print(f"[{tag}] reusing finished run {run}", flush=True)
        return 0.0
    start = time.perf_counter()
    if (run / CONFIG_FILE).is_file():
        try:
            same = to_dict(load_config(run / CONFIG_FILE)) == to_dict(load_config(config, overrides))
        except MedgenError:
            same = False
        if same and latest_checkpoint(run) is not None:
            print(f"[{tag}] resuming interrupted run {run}", flush=True)
            train(None, run, [], resume=True)
            return time.perf_counter() - start
        if not same and not replace:
            raise MedgenError(run, "holds a run trained with another config (use another output folder)")
        shutil.rmtree(run)
    elif run.exists() and any(run.iterdir()) and not replace:
        raise MedgenError(run, "exists and is not a run directory (use another output folder)")
    train(config, run, overrides)
    return time.perf_counter() - start
