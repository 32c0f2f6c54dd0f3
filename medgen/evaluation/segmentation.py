"""Segmentation evaluation: Dice, HD95 and ASSD (mm) per case and on average, as CSV and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medgen.data.datalist import list_volumes
from medgen.data.volumes import remap_labels
from medgen.errors import MedgenError
from medgen.evaluation.report import summarize, write_report
from medgen.io import case_name, load_image
from medgen.metrics import segmentation_metrics
from medgen.validate import check_label_values, check_same_grid


def level_dice(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray, fraction: float = 0.15) -> dict[str, float]:
    """Dice at the two ends of the true organ along the body's long axis: ``top`` (the slices from the top
    ``fraction`` of the truth's extent upward: a liver's dome) and ``bottom`` (from the lowest ``fraction`` down: its
    lowest slices), where 2D masks go wrong first. The superior axis is the voxel axis closest to S in ``affine``.

    >>> truth = np.zeros((4, 4, 10), bool); truth[1:3, 1:3, 2:8] = True  # 6 slices, z increasing upward
    >>> pred = truth.copy(); pred[..., 7] = False; pred[1:3, 1:3, 8] = True  # the top slice one too high
    >>> level_dice(pred, truth, np.eye(4), fraction=0.3)  # the top 2 slices (6 and 7) upward, the bottom 2 down
    {'top': 0.5, 'bottom': 1.0}
    """
    axis = int(np.argmax(np.abs(affine[2, :3])))
    up = affine[2, axis] > 0
    present = np.flatnonzero(np.moveaxis(truth, axis, -1).reshape(-1, truth.shape[axis]).any(0))
    if not len(present):
        return {"top": float("nan"), "bottom": float("nan")}
    n = max(1, int(round(fraction * len(present))))
    lo, hi = present[:n][-1], present[-n:][0]  # the lowest-index band ends at lo, the highest starts at hi
    index = np.arange(truth.shape[axis]).reshape([-1 if d == axis else 1 for d in range(truth.ndim)])
    bands = {"top": index >= hi, "bottom": index <= lo} if up else {"top": index <= lo, "bottom": index >= hi}

    def dice(band: np.ndarray) -> float:
        p, t = pred & band, truth & band
        total = int(p.sum()) + int(t.sum())
        return round(2 * float((p & t).sum()) / total, 3) if total else 1.0

    return {name: dice(band) for name, band in bands.items()}


def evaluate_folders(pred: str | Path, truth: str | Path, label_map: Mapping[int, int] | None = None,
                     pred_label_map: Mapping[int, int] | None = None, cls: int = 1, levels: bool = False) -> list[dict]:
    """Per-case metrics of class ``cls`` for predictions matched to ground truth by case name (``levels``: also
    :func:`level_dice` as ``dice_top`` and ``dice_bottom``)."""
    truths = {case_name(p): p for p in list_volumes(truth)}
    rows = []
    for p in list_volumes(pred):
        name = case_name(p)
        if name not in truths:
            raise MedgenError(p, f"no ground truth with the same case name in {truth}")
        pa, pref = load_image(p)
        ta, tref = load_image(truths[name])
        check_same_grid(tref, pref)
        pm = remap_labels(check_label_values(pa, p), pred_label_map) == cls
        tm = remap_labels(check_label_values(ta, truths[name]), label_map) == cls
        rows.append({"case": name, **segmentation_metrics(pm, tm, tref.spacing)})
        if levels:
            rows[-1].update({f"dice_{k}": v for k, v in level_dice(pm, tm, tref.affine).items()})
    if not rows:
        raise MedgenError(pred, "no predictions to evaluate")
    return rows


def evaluate_segmentation(pred: str | Path, truth: str | Path, label_map: Mapping[int, int] | None = None,
                          pred_label_map: Mapping[int, int] | None = None,
                          out: str | Path | None = None) -> tuple[list[dict], dict[str, float], Path]:
    """``medgen evaluate segmentation``: per-case rows, their summary and the CSV written
    (``out``.csv/.json, default ``PRED/evaluation``)."""
    rows = evaluate_folders(pred, truth, label_map, pred_label_map)
    csv_path, _ = write_report(rows, out or Path(pred) / "evaluation")
    return rows, summarize(rows), csv_path


def flag_quality(rows: list[dict], bad: float = 0.7, good: float = 0.8) -> dict:
    """How well the pipeline's QC flags single out bad masks, over summary rows that carry a ``dice``: for each
    flag, its precision and recall on the masks with Dice < ``bad``, and how often it fires on masks with
    Dice >= ``good``; and how well ``uncertainty`` ranks the masks (Spearman's rho against Dice: -1 is a perfect
    ranking of the worst first).

    >>> rows = [{"dice": 0.9, "flags": "", "uncertainty": 0.1}, {"dice": 0.5, "flags": "a", "uncertainty": 0.6},
    ...         {"dice": 0.85, "flags": "a;b", "uncertainty": 0.2}]
    >>> q = flag_quality(rows); q["flags"]["a"]["precision"], q["flags"]["a"]["recall"], q["flags"]["a"]["on_good"]
    (0.5, 1.0, 0.5)
    >>> q["spearman_uncertainty_dice"]
    -1.0
    """
    from scipy.stats import spearmanr

    scored = [r for r in rows if isinstance(r.get("dice"), float)]
    names = sorted({f for r in scored for f in str(r.get("flags") or "").split(";") if f})
    n_bad = sum(r["dice"] < bad for r in scored)
    n_good = sum(r["dice"] >= good for r in scored)
    flags = {}
    for name in names:
        fired = [r for r in scored if name in str(r.get("flags") or "").split(";")]
        hits = sum(r["dice"] < bad for r in fired)
        flags[name] = {"fired": len(fired), "precision": hits / len(fired) if fired else float("nan"),
                       "recall": hits / n_bad if n_bad else float("nan"),
                       "on_good": sum(r["dice"] >= good for r in fired) / n_good if n_good else float("nan")}
    unsure = [(r["uncertainty"], r["dice"]) for r in scored if isinstance(r.get("uncertainty"), float)]
    rho = float(spearmanr(*zip(*unsure))[0]) if len(unsure) > 2 else float("nan")
    return {"cases": len(scored), "bad": n_bad, "good": n_good, "flags": flags, "spearman_uncertainty_dice": rho}
