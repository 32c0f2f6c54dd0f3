"""Run a network over a whole preprocessed volume: slice-wise (2D) or sliding window (3D)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from medgen.runtime import autocast

# On a CPU, passes larger than this many voxels ran slower per slice (caches overflow): ResNet-9 ngf 64 on
# 256^2 slices, 2 AVX2 cores: 580 ms a slice one at a time, 625 ms in fours, 710 ms in sixteens; at 128^2
# fours were fastest (143 ms against 155 ms singly). GPUs keep the configured batch size.
# Measured by `python benchmarks/translate_volume.py --layouts [--size 128]`.
CPU_PASS_VOXELS = 2**16


def pass_size(batch_size: int, device: torch.device, item_voxels: int) -> int:
    """Items per forward pass: ``batch_size``, capped on a CPU to about :data:`CPU_PASS_VOXELS` voxels."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_PASS_VOXELS // max(item_voxels, 1)))


def _pad_to_multiple(x: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, list[int]]:
    pads = []
    for n in reversed(x.shape[2:]):
        extra = (-n) % multiple
        pads += [extra // 2, extra - extra // 2]
    return (F.pad(x, pads, value=value) if any(pads) else x), pads


def _crop(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    spatial = x.shape[2:]
    for i, n in enumerate(spatial):
        lo, hi = pads[2 * (len(spatial) - 1 - i)], pads[2 * (len(spatial) - 1 - i) + 1]
        slices.append(slice(lo, n - hi))
    return x[tuple(slices)]


@torch.inference_mode()
def infer_volume(
    net: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    spatial_dims: int,
    device: torch.device,
    amp: str = "none",
    batch_size: int = 8,
    roi_size: Sequence[int] = (64, 64, 64),
    overlap: float = 0.5,
    multiple: int = 4,
    pad_value: float = -1.0,
    slices: int = 1,
) -> torch.Tensor:
    """Apply ``net`` to a ``(C, X, Y, Z)`` CPU volume; returns its ``(C_out, X, Y, Z)`` float32 output on CPU.

    2D: axial slices (last axis) in batches of ``batch_size``, each padded to a multiple of ``multiple``;
    ``slices`` > 1 (2.5D, a one-channel volume): each slice with its neighbours as ``slices`` channels, ``pad_value``
    beyond the first and last slice.
    3D: MONAI sliding window with Gaussian blending, ``overlap`` and ``roi_size``; patches go to
    ``device``, the output is accumulated on the CPU so memory stays bounded for large volumes.
    On a CPU the batch is capped by :func:`pass_size`.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        x, pads = _pad_to_multiple(x.to(device, non_blocking=True), multiple, pad_value)
        with autocast(device, amp):
            y = net(x)
        return _crop(y.float(), pads)

    if spatial_dims == 2:
        out = None
        depth, half = volume.shape[-1], slices // 2
        if half:
            if volume.shape[0] != 1:
                raise ValueError(f"2.5D inference takes a one-channel volume, not {volume.shape[0]} channels")
            volume = F.pad(volume, (half, half), value=pad_value)[0].unfold(-1, slices, 1)  # (X, Y, Z, slices)
            volume = volume.permute(3, 0, 1, 2)  # (slices, X, Y, Z): channel c is the slice c - half away
        batch_size = pass_size(batch_size, device, volume.shape[1] * volume.shape[2])
        for z0 in range(0, depth, batch_size):
            z1 = min(z0 + batch_size, depth)
            y = run(volume[..., z0:z1].permute(3, 0, 1, 2).float())  # (B, C, X, Y) slices
            if out is None:
                out = torch.empty((y.shape[1], *volume.shape[1:]), dtype=torch.float32)
            out[..., z0:z1] = y.permute(1, 2, 3, 0).cpu()
        return out
    roi = [int(r) for r in roi_size]
    batch_size = pass_size(batch_size, device, math.prod(roi))
    result = sliding_window_inference(volume[None].float(), roi, batch_size, run, overlap=overlap, mode="gaussian",
                                      sw_device=device, device=torch.device("cpu"), padding_mode="constant",
                                      cval=pad_value)
    return result[0].float()
