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

from medgen.keys import Keys


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

    A centre voxel is drawn first (on ``pos_key`` > 0 with probability ``pos_prob``, else inside the body
    with probability ``fg_prob``, else anywhere); 2D samples are the axial slice through it, 3D samples
    the patch around it.

    Args:
        volumes: cached volumes, dicts of key -> ``(1, X, Y, Z)`` tensors (from ``cached_volumes``).
        keys: keys cropped together (e.g. image and label).
        patch_size: 2D ``(X, Y)`` or 3D ``(X, Y, Z)``.
        spatial_dims: 2 (slices along the last, axial, axis) or 3.
        seed: sample ``n`` uses the generator ``(seed, n)``.
        fg_key: key whose values ``> fg_threshold`` define the body (foreground).
        min_foreground: 2D: slices with a smaller body fraction are never drawn.
        fg_prob: probability that a patch is centred on a body voxel (else anywhere).
        pos_key / pos_prob: optional label key whose positive voxels are drawn first with ``pos_prob``.
        pad_values: key -> value used where a patch leaves the volume (default -1, background in [-1, 1]).
        transform: optional callable applied to each sample dict (e.g. MONAI random intensity transforms).
        slices / slab_keys: 2D: the keys in ``slab_keys`` hold ``slices`` axial slices centred on the drawn one, as
            channels ``(slices, X, Y)`` (2.5D; beyond the volume: the pad value); the other keys the centre slice.
    """

    def __init__(self, volumes: Sequence[Mapping[Hashable, torch.Tensor]], keys: Sequence[Hashable],
                 patch_size: Sequence[int], spatial_dims: int, seed: int, fg_key: Hashable,
                 fg_threshold: float = -0.9, min_foreground: float = 0.05, fg_prob: float = 0.9,
                 pos_key: Hashable | None = None, pos_prob: float = 0.0,
                 pad_values: Mapping[Hashable, float] | None = None, transform=None, length: int = 2**62,
                 slices: int = 1, slab_keys: Sequence[Hashable] = ()):
        if spatial_dims not in (2, 3) or len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size {list(patch_size)} does not fit spatial_dims={spatial_dims}")
        if not volumes:
            raise ValueError("no volumes to sample from")
        self.volumes, self.keys, self.size = list(volumes), list(keys), [int(s) for s in patch_size]
        self.spatial_dims, self.seed, self.length = spatial_dims, seed, length
        self.fg_prob, self.pos_prob, self.transform = fg_prob, pos_prob, transform
        self.slices, self.slab_keys = int(slices), set(slab_keys) if slices > 1 else set()
        self.pad = {k: -1.0 for k in self.keys} | dict(pad_values or {})
        self.ok_slices, self.fg, self.pos = [], [], []
        for vol in self.volumes:
            body = vol[fg_key][0] > fg_threshold
            if spatial_dims == 2:
                ok = torch.nonzero(body.float().mean(dim=(0, 1)) >= min_foreground).flatten()
                ok = ok if len(ok) else torch.arange(body.shape[-1])
            else:
                ok = torch.arange(body.shape[-1])
            valid = torch.zeros(body.shape[-1], dtype=torch.bool)
            valid[ok] = True
            self.ok_slices.append(ok)
            self.fg.append(_coords(body & valid))
            self.pos.append(_coords((vol[pos_key][0] > 0) & valid) if pos_key is not None else _coords(None))

    def __len__(self) -> int:
        return self.length

    def _center(self, rng: np.random.Generator, v: int, shape: Sequence[int]) -> list[int]:
        pos, fg = self.pos[v], self.fg[v]
        if len(pos) and rng.random() < self.pos_prob:
            return pos[rng.integers(len(pos))].tolist()
        if len(fg) and rng.random() < self.fg_prob:
            return fg[rng.integers(len(fg))].tolist()
        z = int(self.ok_slices[v][rng.integers(len(self.ok_slices[v]))])
        return [int(rng.integers(s)) for s in shape[:2]] + [z]

    def __getitem__(self, n: int) -> dict[Hashable, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(n)])
        v = int(rng.integers(len(self.volumes)))
        vol = self.volumes[v]
        shape = vol[self.keys[0]].shape[1:]
        center = self._center(rng, v, shape)
        if self.spatial_dims == 2:
            start = _start(center[:2], self.size, shape[:2])
            half = self.slices // 2
            out = {k: crop_or_pad(vol[k], [*start, center[2] - half], [*self.size, self.slices], self.pad[k])[0]
                   .permute(2, 0, 1) if k in self.slab_keys else
                   crop_or_pad(vol[k][..., center[2]], start, self.size, self.pad[k]) for k in self.keys}
        else:
            start = _start(center, self.size, shape)
            out = {k: crop_or_pad(vol[k], start, self.size, self.pad[k]) for k in self.keys}
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            out = self.transform(out)
        return out


def _coords(mask: torch.Tensor | None, limit: int = 200_000) -> torch.Tensor:
    """Voxel coordinates of ``mask`` (evenly thinned to at most ``limit``)."""
    if mask is None:
        return torch.zeros((0, 3), dtype=torch.long)
    coords = torch.nonzero(mask)
    if len(coords) > limit:
        coords = coords[torch.linspace(0, len(coords) - 1, limit).long()]
    return coords


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


def labelled_patches(volumes: Sequence[Mapping[Hashable, torch.Tensor]], data, spatial_dims: int, seed: int,
                     transform=None, slices: int = 1) -> RandomPatches:
    """Image + label patches of :func:`medgen.data.volumes.labelled_volumes` as a ``LabelledDataConfig``
    (``data``) describes them: its patch size and foreground/positive sampling, labels padded with 0
    (generation labels too, when the volumes hold them); ``slices`` > 1: 2.5D, the image (and generation labels)
    as that many slices, the label the centre one's."""
    gen = bool(volumes) and Keys.GEN in volumes[0]  # the body of generation labels: data-driven, no threshold
    keys = [Keys.IMAGE, Keys.LABEL] + ([Keys.GEN] if gen else [])
    return RandomPatches(volumes, keys, data.patch_size, spatial_dims, seed, fg_key=Keys.GEN if gen else Keys.IMAGE,
                         fg_threshold=0 if gen else -0.9, min_foreground=data.min_foreground, fg_prob=data.fg_prob,
                         pos_key=Keys.LABEL, pos_prob=data.pos_prob, pad_values={Keys.LABEL: 0, Keys.GEN: 0},
                         transform=transform, slices=slices, slab_keys=[Keys.IMAGE, Keys.GEN])


class IndexStream(Sampler[int]):
    """Endless sample indices ``start, start+1, ...`` interleaved over distributed ranks."""

    def __init__(self, start: int = 0, world_size: int = 1, rank: int = 0):
        self.start, self.world_size, self.rank = start, world_size, rank

    def __iter__(self) -> Iterator[int]:
        n = self.start
        while True:
            yield n * self.world_size + self.rank
            n += 1
