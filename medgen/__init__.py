"""medgen: MRI <-> CT translation and synthetic augmentation on MONAI and PyTorch-Ignite."""

from __future__ import annotations

__version__ = "0.1.0"
