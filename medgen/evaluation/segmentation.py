"""Segmentation evaluation: Dice, HD95 and ASSD (mm) per case and on average, as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medgen.data.datalist import list_volumes
from medgen.data.volumes import remap_labels
from medgen.errors import MedgenError
from medgen.evaluation.metrics import segmentation_metrics
from medgen.io import atomic_write, case_name, load_image
from medgen.validate import check_same_grid

METRICS = ("dice", "hd95", "assd")


def summarize(rows: Sequence[Mapping], keys: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean and sd of each metric over the cases with a finite value (``n_inf`` counts the others)."""
    out: dict[str, float] = {}
    for k in keys:
        values = np.array([r[k] for r in rows if k in r], float)
        finite = values[np.isfinite(values)]
        out[f"{k}_mean"] = float(finite.mean()) if finite.size else float("nan")
        out[f"{k}_sd"] = float(finite.std()) if finite.size else float("nan")
        if finite.size < values.size:
            out[f"{k}_n_inf"] = int(values.size - finite.size)
    return out


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
        pm = remap_labels(pa, pred_label_map) == cls
        tm = remap_labels(ta, label_map) == cls
        rows.append({"case": name, **segmentation_metrics(pm, tm, tref.spacing)})
    if not rows:
        raise MedgenError(pred, "no predictions to evaluate")
    return rows


def write_report(rows: Sequence[Mapping], out: str | Path, extra: Mapping | None = None) -> tuple[Path, Path]:
    """``OUT.csv`` (one row per case, then mean and sd rows) and ``OUT.json`` (cases + summary)."""
    out = Path(out)
    keys = [k for k in rows[0] if k != "case"]
    summary = summarize(rows, [k for k in keys if isinstance(rows[0][k], (int, float))])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", *keys])
    for r in rows:
        w.writerow([r["case"], *[_fmt(r[k]) for k in keys]])
    for stat in ("mean", "sd"):
        w.writerow([stat, *[_fmt(summary.get(f"{k}_{stat}", "")) for k in keys]])
    text = json.dumps({"cases": list(rows), "summary": summary, **(extra or {})}, indent=2, default=float)
    csv_path = atomic_write(out.with_suffix(".csv"), lambda tmp: Path(tmp).write_text(buf.getvalue()))
    json_path = atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text + "\n"))
    return csv_path, json_path


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4f}"
    return str(v)


def validation_fn(cfg, net, device) -> Callable[[], dict]:
    """Validation during segmenter training: mean Dice of each class on the validation volumes."""
    from medgen.data.datalist import image_label_pairs
    from medgen.engines.segmenter import n_classes
    from medgen.inference.segment import segment_array

    pairs = image_label_pairs(cfg.data.val_images, cfg.data.val_labels)

    def validate() -> dict:
        net.eval()
        try:
            dice: dict[int, list[float]] = {c: [] for c in range(1, n_classes(cfg))}
            for image_path, label_path in pairs:
                image, ref = load_image(image_path)
                labels = remap_labels(load_image(label_path)[0], cfg.data.label_map)
                pred = segment_array(net, cfg, image, ref, device).argmax(0)
                for c in dice:
                    dice[c].append(segmentation_metrics(pred == c, labels == c, ref.spacing, False)["dice"])
            return {f"dice_{c}": float(np.mean(v)) for c, v in dice.items()}
        finally:
            net.train()

    return validate
