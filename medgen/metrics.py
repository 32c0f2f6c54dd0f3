"""Image-similarity and segmentation metrics, computed with MONAI; shared by training validation,
the pipeline's QC and :mod:`medgen.evaluation`.

SynthRAD protocol for synthetic CT: both volumes clipped to [-1024, 3000] HU; MAE and PSNR over the
voxels of a body mask (PSNR with the population range 4024 HU); SSIM with a 7-voxel uniform window on
volumes shifted to non-negative values with everything outside the mask set to -1024 HU, averaged
over the mask voxels whose window lies inside the volume (as skimage's ``crop(ssim_map, 3)``).
MONAI's SSIM uses population (not sample) covariance, a relative difference below 1 % of 1 - SSIM.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.metrics.regression import compute_ssim_and_cs
from scipy import ndimage

from medgen.io import case_name, load_image
from medgen.transforms import largest_component

SYNTHRAD_RANGE = (-1024.0, 3000.0)


def body_mask(ct_hu: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The patient's body on a CT: above ``threshold`` HU, largest component, holes filled slice-wise.

    >>> int(body_mask(np.pad(np.zeros((4, 4, 2)), ((2, 2), (2, 2), (0, 0)), constant_values=-1000)).sum())
    32
    """
    mask = np.asarray(ct_hu) > threshold
    mask = largest_component(mask)
    for z in range(mask.shape[-1]):
        mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return mask


def synthrad_metrics(pred_hu: np.ndarray, true_hu: np.ndarray, mask: np.ndarray,
                     hu_range: Sequence[float] = SYNTHRAD_RANGE) -> dict[str, float]:
    """MAE (HU), PSNR (dB) and SSIM of a synthetic CT inside ``mask``, SynthRAD style.

    >>> ct = np.random.default_rng(0).normal(0, 100, (16, 16, 16))
    >>> m = synthrad_metrics(ct + 10, ct, np.ones(ct.shape, bool))
    >>> round(m["mae"], 3), round(m["psnr"], 2)
    (10.0, 52.09)
    """
    lo, hi = float(hu_range[0]), float(hu_range[1])
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("empty mask: no voxel to evaluate")
    pred = np.clip(np.asarray(pred_hu, np.float64), lo, hi)
    true = np.clip(np.asarray(true_hu, np.float64), lo, hi)
    diff = pred[mask] - true[mask]
    mae = float(np.abs(diff).mean())
    mse = float((diff**2).mean())
    psnr = float(10 * np.log10((hi - lo) ** 2 / mse)) if mse > 0 else float("inf")
    return {"mae": mae, "psnr": psnr, "ssim": masked_ssim(pred, true, mask, lo, hi)}


def masked_ssim(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, lo: float, hi: float, window: int = 7) -> float:
    """SSIM map (uniform ``window``) averaged over ``mask``; inputs already clipped to ``[lo, hi]``."""
    spatial_dims = pred.ndim
    p = torch.from_numpy(np.where(mask, pred, lo) - lo).float()[None, None]
    t = torch.from_numpy(np.where(mask, true, lo) - lo).float()[None, None]
    ssim_map, _ = compute_ssim_and_cs(p, t, spatial_dims, [window] * spatial_dims, [1.5] * spatial_dims,
                                      data_range=hi - lo, kernel_type="uniform")
    pad = window // 2
    inner = mask[tuple(slice(pad, n - pad) for n in mask.shape)]
    values = ssim_map[0, 0].numpy()[inner]
    return float(values.mean()) if values.size else float("nan")


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                         distances: bool = True) -> dict[str, float]:
    """Dice, HD95 and ASSD (mm, with voxel ``spacing``) of two binary masks, with MONAI metrics
    (``distances=False``: Dice only).

    Empty-mask conventions: both empty gives Dice 1 and distances 0; one empty gives Dice 0 and
    infinite distances.

    >>> a = np.zeros((10, 10, 10), bool); a[2:8, 2:8, 2:8] = True
    >>> segmentation_metrics(a, a, (1, 1, 1))["dice"]
    1.0
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() or not t.any():
        both = not p.any() and not t.any()
        out = {"dice": 1.0 if both else 0.0}
        return out | ({"hd95": 0.0 if both else float("inf"), "assd": 0.0 if both else float("inf")} if distances else {})
    y_pred = torch.from_numpy(np.stack([~p, p]))[None].float()
    y = torch.from_numpy(np.stack([~t, t]))[None].float()
    out = {"dice": float(DiceMetric(include_background=False)(y_pred, y).item())}
    if distances:
        spacing = [float(s) for s in spacing]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's own deprecation notice inside get_mask_edges
            hd95 = HausdorffDistanceMetric(include_background=False, percentile=95)(y_pred, y, spacing=spacing)
            assd = SurfaceDistanceMetric(include_background=False, symmetric=True)(y_pred, y, spacing=spacing)
        out |= {"hd95": float(hd95.item()), "assd": float(assd.item())}
    return out


def evaluate_pairs(translate: Callable[[np.ndarray, object], np.ndarray], pairs: Sequence[tuple[Path, Path]],
                   baseline: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict]:
    """Per-case SynthRAD metrics of ``translate(mri, ref) -> HU`` against the paired CT (body mask from the
    CT), with those of ``baseline(mri) -> HU`` (prefixed ``identity_``) when given."""
    rows = []
    for mri_path, ct_path in pairs:
        mri, ref = load_image(mri_path)
        ct, _ = load_image(ct_path)
        mask = body_mask(ct)
        row = {"case": case_name(mri_path)}
        row.update(synthrad_metrics(translate(mri, ref), ct, mask))
        if baseline is not None:
            row.update({f"identity_{k}": v for k, v in synthrad_metrics(baseline(mri), ct, mask).items()})
        rows.append(row)
    return rows


def mean_rows(rows: Sequence[dict]) -> dict[str, float]:
    """The mean of every column but ``case``.

    >>> mean_rows([{"case": "a", "mae": 10.0}, {"case": "b", "mae": 30.0}])
    {'mae': 20.0}
    """
    keys = [k for k in rows[0] if k != "case"] if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
