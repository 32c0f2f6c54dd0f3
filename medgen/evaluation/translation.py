"""Evaluating translators on paired volumes: SynthRAD metrics in HU inside the body, beside the identity
baseline (the MRI through the translator's own MRI preset, rescaled into the training CTs' range; see
:func:`medgen.transforms.identity_baseline`)."""

from __future__ import annotations

from pathlib import Path

from medgen.data.datalist import image_label_pairs
from medgen.evaluation.report import write_report
from medgen.inference.translate import load_translator
from medgen.metrics import evaluate_pairs, mean_rows


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
