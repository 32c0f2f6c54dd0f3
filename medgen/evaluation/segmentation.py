"""Segmentation evaluation: Dice, HD95 and ASSD (mm) per case and on average, as CSV and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medgen.data.datalist import list_volumes
from medgen.data.volumes import remap_labels
from medgen.errors import MedgenError
from medgen.evaluation.report import summarize, write_report
from medgen.io import case_name, load_image
from medgen.metrics import segmentation_metrics
from medgen.validate import check_label_values, check_same_grid


def evaluate_folders(pred: str | Path, truth: str | Path, label_map: Mapping[int, int] | None = None,
                     pred_label_map: Mapping[int, int] | None = None, cls: int = 1) -> list[dict]:
    """Per-case metrics of class ``cls`` for predictions matched to ground truth by case name."""
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
