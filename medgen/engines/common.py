"""What every training task shares: the Ignite trainer and its handlers (checkpoint/resume from one
``to_save`` dict, metrics.csv, TensorBoard, progress, validation, learning-rate schedule), distributed
gradient averaging, the sample loader and the GAN loss. Device, precision and seeding are in
:mod:`medgen.runtime`.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, PiecewiseLinear, ProgressBar
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from medgen.data.patches import IndexStream
from medgen.errors import MedgenError, short
from medgen.models.run import CHECKPOINT_DIR, CHECKPOINT_PREFIX, EMA_SUFFIX, latest_checkpoint, load_checkpoint
from medgen.models.shipped import resolve_model
from medgen.runtime import CpuShare, autocast


def set_requires_grad(nets: Iterable[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """LSGAN (``lsgan``: MSE) or ``vanilla`` (BCE with logits) loss of discriminator ``logits`` against real/fake.

    >>> float(gan_loss(torch.ones(2, 1), True, "lsgan")), float(gan_loss(torch.ones(2, 1), False, "lsgan"))
    (0.0, 1.0)
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits.float(), target.float())
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def patchgan_update(disc: torch.nn.Module, opt_d: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                    device: torch.device, amp: str, scaler) -> torch.Tensor:
    """One LSGAN step of a discriminator that translators train beside their generator: ``real`` patches against
    ``fake`` ones (detached here); the caller's ``scaler.update()`` follows. Returns the discriminator's loss."""
    set_requires_grad([disc], True)
    opt_d.zero_grad(set_to_none=True)
    with autocast(device, amp):
        logits_real, logits_fake = disc(real), disc(fake.detach())
        loss_d = 0.5 * (gan_loss(logits_real, True, "lsgan") + gan_loss(logits_fake, False, "lsgan"))
    scaler.scale(loss_d).backward()
    average_gradients([disc])
    scaler.step(opt_d)
    return loss_d


def logged(loss: torch.Tensor | None) -> float:
    """A loss as a step reports it: 0 when the step had nothing to compute it on (``None``), never NaN, which the
    trainer stops on as divergence.

    >>> logged(None), logged(torch.tensor(0.5))
    (0.0, 0.5)
    """
    return 0.0 if loss is None else float(loss.detach())


def weight_average(net: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``net``'s weights (updated by the step after each optimizer step,
    checkpointed as ``NAME_ema`` and used by inference); None when ``decay`` is 0."""
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None


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

    def make_loader(start: int) -> DataLoader:
        sampler = IndexStream(start, idist.get_world_size(), idist.get_rank())
        return DataLoader(samples, batch_size=train_cfg.batch_size, sampler=sampler,
                          num_workers=train_cfg.num_workers, pin_memory=device.type == "cuda")

    return make_loader


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
        finish: ``run_dir -> None``, called once the run has reached its last iteration (rank 0; a resumed finished
            run calls it again): writes what inference fits from the trained networks into the run directory
            (a VAE's encodings, ``latents.pt``), so that sampling never needs the training data.
    """

    step: Callable[[Engine, Mapping], dict]
    to_save: dict
    make_loader: Callable[[int], DataLoader]
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    lr: float = 2e-4
    validate: Callable[[], dict] | None = None
    artifacts: dict[str, dict] = field(default_factory=dict)
    finish: Callable[[Path], None] | None = None


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

    def cut(self, iteration: int) -> None:
        """Drop the rows logged after ``iteration`` (a resumed run's checkpoint: those iterations run again),
        rewriting the file atomically."""
        if idist.get_rank() != 0 or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= iteration]
        if len(kept) == len(rows):
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, self.path)

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


def start_from(to_save: Mapping, init: str | Path) -> Path:
    """Load into the networks of ``to_save`` (weight averages included) their weights from ``init``, a run
    directory (its latest checkpoint), a checkpoint file or a shipped model's name; returns the file read. A weight
    average the checkpoint lacks (``net_ema`` of a run without one, a shipped model) starts from the weights it
    averages; a discriminator it lacks (``D``, ``D_a``, ...: a run trained without a GAN) starts from scratch, as
    it only judges the training. Optimizers are left alone."""
    path = Path(resolve_model(str(init)))
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise MedgenError(path, "train.init: this run has no checkpoint")
        path = found
    state = load_checkpoint(path)
    nets = {name: obj for name, obj in to_save.items() if isinstance(obj, torch.nn.Module)}
    for name, net in nets.items():
        base = name.removesuffix(EMA_SUFFIX)
        if name.endswith(EMA_SUFFIX) and name not in state and base in state and isinstance(net, AveragedModel):
            state[name] = {**{f"module.{k}": v for k, v in state[base].items()}, "n_averaged": net.n_averaged.clone()}
    fresh = [name for name in nets if name not in state and (name == "D" or name.startswith("D_"))]
    missing = [name for name in nets if name not in state and name not in fresh]
    if missing:
        raise MedgenError(path, f"train.init: the checkpoint has no {', '.join(missing)} weights (another task's run?)")
    for name, net in nets.items():
        if name in fresh:
            print(f"[medgen] {name} starts from scratch: {path} has no discriminator", flush=True)
            continue
        try:
            net.load_state_dict(state[name])
        except RuntimeError as exc:
            raise MedgenError(path, f"train.init: its '{name}' weights do not fit this network "
                                    f"({str(exc).splitlines()[0][:120]})") from None
    print(f"[medgen] weights from {path}", flush=True)
    return path


def run_trainer(cfg, run_dir: Path, setup: TaskSetup, resume: bool) -> Engine:
    """Run ``setup.step`` for ``cfg.train.iterations`` on an Ignite Engine with medgen's handlers."""
    t = cfg.train
    trainer = Engine(setup.step)
    trainer.state.diverged = None
    share = CpuShare(t.threads)  # the CPU's cores split between the medgen processes running now
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: share.update())

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
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when training

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
        shown = ("loss", "loss_g", "loss_d_a", "loss_d_b")
        ProgressBar(persist=False, disable=None).attach(  # disable=None: no bar when stderr is not a terminal
            trainer, output_transform=lambda out: {k: v for k, v in out.items() if k in shown})

    if resume:
        last = latest_checkpoint(run_dir)
        if last is None:
            raise MedgenError(run_dir, "nothing to resume: no checkpoint in checkpoints/")
        try:
            Checkpoint.load_objects(to_load=to_save, checkpoint=load_checkpoint(last))
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise MedgenError(last, f"cannot resume from this checkpoint ({short(exc, 120)})") from None
        metrics.cut(trainer.state.iteration)
        print(f"[medgen] resumed from {last} at iteration {trainer.state.iteration}", flush=True)
    start = trainer.state.iteration * t.batch_size
    loader = setup.make_loader(start)
    if trainer.state.iteration < t.iterations:
        with share:
            trainer.run(loader, max_epochs=1, epoch_length=t.iterations)
    if writer is not None:
        writer.close()
    if trainer.state.diverged:
        shown = ", ".join(f"{k}={v}" for k, v in trainer.state.diverged.items())
        last = latest_checkpoint(run_dir)
        raise MedgenError(run_dir, f"training diverged at iteration {trainer.state.iteration} ({shown}); "
                                   f"last good checkpoint: {last.name if last else 'none'} (lower optim.lr, or try "
                                   "train.amp=none, then --resume or start again)")
    if setup.finish is not None and idist.get_rank() == 0:
        with share:
            setup.finish(run_dir)
    return trainer
