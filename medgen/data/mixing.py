"""Mixing synthetic samples into training: any two MONAI-style sample streams, index-determined.

In a segmenter config::

    augment:
      synthetic: {source: synthetic/, ratio: 0.5}   # or source: runs/vae (sampled at setup)
      synthetic: {source: synthetic/, ratio: 0.5, until: 0.5}   # synthetic in the first half only

From user code, any MONAI-style sample stream can be mixed the same way::

    samples = MixedSamples(real_patches, synthetic_patches, ratio=0.3, seed=0)

Synthetic pairs are written by ``medgen synth`` (:mod:`medgen.inference.synthesize`).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class MixedSamples(Dataset):
    """Sample ``n`` comes from ``synthetic`` with probability ``ratio`` (decided by ``(seed, n)``), else ``real``;
    from sample ``stop`` on (the training stream's index; None: never), always ``real``.

    >>> mixed = MixedSamples(["real"] * 100, ["synthetic"] * 100, ratio=0.0)
    >>> {mixed[n] for n in range(100)}
    {'real'}
    >>> mixed = MixedSamples(["real"] * 100, ["synthetic"] * 100, ratio=1.0, stop=50)
    >>> {mixed[n] for n in range(50)}, {mixed[n] for n in range(50, 100)}
    ({'synthetic'}, {'real'})
    """

    def __init__(self, real: Dataset, synthetic: Dataset, ratio: float, seed: int = 0, stop: int | None = None):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], not {ratio}")
        self.real, self.synthetic, self.ratio, self.seed, self.stop = real, synthetic, ratio, seed, stop

    def __len__(self) -> int:
        return min(len(self.real), len(self.synthetic))  # type: ignore[arg-type]

    def __getitem__(self, n: int):
        if self.stop is not None and n >= self.stop:
            return self.real[n]
        use_synthetic = np.random.default_rng([self.seed, int(n)]).random() < self.ratio
        return (self.synthetic if use_synthetic else self.real)[n]
