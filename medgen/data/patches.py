"""Deterministic random 2D slices / 3D patches from cached volumes, and unpaired sampling.

Sample ``n`` depends only on ``(seed, n)``, so training is reproducible, any number of DataLoader
workers gives the same batches, and a resumed run draws exactly the samples it would have drawn.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler


def crop_or_pad(volume: torch.Tensor, start: Sequence[int], size: Sequence[int], value: float) -> torch.Tensor:
    """Crop ``(C, *spatial)`` at ``start`` with ``size``, padding with ``value`` where it leaves the volume."""
    spatial = volume.shape[1:]
    slices, pads = [slice(None)], []
    for s, n, total in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, total)
        slices.append(slice(lo, hi))
        pads.append((lo - s, s + n - hi))
    out = volume[tuple(slices)]
    if any(a or b for a, b in pads):
        flat = [p for pair in reversed(pads) for p in pair]
        out = F.pad(out, flat, value=value)
    return out


def _start(center: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> list[int]:
    """Patch start centred on ``center``, kept inside the volume along axes where it fits."""
    return [min(max(c - s // 2, 0), t - s) if t >= s else (t - s) // 2 for c, s, t in zip(center, size, shape)]


class RandomPatches(Dataset):
    """Random foreground-aware patches: 2D axial slices (``spatial_dims=2``) or 3D patches.

    Args:
        volumes: cached volumes, dicts of key -> ``(1, X, Y, Z)`` tensors (from ``cached_volumes``).
        keys: keys cropped together (e.g. image and label).
        patch_size: 2D ``(X, Y)`` or 3D ``(X, Y, Z)``.
        spatial_dims: 2 (slices along the last, axial, axis) or 3.
        seed: sample ``n`` uses the generator ``(seed, n)``.
        fg_key: key whose values ``> fg_threshold`` define the body (foreground).
        min_foreground: 2D: slices with a smaller body fraction are never drawn.
        fg_prob: probability that a patch is centred on a foreground voxel (else anywhere).
        pad_values: key -> value used where a patch leaves the volume (default -1, background in [-1, 1]).
    """

    def __init__(self, volumes: Sequence[Mapping[Hashable, torch.Tensor]], keys: Sequence[Hashable],
                 patch_size: Sequence[int], spatial_dims: int, seed: int, fg_key: Hashable,
                 fg_threshold: float = -0.9, min_foreground: float = 0.05, fg_prob: float = 0.9,
                 pad_values: Mapping[Hashable, float] | None = None, length: int = 2**62):
        if spatial_dims not in (2, 3) or len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size {list(patch_size)} does not fit spatial_dims={spatial_dims}")
        if not volumes:
            raise ValueError("no volumes to sample from")
        self.volumes, self.keys, self.size = list(volumes), list(keys), [int(s) for s in patch_size]
        self.spatial_dims, self.seed, self.fg_prob, self.length = spatial_dims, seed, fg_prob, length
        self.pad = {k: -1.0 for k in self.keys} | dict(pad_values or {})
        self.slices, self.fg = [], []
        for vol in self.volumes:
            fg = vol[fg_key][0] > fg_threshold
            frac = fg.float().mean(dim=(0, 1))
            ok = torch.nonzero(frac >= min_foreground).flatten()
            self.slices.append(ok if len(ok) else torch.arange(fg.shape[-1]))
            coords = torch.nonzero(fg)
            if len(coords) > 200_000:
                coords = coords[torch.linspace(0, len(coords) - 1, 200_000).long()]
            self.fg.append(coords)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, n: int) -> dict[Hashable, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(n)])
        v = int(rng.integers(len(self.volumes)))
        vol, fg = self.volumes[v], self.fg[v]
        shape = vol[self.keys[0]].shape[1:]
        if self.spatial_dims == 2:
            z = int(self.slices[v][rng.integers(len(self.slices[v]))])
            in_slice = fg[fg[:, 2] == z]
            if len(in_slice) and rng.random() < self.fg_prob:
                center = in_slice[rng.integers(len(in_slice))][:2].tolist()
            else:
                center = [int(rng.integers(s)) for s in shape[:2]]
            start = _start(center, self.size, shape[:2])
            return {k: crop_or_pad(vol[k][..., z], start, self.size, self.pad[k]) for k in self.keys}
        if len(fg) and rng.random() < self.fg_prob:
            center = fg[rng.integers(len(fg))].tolist()
        else:
            center = [int(rng.integers(s)) for s in shape]
        start = _start(center, self.size, shape)
        return {k: crop_or_pad(vol[k], start, self.size, self.pad[k]) for k in self.keys}


class Unpaired(Dataset):
    """Zip independent sample streams (different seeds) into one unpaired sample, e.g. MRI and CT."""

    def __init__(self, *datasets: Dataset):
        self.datasets = datasets

    def __len__(self) -> int:
        return min(len(d) for d in self.datasets)  # type: ignore[arg-type]

    def __getitem__(self, n: int) -> dict:
        out: dict = {}
        for d in self.datasets:
            out.update(d[n])
        return out


class IndexStream(Sampler[int]):
    """Endless sample indices ``start, start+1, ...`` interleaved over distributed ranks."""

    def __init__(self, start: int = 0, world_size: int = 1, rank: int = 0):
        self.start, self.world_size, self.rank = start, world_size, rank

    def __iter__(self) -> Iterator[int]:
        n = self.start
        while True:
            yield n * self.world_size + self.rank
            n += 1
