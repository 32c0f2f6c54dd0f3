"""``medgen train``: the single training entry for every task, in one process or under torchrun.

Under ``torchrun --nproc_per_node=N -m medgen train ...`` each process joins an ``ignite.distributed``
group (gloo on CPU, nccl on CUDA), draws its own share of samples and averages gradients; rank 0
writes the run directory.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from medgen.errors import MedgenError, WriteError, short
from medgen.io import atomic_write
from medgen.models.inputs import INPUTS_FILE, changed_inputs, input_digest
from medgen.models.registry import TASKS, load_config
from medgen.models.run import CONFIG_FILE, latest_checkpoint, load_checkpoint, run_finished
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


def check_resumable(run: Path, setup: TaskSetup) -> None:
    """Raise (one line naming the file) unless ``run`` can be resumed by ``setup``: its latest checkpoint reads
    with ``weights_only``, holds every object of ``setup.to_save`` with networks of the same keys and shapes,
    and the run's artifacts (``norm.json`` ...) are there and readable."""
    last = latest_checkpoint(run)
    if last is None:
        raise MedgenError(run, "nothing to resume: no checkpoint in checkpoints/")
    state = load_checkpoint(last)
    missing = [name for name in [*setup.to_save, "trainer"] if name not in state]
    if missing:
        raise MedgenError(last, f"cannot resume: the checkpoint has no {', '.join(missing)} (another task's run?)")
    for name, obj in setup.to_save.items():
        if isinstance(obj, torch.nn.Module):
            own, theirs = obj.state_dict(), state[name]
            if not isinstance(theirs, dict) or set(own) != set(theirs) or any(
                    getattr(theirs[k], "shape", None) != v.shape for k, v in own.items()):
                raise MedgenError(last, f"cannot resume: its '{name}' weights do not fit the run's network")
    for name in setup.artifacts:
        try:
            json.loads((run / name).read_text())
        except (OSError, ValueError) as exc:
            raise MedgenError(run / name, f"cannot resume: missing or corrupt ({short(exc, 80)}); copy the run's "
                                          f"{name} back, or train again") from None


def _worker(local_rank: int, cfg, run: Path, resume: bool) -> None:
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)  # identical initial weights on every rank
    setup = task_setup(cfg, device)  # reads data, writes nothing
    if resume:
        check_resumable(run, setup)  # before anything in the run is written: a failed resume leaves it as it was
    elif cfg.train.init:
        start_from(setup.to_save, cfg.train.init)
    if idist.get_rank() == 0 and not resume:
        save_config(cfg, run / CONFIG_FILE)
        info = {"world_size": idist.get_world_size(), "backend": idist.backend(), "device": str(device),
                "torch": torch.__version__, "python": platform.python_version()}
        inputs = {"files": input_digest(cfg)}  # what run_finished compares before reusing the run
        for name, content in {"environment.json": info, INPUTS_FILE: inputs, **setup.artifacts}.items():
            text = json.dumps(content, indent=2) + "\n"
            atomic_write(run / name, lambda tmp, text=text: Path(tmp).write_text(text))
    if idist.get_world_size() > 1:
        idist.barrier()
    run_trainer(cfg, run, setup, resume)


def train(config: str | Path | None, out: str | Path, overrides: list[str] = (), resume: bool = False) -> Path:
    """Train the model a config describes into run directory ``out`` (or resume it). In one process the run folder
    is locked while it trains: a second ``medgen train`` into it is refused in one line."""
    cfg = prepare_run(config, out, list(overrides), resume)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = None
    if world > 1:
        backend = "nccl" if cfg.train.device != "cpu" and torch.cuda.is_available() else "gloo"
    run = Path(out)
    created = not run.exists()
    with _locked(run, world == 1):
        try:
            cfg = prepare_run(config, out, list(overrides), resume)  # again, under the lock
            with idist.Parallel(backend=backend) as parallel:
                parallel.run(_worker, cfg, run, resume)
        except OSError as exc:  # a full disk, a quota, a folder gone read-only: one line, no half-made run
            if created:
                shutil.rmtree(run, ignore_errors=True)
            raise WriteError(run, f"cannot write ({short(exc)})") from None
        except BaseException:
            if created and run.is_dir() and not any(run.iterdir()):
                run.rmdir()  # nothing was written: leave nothing
            raise
    return run


@contextlib.contextmanager
def _locked(run: Path, lock: bool):
    """An exclusive ``flock`` on the run folder (created if missing) for the duration; refused at once, in one line,
    when another process holds it."""
    if not lock:
        yield
        return
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run, os.O_RDONLY)
    except OSError as exc:
        raise WriteError(run, f"cannot write ({short(exc)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MedgenError(run, "another medgen process is training into this folder (wait for it, or use "
                                   "another --out)") from None
        yield
    finally:
        os.close(fd)


def train_or_reuse(config: str | Path, out: str | Path, overrides: list[str] = (), replace: bool = False,
                   tag: str = "medgen") -> float:
    """Train ``config`` (+ ``overrides``) into ``out`` unless that run is finished with exactly this resolved
    config and input files of the same content (:func:`medgen.models.run.run_finished`); returns the training's
    wall time (0 when reused).

    An interrupted run of the same config and inputs is resumed from its last checkpoint (one that never reached a
    checkpoint is started again). A run trained with another config or on files that changed since is an error, or
    with ``replace`` (work folders of demos and experiments) trained afresh in its place.
    """
    run, overrides = Path(out), list(overrides)
    if run_finished(run, config, overrides):
        print(f"[{tag}] reusing finished run {run}", flush=True)
        return 0.0
    start = time.perf_counter()
    if (run / CONFIG_FILE).is_file():
        try:
            saved = load_config(run / CONFIG_FILE)
            same = to_dict(saved) == to_dict(load_config(config, overrides))
        except MedgenError:
            same = False
        changed = changed_inputs(run, saved) if same else []
        if same and not changed and latest_checkpoint(run) is not None:
            print(f"[{tag}] resuming interrupted run {run}", flush=True)
            train(None, run, [], resume=True)
            return time.perf_counter() - start
        if (not same or changed) and not replace:
            raise MedgenError(run, "holds a run trained with another config (use another output folder)" if not same
                              else f"holds a run trained on input files that changed since ({len(changed)}, e.g. "
                                   f"{changed[0]}; use another output folder)")
        if not same or changed:
            print(f"[{tag}] {run} was trained with another config or other input files: training it again",
                  flush=True)
        shutil.rmtree(run)
    elif run.exists() and any(run.iterdir()) and not replace:
        raise MedgenError(run, "exists and is not a run directory (use another output folder)")
    train(config, run, overrides)
    return time.perf_counter() - start
