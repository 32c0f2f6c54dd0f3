"""Evaluating translators on paired volumes (SynthRAD metrics in HU) beside an identity baseline.

The identity baseline is the MRI itself, linearly rescaled into the CT range: its 0.5/99.5 percentiles
are mapped onto the training CTs' 0.5/99.5 percentiles in HU (``ct_range`` in the run's norm.json). It
is what a metric or a segmenter sees with no translation at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medgen.evaluation.metrics import body_mask, synthrad_metrics
from medgen.io import case_name, load_image
from medgen.transforms import mri_range


def identity_baseline(mri: np.ndarray, ct_range: Sequence[float], percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """The MRI linearly rescaled (HU, float32): its ``percentiles`` onto ``ct_range``; same grid.

    >>> identity_baseline(np.array([0.0, 50.0, 100.0]), (-1000, 200), (0, 100)).tolist()
    [-1000.0, -400.0, 200.0]
    """
    lo, hi = mri_range(mri, percentiles)
    return ((np.asarray(mri, np.float32) - lo) / (hi - lo) * (ct_range[1] - ct_range[0]) + ct_range[0]).astype(np.float32)


def evaluate_pairs(translate: Callable[[np.ndarray, object], np.ndarray], pairs: Sequence[tuple[Path, Path]],
                   ct_range: Sequence[float] | None = None) -> list[dict]:
    """Per-case SynthRAD metrics of ``translate(mri, ref) -> HU`` against the paired CT (body mask from the CT),
    with the identity baseline's when ``ct_range`` is given."""
    rows = []
    for mri_path, ct_path in pairs:
        mri, ref = load_image(mri_path)
        ct, _ = load_image(ct_path)
        mask = body_mask(ct)
        row = {"case": case_name(mri_path)}
        row.update(synthrad_metrics(translate(mri, ref), ct, mask))
        if ct_range is not None:
            base = synthrad_metrics(identity_baseline(mri, ct_range), ct, mask)
            row.update({f"identity_{k}": v for k, v in base.items()})
        rows.append(row)
    return rows


def mean_rows(rows: Sequence[dict]) -> dict[str, float]:
    keys = [k for k in rows[0] if k != "case"] if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def validation_fn(cfg, generator, device) -> Callable[[], dict]:
    """Validation during CycleGAN training: MAE/PSNR/SSIM of G_ab on the paired validation volumes."""
    from medgen.data.datalist import list_volumes, pair_by_name
    from medgen.inference.translate import translate_array

    pairs = pair_by_name(list_volumes(cfg.data.val_mri, "mri"), list_volumes(cfg.data.val_ct, "ct"),
                         cfg.data.val_mri, cfg.data.val_ct)

    def validate() -> dict:
        generator.eval()
        try:
            rows = evaluate_pairs(lambda mri, ref: translate_array(generator, cfg, mri, ref, device)[0], pairs)
            return mean_rows(rows)
        finally:
            generator.train()

    return validate
