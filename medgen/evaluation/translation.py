"""Evaluating translators. On paired volumes: SynthRAD metrics in HU inside the body, beside the identity
baseline (the MRI through the translator's own MRI preset, rescaled into the training CTs' range; see
:func:`medgen.transforms.identity_baseline`). On real MRIs with no paired CT (:func:`evaluate_unpaired`): organ HU
against a real-CT population and anatomy kept through a frozen CT segmenter, with the identity and
histogram-matching baselines, as the SynthRAD 2025 challenge complements its paired metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgen.data.datalist import image_label_pairs
from medgen.evaluation.report import write_report
from medgen.inference.segment import load_segmenter, postprocess
from medgen.inference.translate import load_translator
from medgen.io import atomic_write, case_name, load_image
from medgen.metrics import evaluate_pairs, mean_rows, segmentation_metrics


def evaluate_translation(run: str | Path, mri: str | Path, ct: str | Path, device: str = "auto",
                         out: str | Path | None = None) -> tuple[list[dict], dict[str, float], Path]:
    """``medgen evaluate translation``: per-case rows (translator and ``identity_`` baseline), their means
    and the CSV written (``out``.csv/.json, default ``RUN/translation_eval``). MRIs and CTs are paired
    entry by entry from one datalist JSON, else by case name."""
    translator = load_translator(run, "mri2ct", device)
    pairs = image_label_pairs(mri, ct, "mri", "ct")
    rows = evaluate_pairs(lambda image, ref: translator.translate(image, ref)[0], pairs, translator.identity)
    csv_path, _ = write_report(rows, out or Path(run) / "translation_eval")
    return rows, mean_rows(rows), csv_path


# Organs judged by HU, as (name, MRI label value, CT label value): CHAOS MRI labels and BTCV CT labels.
ORGANS = (("liver", 1, 6), ("spleen", 4, 1), ("right_kidney", 2, 2), ("left_kidney", 3, 3))


def organ_medians(hu: np.ndarray, labels: np.ndarray, values: dict[str, int]) -> dict[str, float]:
    """The median HU inside each organ (``name -> label value``); organs absent from ``labels`` are left out.

    >>> hu = np.array([[10.0, 20.0, 30.0], [100.0, 110.0, 120.0]]); lab = np.array([[1, 1, 1], [2, 2, 0]])
    >>> organ_medians(hu, lab, {"a": 1, "b": 2, "c": 3})
    {'a': 20.0, 'b': 105.0}
    """
    return {name: float(np.median(hu[labels == v])) for name, v in values.items() if np.any(labels == v)}


def interval_overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Overlap of two intervals as a fraction of their union (1: the same, 0: disjoint).

    >>> interval_overlap((0, 10), (5, 15)), interval_overlap((0, 1), (2, 3))
    (0.3333333333333333, 0.0)
    """
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else float(a == b)


def ct_population(ct: str | Path, ct_labels: str | Path) -> dict[str, dict]:
    """Per organ, the real CTs' median HU inside their labels: each CT's median, and their median and IQR."""
    per_ct = {name: [] for name, _, _ in ORGANS}
    for image_path, label_path in image_label_pairs(ct, ct_labels):
        hu, labels = load_image(image_path)[0], load_image(label_path)[0]
        for name, value in organ_medians(hu, labels, {n: c for n, _, c in ORGANS}).items():
            per_ct[name].append(value)
    return {name: {"median": float(np.median(v)), "iqr": [float(q) for q in np.percentile(v, (25, 75))], "n": len(v)}
            for name, v in per_ct.items() if v}


def histogram_matched(mri: np.ndarray, reference_ct: np.ndarray) -> np.ndarray:
    """The MRI's intensity histogram matched to a CT's (SimpleITK, 256 levels, 15 match points): a baseline."""
    import SimpleITK as sitk

    matched = sitk.HistogramMatching(sitk.GetImageFromArray(mri.astype(np.float32)),
                                     sitk.GetImageFromArray(reference_ct.astype(np.float32)), 256, 15, True)
    return sitk.GetArrayFromImage(matched)


def evaluate_unpaired(run: str | Path, mri: str | Path, mri_labels: str | Path, ct: str | Path,
                      ct_labels: str | Path, segmenter: str = "ct-liver", device: str = "auto",
                      out: str | Path | None = None) -> dict:
    """``medgen evaluate translation --unpaired``: a translator judged on real MRIs with no paired CT, beside the
    identity and histogram-matching baselines in the same run.

    - organ HU: the median synthetic-CT HU inside each organ of the MRI's manual labels (liver, spleen, kidneys)
      against the real CTs' (:func:`ct_population`): |difference of medians| and the overlap of the IQRs;
    - anatomy kept: ``segmenter`` (a CT segmenter, frozen) on the synthetic CT, liver Dice against the MRI's label.
    """
    translator = load_translator(run, "mri2ct", device)
    seg = load_segmenter(segmenter, device)
    population = ct_population(ct, ct_labels)
    reference = load_image(image_label_pairs(ct, ct_labels)[0][0])[0]
    methods = {"translator": lambda a, r: translator.translate(a, r)[0], "identity": lambda a, r: translator.identity(a),
               "histmatch": lambda a, r: histogram_matched(a, reference)}
    rows = []
    for image_path, label_path in image_label_pairs(mri, mri_labels):
        image, ref = load_image(image_path)
        labels = load_image(label_path)[0]
        for method, make in methods.items():
            hu = make(image, ref)
            mask = postprocess(seg.predict(np.asarray(hu, np.float32), ref), seg.postprocess) > 0
            rows.append({"case": case_name(image_path), "method": method,
                         "dice": segmentation_metrics(mask, labels == ORGANS[0][1], ref.spacing, False)["dice"],
                         **{f"hu_{k}": v for k, v in organ_medians(hu, labels, {n: m for n, m, _ in ORGANS}).items()}})
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        organs = {}
        for name, stats in population.items():
            values = [r[f"hu_{name}"] for r in mine if f"hu_{name}" in r]
            if values:
                iqr = tuple(np.percentile(values, (25, 75)))
                organs[name] = {"median": float(np.median(values)), "abs_diff": abs(float(np.median(values)) - stats["median"]),
                                "iqr": [float(q) for q in iqr], "iqr_overlap": interval_overlap(iqr, tuple(stats["iqr"]))}
        summary[method] = {"dice": float(np.mean([r["dice"] for r in mine])), "organs": organs}
    report = {"translator": str(run), "segmenter": segmenter, "ct_population": population, "summary": summary,
              "cases": rows}
    path = Path(out) if out else Path(run) / "translation_unpaired.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    return report
