"""What every training task shares: device and mixed precision, seeding, the Ignite trainer and its
handlers (checkpoint/resume from one ``to_save`` dict, metrics.csv, TensorBoard, progress, validation,
learning-rate schedule), and distributed gradient averaging.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, PiecewiseLinear
from torch.utils.data import DataLoader

from medgen.errors import MedgenError

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise MedgenError(None, f"train.device must be auto, cpu or cuda, not {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MedgenError(None, "train.device is cuda but no CUDA device is available")
    return idist.device() if idist.get_world_size() > 1 else torch.device("cuda")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 or AMX). On AVX2-only CPUs bf16 is emulated:
    a 2D UNet training step measured 0.52 s under bf16 autocast against 0.05 s in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def effective_amp(device: torch.device, amp: str) -> str:
    """The precision that ``amp`` really runs at on ``device``: ``bf16`` on a CPU without native bf16
    falls back to ``none`` (fp32, with a one-time warning), since emulated bf16 is ten times slower."""
    if amp not in ("none", "bf16", "fp16"):
        raise MedgenError(None, f"amp must be none, bf16 or fp16, not {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise MedgenError(None, "amp fp16 needs CUDA; use bf16 on CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_once("bf16 autocast requested, but this CPU has no native bf16 (AVX-512/AMX): running in fp32")
        return "none"
    return amp


def prefers_channels_last(device: torch.device, amp: str) -> bool:
    """Whether generators should *train* channels-last: on CUDA and in reduced precision, where it is faster
    (bf16 CycleGAN step 2.09x the plain fp32 step on an AVX-512 CPU). fp32 training on a CPU is slower
    channels-last (ResNet-9 ngf 64 step at 256^2 on AVX2: 15.9 s against 14.0 s contiguous,
    ``benchmarks/cyclegan_step.py --layout``), while fp32 inference is faster (580 against 665 ms a 256^2
    slice; 3D windows 2.4 against 4.3 s, ``benchmarks/translate_volume.py --layouts``), so translation
    always runs channels-last."""
    return device.type == "cuda" or effective_amp(device, amp) != "none"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` = ``bf16`` | ``fp16`` (CUDA only); a no-op for ``none`` (see :func:`effective_amp`)."""
    amp = effective_amp(device, amp)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, active for mixed precision on CUDA (a pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp != "none")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_requires_grad(nets: Iterable[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def average_gradients(nets: Iterable[torch.nn.Module]) -> None:
    """All-reduce gradients over distributed ranks (a no-op in one process).

    CycleGAN calls each generator several times per step and toggles discriminator gradients, which
    DistributedDataParallel does not support, so gradients are averaged explicitly after backward.
    """
    world = idist.get_world_size()
    if world == 1:
        return
    for net in nets:
        for p in net.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def loader_factory(samples, train_cfg, device: torch.device) -> Callable[[int], DataLoader]:
    """``start -> DataLoader`` over an endless, index-determined sample stream, sharded over ranks."""
    from medgen.data.patches import IndexStream

    def make_loader(start: int) -> DataLoader:
        sampler = IndexStream(start, idist.get_world_size(), idist.get_rank())
        return DataLoader(samples, batch_size=train_cfg.batch_size, sampler=sampler,
                          num_workers=train_cfg.num_workers, pin_memory=device.type == "cuda")

    return make_loader


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the highest iteration in ``RUN/checkpoints``."""
    found = []
    for p in (run_dir / CHECKPOINT_DIR).glob(f"{CHECKPOINT_PREFIX}_*.pt"):
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise MedgenError(path, f"unreadable checkpoint ({' '.join(str(exc).split())[:120]})") from None


@dataclass
class TaskSetup:
    """What a task hands to :func:`fit`.

    Args:
        step: ``(engine, batch) -> dict`` of float scalars (plus an optional ``"visuals"`` dict of tensors).
        to_save: every stateful object (networks, optimizers, scalers, pools...), checkpointed together.
        make_loader: sample start index -> an endless DataLoader of training batches.
        optimizers: optimizers whose ``lr`` follows the constant-then-linear-decay schedule.
        lr: the initial learning rate.
        validate: optional ``() -> dict`` of validation metrics.
        artifacts: JSON files (name -> content) written into the run directory with its config.
    """

    step: Callable[[Engine, Mapping], dict]
    to_save: dict
    make_loader: Callable[[int], DataLoader]
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    lr: float = 2e-4
    validate: Callable[[], dict] | None = None
    artifacts: dict[str, dict] = field(default_factory=dict)


class MetricsCSV:
    """Long-format ``RUN/metrics.csv`` (iteration, phase, name, value) plus TensorBoard scalars/images."""

    def __init__(self, run_dir: Path, writer=None):
        self.path, self.writer = run_dir / "metrics.csv", writer
        self.sums: dict[str, float] = {}
        self.count = 0

    def accumulate(self, output: Mapping) -> None:
        for k, v in output.items():
            if isinstance(v, (int, float)):
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def write(self, iteration: int, phase: str, values: Mapping[str, float]) -> None:
        if idist.get_rank() != 0 or not values:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["iteration", "phase", "name", "value", "time"])
            now = f"{time.time():.3f}"
            for k, v in values.items():
                w.writerow([iteration, phase, k, f"{float(v):.6g}", now])
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{phase}/{k}", float(v), iteration)

    def flush_train(self, iteration: int, extra: Mapping[str, float]) -> None:
        if self.count:
            self.write(iteration, "train", {**{k: s / self.count for k, s in self.sums.items()}, **extra})
        self.sums, self.count = {}, 0


def _visual_grid(visuals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Side-by-side ``(1, H, W)`` image in [0, 1] of the first sample of each visual (mid slice in 3D)."""
    tiles = []
    for v in visuals.values():
        img = v[0, 0].detach().float().cpu()
        if img.dim() == 3:
            img = img[..., img.shape[-1] // 2]
        tiles.append(((img.T.flip(0) + 1) / 2).clamp(0, 1))  # x right, y (anterior) up
    h = max(t.shape[0] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, 0, 0, h - t.shape[0])) for t in tiles]
    return torch.cat(tiles, dim=1)[None]


def fit(cfg, run_dir: Path, setup: TaskSetup, resume: bool) -> Engine:
    """Run ``setup.step`` for ``cfg.train.iterations`` on an Ignite Engine with medgen's handlers."""
    t = cfg.train
    trainer = Engine(setup.step)
    trainer.state.diverged = None

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop_on_non_finite(engine: Engine) -> None:  # checked first: a diverged state is never saved
        bad = {k: v for k, v in engine.state.output.items() if isinstance(v, float) and not np.isfinite(v)}
        if bad:
            engine.state.diverged = bad
            engine.terminate()

    decay_start = int(t.iterations * cfg.optim.decay_from)
    for opt in setup.optimizers:
        milestones = [(0, setup.lr), (max(decay_start, 1), setup.lr), (max(t.iterations, decay_start + 1), 0.0)]
        scheduler = PiecewiseLinear(opt, "lr", milestones_values=milestones)
        trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
        setup.to_save[f"lr_schedule_{len([k for k in setup.to_save if k.startswith('lr_schedule')])}"] = scheduler
    to_save = {**setup.to_save, "trainer": trainer}
    checkpoint = Checkpoint(
        to_save, DiskSaver(run_dir / CHECKPOINT_DIR, require_empty=False, atomic=True),
        filename_prefix=CHECKPOINT_PREFIX, n_saved=max(t.keep_checkpoints, 1),
        global_step_transform=lambda engine, _: engine.state.iteration,
        filename_pattern="{filename_prefix}_{global_step}.{ext}",
    )
    if t.checkpoint_every > 0:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=t.checkpoint_every),
                                  lambda e: None if e.state.diverged else checkpoint(e))
    trainer.add_event_handler(Events.COMPLETED, lambda e: None if e.state.diverged or (
        e.state.iteration % max(t.checkpoint_every, 1) == 0 and t.checkpoint_every > 0) else checkpoint(e))

    writer = None
    if idist.get_rank() == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    metrics = MetricsCSV(run_dir, writer)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _log(engine: Engine) -> None:
        metrics.accumulate(engine.state.output)
        it = engine.state.iteration
        if it % max(t.log_every, 1) == 0 or it == t.iterations:
            lrs = {f"lr{i}": opt.param_groups[0]["lr"] for i, opt in enumerate(setup.optimizers)}
            metrics.flush_train(it, lrs)
        visuals = engine.state.output.get("visuals")
        if writer is not None and visuals and t.image_every > 0 and (it % t.image_every == 0 or it == t.iterations):
            writer.add_image("train/" + "|".join(visuals), _visual_grid(visuals), it)

    if setup.validate is not None:
        def _validate(engine: Engine) -> None:
            values = setup.validate()
            engine.state.metrics.update(values)
            metrics.write(engine.state.iteration, "val", values)
            if idist.get_rank() == 0:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                print(f"[medgen] iteration {engine.state.iteration}: validation {shown}", flush=True)

        if t.val_every > 0:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=t.val_every), _validate)
        trainer.add_event_handler(Events.COMPLETED, lambda e: None if t.val_every > 0 and
                                  e.state.iteration % t.val_every == 0 else _validate(e))

    if idist.get_rank() == 0 and os.environ.get("MEDGEN_PROGRESS", "1") != "0":
        from ignite.handlers import ProgressBar

        shown = ("loss", "loss_g", "loss_d_a", "loss_d_b")
        ProgressBar(persist=False, disable=None).attach(  # disable=None: no bar when stderr is not a terminal
            trainer, output_transform=lambda out: {k: v for k, v in out.items() if k in shown})

    if resume:
        last = latest_checkpoint(run_dir)
        if last is None:
            raise MedgenError(run_dir, "nothing to resume: no checkpoint in checkpoints/")
        Checkpoint.load_objects(to_load=to_save, checkpoint=load_checkpoint(last))
        print(f"[medgen] resumed from {last} at iteration {trainer.state.iteration}", flush=True)
    start = trainer.state.iteration * t.batch_size
    loader = setup.make_loader(start)
    if trainer.state.iteration < t.iterations:
        trainer.run(loader, max_epochs=1, epoch_length=t.iterations)
    if writer is not None:
        writer.close()
    if trainer.state.diverged:
        shown = ", ".join(f"{k}={v}" for k, v in trainer.state.diverged.items())
        last = latest_checkpoint(run_dir)
        raise MedgenError(run_dir, f"training diverged at iteration {trainer.state.iteration} ({shown}); "
                                   f"last good checkpoint: {last.name if last else 'none'} (lower optim.lr, or try "
                                   "train.amp=none, then --resume or start again)")
    return trainer
