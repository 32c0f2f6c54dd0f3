"""Where and at what precision code runs: device choice, mixed precision, seeding, CPU threads.

Shared by training (``medgen.engines``) and inference (``medgen.inference``); no medgen import but
:mod:`medgen.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import tempfile
import time
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch

from medgen.errors import MedgenError

AMP_MODES = ("none", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name not in ("auto", "cpu", "cuda"):
        raise MedgenError(None, f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MedgenError(None, "device is cuda but no CUDA device is available")
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
    falls back to ``none`` (fp32, silently: a warning line would break the one-line error contract of
    every command on AVX2 CPUs), since emulated bf16 is ten times slower."""
    if amp not in AMP_MODES:
        raise MedgenError(None, f"amp must be none, bf16 or fp16, not {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise MedgenError(None, "amp fp16 needs CUDA; use bf16 on CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
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
    """Seed python, numpy and torch (each rank seeds the same: identical initial weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CpuShare:
    """The CPU cores shared fairly between the medgen processes of one user on one machine.

    torch gives every process one intra-op thread per core; two trainings on the same cores then run twice
    the threads the machine has, and OpenMP threads that spin while waiting for each other turn a 0.07 s step
    into 0.45 s (``benchmarks/contention.py``). Inside this context a process registers its PID under
    :attr:`folder` and, every ``interval`` seconds (:meth:`update`, called from the training loop), sets its
    threads to ``cores // live medgen processes`` (at least 1), so that a second training, or a rank of
    CPU DDP, takes half the cores and both keep going at about half speed. ``fixed`` > 0 (``train.threads``)
    pins this process's count (it still registers, so that the others make room for it); ``OMP_NUM_THREADS``
    in the environment (torchrun sets it to 1) caps it.
    """

    def __init__(self, fixed: int = 0, interval: float = 2.0, folder: str | os.PathLike | None = None):
        env = os.environ.get("OMP_NUM_THREADS", "")
        self.fixed = max(fixed, 0)
        self.cap = int(env) if env.isdigit() and int(env) > 0 else None
        self.interval = interval
        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / f"medgen-cpu-{os.getuid()}"
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._file: Path | None = None
        self._next = 0.0

    def peers(self) -> int:
        """Live registered medgen processes (this one included); stale entries are removed."""
        alive = 0
        for entry in self.folder.glob("*.pid"):
            try:
                os.kill(int(entry.stem), 0)
                alive += 1
            except ProcessLookupError:
                entry.unlink(missing_ok=True)
            except (ValueError, PermissionError):  # not ours to judge: count it
                alive += 1
        return max(alive, 1)

    def threads(self) -> int:
        """The intra-op thread count this process should use now."""
        if self.fixed:
            return self.fixed
        share = max(1, self.cores // self.peers())
        return min(share, self.cap) if self.cap else share

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        n = self.threads()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)

    def __enter__(self) -> CpuShare:
        try:  # a pinned process registers too: the others must count it
            self.folder.mkdir(mode=0o700, exist_ok=True)
            self._file = self.folder / f"{os.getpid()}.pid"
            self._file.touch()
        except OSError:  # an unwritable temp dir: no sharing, torch's default
            self._file = None
        self.update(force=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.unlink(missing_ok=True)
