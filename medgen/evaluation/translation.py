"""Evaluating translators on paired volumes (SynthRAD metrics in HU) beside an identity baseline.

The identity baseline is the MRI itself, robustly scaled into the CT range (its 0.5/99.5 percentiles
mapped to the ends of the CT window): what a segmenter or metric sees with no translation at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medgen.evaluation.metrics import body_mask, synthrad_metrics
from medgen.io import case_name, load_image
from medgen.keys import Modality
from medgen.transforms import Preprocessor


def identity_baseline(mri: np.ndarray, ref, preprocess) -> np.ndarray:
    """The MRI rescaled into the CT window (HU), on its own grid."""
    pre = Preprocessor.from_config(Modality.MRI, preprocess)
    x, geom = pre.forward(mri, ref)
    ct_pre = Preprocessor.from_config(Modality.CT, preprocess)
    return pre.restore(ct_pre.to_intensity(x, geom)[0], geom)


def evaluate_pairs(translate: Callable[[np.ndarray, object], np.ndarray], pairs: Sequence[tuple[Path, Path]],
                   preprocess, baseline: bool = True) -> list[dict]:
    """Per-case SynthRAD metrics of ``translate(mri, ref) -> HU`` against the paired CT (body mask from the CT)."""
    rows = []
    for mri_path, ct_path in pairs:
        mri, ref = load_image(mri_path)
        ct, _ = load_image(ct_path)
        mask = body_mask(ct)
        row = {"case": case_name(mri_path)}
        row.update(synthrad_metrics(translate(mri, ref), ct, mask))
        if baseline:
            base = synthrad_metrics(identity_baseline(mri, ref, preprocess), ct, mask)
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
            rows = evaluate_pairs(lambda mri, ref: translate_array(generator, cfg, mri, ref, device)[0], pairs,
                                  cfg.preprocess, baseline=False)
            return mean_rows(rows)
        finally:
            generator.train()

    return validate
