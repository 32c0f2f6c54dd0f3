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
