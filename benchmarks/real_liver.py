"""The MRI liver pipeline on real scans: the protocol of the development set's PROVENANCE.md, end to end.

Every model and mask is made by the documented ``medgen`` commands (run as a user would, one at a time);
this script only lays out the data (symbolic links), times the trainings, scores the masks against the
manual labels and prints one table. Slow (about 100 minutes on 2 CPU cores); not part of ``make test``.

    python benchmarks/real_liver.py [--work DIR] [--data ../shared/data/real/abdomen_uda_dev] [--preset cpu]
                                    [--only fit,baselines,ceiling,byo]

Rows: each MRI, then the mean over the held-out MRIs (15 19 20, never seen by any training) and over all
ten (transductive). Columns:

- ``fit``: ``medgen fit mri-liver --preset P`` on the 4 labelled CTs and the 7 unlabelled training MRIs,
  then ``medgen pipeline mri-liver --model``: the product's route (its segmenter self-trained on those MRIs);
- ``any_contrast``: the fit's segmenter stage alone (``configs/segmenter_liver_any_contrast.yaml``, trained on
  the CT labels only, no MRI seen) through ``medgen segment --modality mri``;
- ``byo``: the same fit with ``--segmenter`` set to a plain CT segmenter trained on the CTs alone (route
  MRI -> synthetic CT -> that frozen segmenter);
- ``direct``: that plain CT segmenter applied to the MRI itself (its robust range mapped onto [-1, 1]);
- ``histmatch``: the plain CT segmenter on the MRI histogram-matched to a CT (SimpleITK);
- ``ceiling``: a segmenter of the same architecture trained on the MR labels of the 7 training MRIs.

Steps whose outputs exist in ``--work`` are reused (delete them to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medgen.evaluation.segmentation import evaluate_folders

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [1, 2, 3, 5, 8, 10, 13]
HELD_OUT = [15, 19, 20]
COLUMNS = ("fit", "any_contrast", "byo", "direct", "histmatch", "ceiling")


def medgen(*args: str, log: Path) -> float:
    """Run one medgen command (its output to ``log``); returns its wall time in seconds."""
    cmd = [str(Path(sys.executable).with_name("medgen")), *args]
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "MEDGEN_PROGRESS": "0"})
    if proc.returncode != 0:
        sys.exit(f"real_liver: command failed (exit {proc.returncode}), see {log}")
    return time.time() - start


def ct_datalist(data: Path, ids: list[int], path: Path) -> Path:
    """A datalist JSON of BTCV CTs ``ids`` and their labels (absolute paths): which CTs a figure used."""
    entries = [{"image": str((data / "ct" / "images" / f"btcv_{i}.nii.gz").resolve()),
                "label": str((data / "ct" / "labels" / f"btcv_{i}.nii.gz").resolve())} for i in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": entries}, indent=2) + "\n")
    return path


def link_cases(src: Path, dst: Path, ids: list[int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for i in ids:
        link = dst / f"chaos_t2_{i}.nii.gz"
        if not link.exists():
            link.symlink_to(src / f"chaos_t2_{i}.nii.gz")
    return dst


def histogram_matched(mris: Path, reference_ct: Path, out: Path) -> Path:
    """Each MRI's intensity histogram matched to a CT's (SimpleITK, 256 levels, 15 match points)."""
    out.mkdir(parents=True, exist_ok=True)
    ref = sitk.Cast(sitk.ReadImage(str(reference_ct)), sitk.sitkFloat32)
    for path in sorted(mris.glob("*.nii.gz")):
        dst = out / path.name
        if not dst.exists():
            image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
            matched = sitk.HistogramMatching(image, ref, 256, 15, True)
            sitk.WriteImage(matched, str(dst))
    return out


def dice_by_case(pred: Path, truth: Path) -> dict[str, float]:
    return {r["case"]: r["dice"] for r in evaluate_folders(pred, truth, {1: 1})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real" / "abdomen_uda_dev"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "real_liver"))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--cts", default="0,5,14,20", help="the labelled BTCV CTs used, by number (the first real-scan "
                   "figures used 0,5,14,20; 'all': the 30); recorded in results.json")
    p.add_argument("--only", default=",".join(("fit", "baselines", "ceiling", "byo")),
                   help="comma-separated steps: fit, baselines (plain CT segmenter, direct, histmatch), ceiling, byo")
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    if not (data / "PROVENANCE.md").is_file():
        print(f"real_liver: skipped: the development set is not at {data} (see its PROVENANCE.md)")
        return 0
    steps = set(args.only.split(","))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    ids = list(range(30)) if args.cts == "all" else [int(i) for i in args.cts.split(",")]
    ct = ct_labels = ct_datalist(data, ids, work / f"ct_{len(ids)}.json")  # one datalist: images and labels
    mri, mri_labels = data / "mri" / "images", data / "mri" / "labels"
    train_mri = link_cases(mri, work / "mri_train", TRAIN)
    train_labels = link_cases(mri_labels, work / "mri_train_labels", TRAIN)
    times: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    commands: dict[str, str] = {}
    base = ["--ct", str(ct), "--ct-labels", str(ct_labels), "--label-map", "6:1", "--mri", str(train_mri),
            "--set", "start=scratch"]  # the fit from CTs alone, as measured before the shipped models

    def pipeline(name: str, model: Path) -> None:
        out = work / f"masks_{name}"
        if not (out / "summary.json").is_file():
            medgen("pipeline", "mri-liver", "--model", str(model), str(mri), str(out), log=log)
        scores[name] = dice_by_case(out, mri_labels)
        commands[name] = f"medgen pipeline mri-liver --model {model} MRI OUT"

    plain = work / "ct_segmenter"
    if steps & {"baselines", "byo"} and not (plain / "model.done").exists():
        times["plain CT segmenter"] = medgen(
            "train", str(ROOT / "configs" / "segmenter_ct_liver_2d.yaml"), "--out", str(plain),
            "--set", f"data.images={ct}", "--set", f"data.labels={ct_labels}", "--set", "data.label_map={6: 1}", log=log)
        (plain / "model.done").write_text("")
    if "fit" in steps:
        model = work / "model"
        if not (model / "model.json").is_file():
            times["fit (product)"] = medgen("fit", "mri-liver", *base, "--out", str(model), "--preset", args.preset,
                                            log=log)
        pipeline("fit", model)
        commands["fit"] = (f"medgen fit mri-liver --ct CT --ct-labels LABELS --label-map 6:1 --mri MRI_TRAIN "
                           f"--out {model} --preset {args.preset}; " + commands["fit"])
        out = work / "masks_any_contrast"  # the fit's first stage alone: CT labels only, no MRI seen (issue 12)
        if not out.is_dir():
            medgen("segment", str(model / "segmenter"), str(mri), str(out), "--modality", "mri", log=log)
        scores["any_contrast"] = dice_by_case(out, mri_labels)
        commands["any_contrast"] = f"medgen segment {model / 'segmenter'} MRI OUT --modality mri"
    if "byo" in steps:
        model = work / "model_byo"
        if not (model / "model.json").is_file():
            times["fit --segmenter (plain CT)"] = medgen("fit", "mri-liver", *base, "--out", str(model), "--preset",
                                                         args.preset, "--segmenter", str(plain), log=log)
        pipeline("byo", model)
        commands["byo"] = f"medgen fit mri-liver ... --segmenter {plain}; " + commands["byo"]
    if "baselines" in steps:
        out = work / "masks_direct"
        if not out.is_dir():
            medgen("segment", str(plain), str(mri), str(out), "--modality", "mri", log=log)
        scores["direct"] = dice_by_case(out, mri_labels)
        commands["direct"] = f"medgen segment {plain} MRI OUT --modality mri"
        matched = histogram_matched(mri, data / "ct" / "images" / f"btcv_{ids[0]}.nii.gz", work / "mri_histmatch")
        out = work / "masks_histmatch"
        if not out.is_dir():
            medgen("segment", str(plain), str(matched), str(out), log=log)
        scores["histmatch"] = dice_by_case(out, mri_labels)
        commands["histmatch"] = f"(MRI histogram-matched to a CT, SimpleITK) medgen segment {plain} MATCHED OUT"
    if "ceiling" in steps:
        ceiling = work / "mr_segmenter"
        if not (ceiling / "model.done").exists():
            times["supervised MR ceiling"] = medgen(
                "train", str(ROOT / "configs" / "segmenter_ct_liver_2d.yaml"), "--out", str(ceiling),
                "--set", f"data.images={train_mri}", "--set", f"data.labels={train_labels}",
                "--set", "data.label_map={1: 1}", "--set", "data.modality=mri", log=log)
            (ceiling / "model.done").write_text("")
        out = work / "masks_ceiling"
        if not out.is_dir():
            medgen("segment", str(ceiling), str(mri), str(out), log=log)
        scores["ceiling"] = {k: v for k, v in dice_by_case(out, mri_labels).items()}
        commands["ceiling"] = f"medgen train configs/segmenter_ct_liver_2d.yaml (MR labels of {TRAIN}); medgen segment"
    report(scores, times, commands, work, [f"btcv_{i}" for i in ids])
    return 0


def report(scores: dict, times: dict, commands: dict, work: Path, cts: list[str]) -> None:
    cols = [c for c in COLUMNS if c in scores]
    cases = sorted({c for s in scores.values() for c in s}, key=lambda c: int(c.rsplit("_", 1)[-1]))
    lines = ["| MRI | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for case in cases:
        tag = " (held out)" if int(case.rsplit("_", 1)[-1]) in HELD_OUT else (
            " (train; ceiling: seen)" if "ceiling" in cols else " (train)")
        lines.append(f"| {case}{tag} | " + " | ".join(f"{scores[c].get(case, float('nan')):.3f}" for c in cols) + " |")
    means = {}
    for label, ids in (("mean, held out 15 19 20", HELD_OUT), ("mean, all 10 (transductive)", None)):
        row = []
        for c in cols:
            vals = [v for k, v in scores[c].items() if ids is None or int(k.rsplit("_", 1)[-1]) in ids]
            row.append(float(np.mean(vals)))
        means[label] = dict(zip(cols, row))
        lines.append(f"| **{label}** | " + " | ".join(f"**{v:.3f}**" for v in row) + " |")
    text = "\n".join(lines)
    text += "\n\nwall time: " + (", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()) or "(reused)")
    text += "\n" + "\n".join(f"- {c}: {commands[c]}" for c in cols)
    print(text)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"dice": scores, "mean": means, "wall_s": times, "ct_count": len(cts),
                                                   "cts": cts}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
