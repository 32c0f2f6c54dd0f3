"""The MRI liver pipeline: MRI -> synthetic CT -> CT liver segmenter -> mask on the MRI's exact grid, or
(the ``direct`` route of a ``medgen fit`` model) MRI -> contrast-agnostic segmenter -> mask.

Each stage undoes its own preprocessing (reorientation exactly, resampling onto the original shape),
so the mask is written with the MRI's header by ``save_like``. A batch writes ``OUT/<case>.nii.gz``
masks (optionally ``OUT/sct/`` synthetic CTs and ``OUT/baseline/`` masks of the direct baseline) and
``OUT/summary.csv``/``summary.json`` with per-case QC; finished cases are skipped on a rerun and a
failing case is reported without stopping the batch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medgen.data.datalist import input_output_pairs, list_volumes
from medgen.data.volumes import remap_labels
from medgen.dicomseg import save_mask
from medgen.errors import MedgenError, is_write_error, short
from medgen.inference.segment import load_segmenter, postprocess, thresholded
from medgen.inference.translate import load_translator
from medgen.io import atomic_write, case_name, load_image, save_hu, save_like
from medgen.metrics import segmentation_metrics
from medgen.qcpage import case_picture, save_png, write_index
from medgen.validate import check_label_values, check_output_of, check_same_grid, check_volume

LIVER_ML = (600.0, 3500.0)  # plausible adult liver volume; outside it the case is flagged
UNSURE_MAX = 0.3  # uncertainty() above which the case is flagged low_confidence (chosen on the development MRIs)
CYCLE_ERROR_MAX = 0.15  # mean |G_ba(G_ab(x)) - x| in [-1, 1] units above which the translation is flagged


@dataclass
class PipelineOptions:
    threshold: float | None = None  # None: the segmenter's own (see PostprocessConfig)
    largest_component: bool | None = None
    fill_holes: bool | None = None
    save_sct: bool = False
    baseline: bool = False
    overwrite: bool = False
    output_format: str = "auto"  # nifti | dicom-seg | both | auto: both for a DICOM series input, NIfTI otherwise
    qc_page: bool = True  # folder runs: OUT/index.html with a picture per case (OUT/qc/)


def uncertainty(prob: np.ndarray, mask: np.ndarray) -> float:
    """Voxels the segmenter is unsure of (liver probability in (0.25, 0.75)) per voxel of the mask: near 0 for a
    confident mask, large when much of the decision sits near the threshold (1 for an empty mask).

    >>> p = np.zeros((4, 4, 4)); p[:2] = 0.9; p[2] = 0.5
    >>> round(uncertainty(p, p > 0.5), 3)
    0.5
    """
    ambiguous = float(np.count_nonzero((prob > 0.25) & (prob < 0.75)))
    return ambiguous / float(mask.sum()) if mask.any() else 1.0


def quality_flags(mask: np.ndarray, raw_mask: np.ndarray, liver_ml: float, cycle_error: float | None,
                  unsure: float = 0.0) -> list[str]:
    """Reasons to look at a case: an implausible volume, fragments, an unsure segmenter, a poor cycle. Each was
    measured on real MRIs with masks of several qualities (``python benchmarks/shipped_eval.py``, docs/results.md):
    a flag that did not single out bad masks was removed (``touches_fov_edge``: real livers reach the field of
    view's edges)."""
    flags = []
    if liver_ml == 0:
        flags.append("empty_mask")
    elif liver_ml < LIVER_ML[0]:
        flags.append("liver_volume_low")
    elif liver_ml > LIVER_ML[1]:
        flags.append("liver_volume_high")
    if raw_mask.sum() > 0 and mask.sum() < 0.9 * raw_mask.sum():
        flags.append("fragmented")
    if unsure > UNSURE_MAX:
        flags.append("low_confidence")
    if cycle_error is not None and cycle_error > CYCLE_ERROR_MAX:
        flags.append("high_cycle_error")
    return flags


class MriLiverPipeline:
    """Translator run + segmenter (any backend) -> liver masks on MRI grids; with no translator the MRI
    goes to the segmenter (a medgen run) through the MRI intensity preset (the ``direct`` route).

    >>> pipe = MriLiverPipeline("runs/cyclegan", "runs/segmenter")  # doctest: +SKIP
    >>> row = pipe.run_case("mri/case_016.nii.gz", "out/case_016.nii.gz")  # doctest: +SKIP
    """

    def __init__(self, translator: str | Path | None, segmenter: str | Path, device: str = "auto",
                 liver_index: int | None = None, options: PipelineOptions | None = None):
        self.options = options or PipelineOptions()
        if translator is None and (self.options.baseline or self.options.save_sct):
            raise MedgenError(segmenter, "the direct route has no synthetic CT: --baseline and --save-sct need a "
                                         "translator route")
        self.translator = None if translator is None else load_translator(translator, "mri2ct", device, cycle=True)
        self.segmenter = load_segmenter(segmenter, device, liver_index, "mri" if translator is None else None)
        self.name = Path(str(segmenter)).name
        pp = self.segmenter.postprocess  # the one source of defaults; options given on the command line win
        given = {f.name: getattr(self.options, f.name, None) for f in dataclasses.fields(pp)}
        self.postprocess = dataclasses.replace(pp, **{k: v for k, v in given.items() if v is not None})

    def _mask(self, ct_like: np.ndarray, ref) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(post-processed mask, thresholded mask before post-processing, the liver probability)."""
        prob = self.segmenter.predict(ct_like, ref)
        return postprocess(prob, self.postprocess), postprocess(prob, thresholded(self.postprocess)), prob

    def run_case(self, mri_path: str | Path, mask_path: str | Path, sct_path: str | Path | None = None,
                 baseline_path: str | Path | None = None, truth=None, picture: str | Path | None = None) -> dict:
        """Segment one MRI; returns its QC row (liver mL, cycle error, flags, Dice when ``truth`` is given); with
        ``picture``, its QC picture is written there (:func:`medgen.qcpage.case_picture`)."""
        mri, ref = load_image(mri_path)
        check_volume(mri, mri_path)
        if isinstance(truth, tuple):  # (mask, its ImageRef): checked on the MRI's grid before any work
            check_same_grid(ref, truth[1])
            truth = truth[0]
        sct, cycle = self.translator.translate(mri, ref) if self.translator is not None else (mri, None)
        mask, raw, prob = self._mask(sct, ref)
        unsure = uncertainty(prob, mask)
        voxel_ml = float(np.prod(ref.spacing)) / 1000.0
        liver_ml = float(mask.sum()) * voxel_ml
        ow = self.options.overwrite
        save_mask(mask, ref, mask_path, ow, self.options.output_format, self.name)
        if sct_path is not None:
            save_hu(sct, ref, sct_path, overwrite=ow)
        row = {"case": case_name(mri_path), "status": "ok", "liver_ml": round(liver_ml, 1),
               "cycle_error": round(cycle, 4) if cycle is not None else None,
               "uncertainty": round(unsure, 4),
               "flags": ";".join(quality_flags(mask, raw, liver_ml, cycle, unsure)), "mask": str(mask_path),
               "image": str(mri_path)}
        if picture is not None:
            save_png(case_picture(mri, mask, ref, truth), picture)
        if truth is not None:
            row["dice"] = segmentation_metrics(mask > 0, truth, ref.spacing, False)["dice"]
        if baseline_path is not None:
            direct = self._mask(self.translator.identity(mri), ref)[0]
            save_like(direct, ref, baseline_path, overwrite=ow)
            row["baseline_liver_ml"] = round(float(direct.sum()) * voxel_ml, 1)
            if truth is not None:
                row["baseline_dice"] = segmentation_metrics(direct > 0, truth, ref.spacing, False)["dice"]
        return row


def _finished_row(mri_path: Path, mask_path: Path) -> dict | None:
    """The QC row of a mask already in the output folder when it is complete (readable, binary, on the MRI's grid);
    None otherwise. Its flags are the volume and field-of-view ones (no probabilities are kept to judge more)."""
    try:
        _, ref = load_image(mri_path)
        mask, mask_ref = load_image(mask_path)
        check_same_grid(ref, mask_ref)
    except MedgenError:
        return None
    if not set(np.unique(mask).tolist()) <= {0, 1}:
        return None
    liver_ml = float(mask.sum()) * float(np.prod(ref.spacing)) / 1000.0
    return {"case": case_name(mri_path), "status": "ok", "liver_ml": round(liver_ml, 1), "cycle_error": None,
            "flags": ";".join(quality_flags(mask, mask, liver_ml, None)), "mask": str(mask_path),
            "image": str(mri_path), "note": "mask found complete in the output folder: kept"}


def _write_summary(out_dir: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write(out_dir / "summary.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    means = {k: float(np.mean([r[k] for r in rows if isinstance(r.get(k), float) and math.isfinite(r[k])]))
             for k in ("dice", "baseline_dice", "liver_ml", "cycle_error")
             if any(isinstance(r.get(k), float) for r in rows)}
    text = json.dumps({"cases": rows, "mean": means}, indent=2) + "\n"
    atomic_write(out_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))


def run_pipeline(translator: str | Path | None, segmenter: str | Path, inputs: str | Path, output: str | Path,
                 device: str = "auto", liver_index: int | None = None, options: PipelineOptions | None = None,
                 truth: str | Path | None = None, label_map: Mapping[int, int] | None = None) -> tuple[list[dict], int]:
    """``medgen pipeline mri-liver``: a file -> a mask file, or a folder -> a folder with a QC summary
    (``translator`` None: the direct route).

    Returns the summary rows and the number of failed cases.
    """
    opts = options or PipelineOptions()
    pipe = MriLiverPipeline(translator, segmenter, device, liver_index, opts)
    src, out = Path(inputs), Path(output)
    single, pairs = input_output_pairs(src, out)
    check_output_of(src, out, single)  # before any case runs: OUT == IN, unwritable locations
    if truth and single and Path(truth).is_file():
        truths = {case_name(src): Path(truth)}  # one input, one ground-truth file
    else:
        truths = {case_name(p): p for p in list_volumes(truth)} if truth else {}

    def truth_mask(path: Path):
        t = truths.get(case_name(path))
        if t is None:
            return None
        labels, ref = load_image(t)
        return remap_labels(check_label_values(labels, t), label_map or {1: 1}) == 1, ref

    if single:
        stem = case_name(out)
        row = pipe.run_case(src, out, out.with_name(f"{stem}_sct.nii.gz") if opts.save_sct else None,
                            out.with_name(f"{stem}_baseline.nii.gz") if opts.baseline else None, truth_mask(src))
        print(json.dumps(row))
        return [row], 0

    previous = {}
    if (out / "summary.json").is_file() and not opts.overwrite:
        try:
            previous = {r["case"]: r for r in json.loads((out / "summary.json").read_text())["cases"]
                        if r["status"] == "ok"}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MedgenError(out / "summary.json", f"not a medgen pipeline summary ({short(exc, 80)}): pass "
                                                    "--overwrite to recompute every case, or another output folder") from None
    fresh = not out.exists()
    rows, failed = [], 0
    for path, mask_path in tqdm(pairs, desc="mri-liver", unit="case", disable=None):
        name = case_name(path)
        if name in previous and mask_path.exists():
            rows.append({**previous[name], "status": "ok"})
            continue
        kept = None if opts.overwrite or not mask_path.exists() else _finished_row(path, mask_path)
        if kept is not None:  # a complete mask another run wrote (its summary lost or failed): kept, not redone
            rows.append(kept)
            continue
        try:
            rows.append(pipe.run_case(path, mask_path, out / "sct" / f"{name}.nii.gz" if opts.save_sct else None,
                                      out / "baseline" / f"{name}.nii.gz" if opts.baseline else None, truth_mask(path),
                                      out / "qc" / f"{name}.png" if opts.qc_page else None))
        except Exception as exc:  # one broken case must not stop the batch; a full disk does (the next would fail too)
            if is_write_error(exc):
                raise
            failed += 1
            error = str(exc) if isinstance(exc, MedgenError) else f"{path}: {type(exc).__name__}: {short(exc)}"
            rows.append({"case": name, "status": "failed", "error": error})
            tqdm.write(f"medgen: error: {error}", file=sys.stderr)
        _write_summary(out, rows)
    if rows and failed == len(rows) and fresh:  # every input refused: leave nothing behind
        shutil.rmtree(out, ignore_errors=True)
        return rows, failed
    _write_summary(out, rows)
    if opts.qc_page:
        write_index(out, rows, "medgen pipeline mri-liver")
    return rows, failed
