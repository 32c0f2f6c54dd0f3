"""The shipped models measured on the development set, every figure of their cards, baselines in the same run.

    python benchmarks/shipped_eval.py [--data ../shared/data/real/abdomen_uda_dev] [--work DIR]
                                      [--only zero_shot,ct,speed,fit_mri,frozen] [--write-cards]

Every mask is made by a documented ``medgen`` command, run as a user would (one at a time); this script lays out
the data (symbolic links), times the commands and scores the masks against the manual labels.

- ``zero_shot``: ``medgen segment mri-liver MRI OUT --modality mri`` on the 10 development MRIs (no MRI was ever
  seen by the model); baselines: ``ct-liver`` on the MRI itself (``--modality mri``: its robust range into the CT
  window) and on the MRI histogram-matched to a CT.
- ``ct``: ``medgen segment ct-liver`` and ``medgen segment mri-liver --modality ct`` on the BTCV CTs held out from
  both models' training (``btcv_25`` .. ``btcv_29``).
- ``speed``: wall time of ``medgen segment mri-liver IN OUT --modality mri`` (a new process: imports and model load
  included) on a 256 x 256 x 40 MRI (a development MRI padded to 40 slices).
- ``fit_mri_paint``: ``medgen fit mri-liver --mri MRI_TRAIN --out MODEL --preset cpu`` (no CT: the shipped model
  adapted to the 7 training MRIs 1 2 3 5 8 10 13, unlabelled, their anatomy also painted in random contrasts), then
  ``medgen pipeline mri-liver --model MODEL``, scored on the held-out 15 19 20 and on all ten; wall time of the fit.
- ``fit_mri``: the same with ``--set adapt.paint=false`` (the pseudo-labelled MRIs alone, in their own contrast).
- ``tta``: the shipped mri-liver with test-time contrast augmentation (``inference.tta_gammas``).
- ``frozen``: ``medgen fit mri-liver --ct CT --ct-labels L --label-map 6:1 --mri MRI_TRAIN --segmenter ct-liver``
  (the frozen-segmenter route: a translator trained for the shipped CT segmenter, which is never retrained).
  The preset's translator draws half its samples from the 7 MRIs, pseudo-labelled by the shipped mri-liver and
  trained through the frozen segmenter alone (``translator.target.ratio: 0.5``).
- ``frozen_ct_only``: the same with ``--set translator.target.ratio=0`` (the translator on painted CTs alone).
- ``mri_ct``: ``medgen fit mri-ct --ct CT --ct-labels L --label-map 6:1 --mri MRI_TRAIN --preset cpu`` (the
  translator as the product) with the earlier preset's keys (``EARLIER``: the segmentation loss on every sample; the
  preset now is ``mri_ct_seg_mri_quarter``'s), then its model through ``pipeline --model``.
- ``mri_ct_gan``: the same with ``--set translator.loss.lambda_gan=1`` (a PatchGAN judges the translator's output on
  the MRIs against real CT patches).
- ``ct2mri``: a ``fit mri-ct``'s CT -> MRI translator (``CT2MRI_SOURCES``: the ``ct2mri`` stage of a CT_FITS step's
  fit, or that stage trained again by ``medgen train MODEL/ct2mri/config.yaml --set KEY=VALUE``):
  ``medgen translate MODEL CTS SMRI --direction ct2mri`` (with ``--labels`` for a ``label_input`` stage) on the 25
  training CTs, a 2D segmenter trained on those synthetic MRIs and the CTs' liver labels alone
  (``segmenter_ct_liver_2d.yaml``, ct-liver's recipe, ``data.modality=mri``), then
  ``medgen pipeline mri-liver --segmenter RUN`` on the 10 MRIs; the same with random organ intensities,
  random-convolution contrast or each structure's own intensities moved (``augment.synthseg.contrast=prior``),
  beside that recipe on the real CTs (``shipped_record.CT2MRI_SEGMENTERS``;
  ``--segmenters KEYS``: some of them). The organ contrast of each set of synthetic MRIs (spleen and kidneys over the
  liver, ``organ_contrast``) beside the real T2s'.
- ``mri_ct_3d``: the same fit with a 3D translator (``translation_record.MRI_CT_3D``, trained through the 2D ct-liver
  slice by slice; no ct2mri stage).
- ``mri_ct_l1_only``: the same fit with ``--set translator.loss.lambda_seg=0 --set translator.target.ratio=0`` (L1 to
  the painted CTs alone, frozen_ct_only without the segmentation-consistency loss: does that loss pull the spleen's HU
  down?; no ct2mri stage).
- ``mri_ct_seg_mri``: the same fit with ``--set translator.loss.seg_painted=false`` (the segmentation loss on the
  7 MRIs alone, the painted CTs under L1 alone: mri_ct_l1_only's CTs and the preset's MRIs; no ct2mri stage).
- ``mri_ct_seg_mri_half``, ``mri_ct_seg_mri_quarter``: the same with ``--set translator.loss.lambda_seg=0.5``
  (``0.25``) as well; the quarter is ``fit mri-ct``'s preset now.
- ``mri_ct_preset``: ``fit mri-ct --preset cpu``, every stage (its ct2mri stage too) in one timed run, with the
  pointwise ct2mri generator it had when measured (``--set ct2mri.generator.name=pointwise``); each stage's training
  minutes in ``stage_minutes``.
- ``mri_ct_seed1``: the same with ``--set translator.train.seed=1`` (no ct2mri stage): the spread between two runs.
- ``mri_ct_structure``: the same with ``--set translator.loss.lambda_structure=1`` (no ct2mri stage): the synthetic CT
  keeps its MRI's edges (1 - LNCC of output and input on the MRI samples).
- ``mri_ct_liver_hu``, ``mri_ct_liver_hu_seed1``: the same with ``--set translator.loss.lambda_liver=5`` (the synthetic
  CT's mean in the MRIs' pseudo-labelled liver pulled to the CTs' liver level), seeds 0 and 1 (no ct2mri stage).
- ``mri_ct_gan_preset``: the same with ``--set translator.loss.lambda_gan=1`` (a PatchGAN: real CT patches against the
  translator's outputs on the MRIs; no ct2mri stage).
- ``mri_ct_gan_quarter``: the same at ``translator.loss.lambda_gan=0.25``.
- ``mri_ct_preset_now``: ``fit mri-ct --preset cpu`` as it ships, every stage (the ResNet ct2mri stage) in one timed run.
- ``mri_ct_pairs``: the same with ``--set pairs.iterations=1500``: its translator trained on from its weights with
  synthetic pairs too (half the CT samples' inputs the CT as the ct2mri stage renders it).
- ``mri_ct_pairs_seed1``: ``fit mri-ct --preset cpu`` as it ships now (synthetic pairs, organ gains), its translator
  from seed 1, timed end to end.
- ``RETRAINS`` steps (``fit_steps.py`` lists them, each with its keys): a fit's stage trained again with other keys
  (``medgen train FIT/STAGE/config.yaml --set KEY=VALUE``), judged as a translator in ``translation``.
- ``ct_judge``: a second CT segmenter for realism (``JUDGE_SETS``), which no translator is trained through.
- ``mri_ct_unlabelled``: the same fit without ``--ct-labels`` (ct-liver's masks of the 25 CTs are their labels; no
  ct2mri stage).
- ``translation``: each fit's translator judged on the 10 real MRIs with no paired CT
  (``medgen evaluate translation --unpaired``: organ HU against the 30 BTCV CTs, ct-liver on the synthetic CT); a
  report that predates the judge, the common field of view's FID or the CTs' stored range (every set judged in
  [-125, 275]) is judged again while its translator is kept.
  The preset's translators (``BOOTSTRAP_STEPS``, both seeds) get 95 % intervals of their FIDs and of their FID minus
  histmatch's over ``BOOTSTRAP`` resamples of the MRIs and CTs (``--bootstrap``): the FID floor's verdict.
- ``architecture``: the training runs of ``benchmarks/shipped_models.py`` (``--models mri-liver`` and its candidates,
  ``VARIANTS``) zero-shot through ``medgen pipeline mri-liver --segmenter RUN`` on the 10 MRIs, with Dice at the
  liver's two ends (``dome``: its top 15 % of slices, ``lowest``: its bottom 15 %) and each run's training time.

``--write-cards`` puts the figures into the shipped models' cards (``medgen/models/weights/*/card.json``).
Steps whose outputs exist in ``--work`` are reused (delete them to measure again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medgen.config import save_config
from medgen.evaluation.segmentation import evaluate_folders, flag_quality
from medgen.models.registry import load_config
from medgen.models.run import run_finished
from medgen.models.shipped import shipped_dir

from results_doc import write_record
from real_liver import HELD_OUT, TRAIN, ct_datalist, dice_by_case, histogram_matched, link_cases, medgen
from shipped_models import HELD_OUT_CTS, TRAIN_CTS, VARIANTS
from shipped_record import CT2MRI_SEGMENTERS, CT2MRI_SOURCES, record, write_cards
from fit_steps import CT_FITS, RETRAINS, UNLABELLED_FITS, retrains_used, trained_on
from translation_record import PRESETS, judge_id, translation_record

ROOT = Path(__file__).resolve().parents[1]
TTA_GAMMAS = [0.7, 1.4]  # chosen before any measurement: a darker and a brighter curve around the identity
MRIS = sorted(TRAIN + HELD_OUT)
ORGANS = {"spleen": (1, 4), "right_kidney": (2, 2), "left_kidney": (3, 3)}  # organ -> (BTCV value, CHAOS value)
LIVER_VALUES = (6, 1)  # BTCV, CHAOS
CT2MRI_SEG_ITERATIONS = 3000  # the segmenter trained on fit mri-ct's synthetic MRIs: ct-liver's recipe and length
# A second judge of realism, chosen before measuring with it: ct-liver's recipe on the same 25 CTs, another seed, the
# four organs whose HU are judged (BTCV liver 6, spleen 1, kidneys 2 3). No translator is ever trained through it
# (they are trained through ct-liver, whose own features then judge the outputs made for them).
BOOTSTRAP = 200  # the two newest presets' translators, both seeds (BOOTSTRAP_STEPS): 95 % intervals of their FIDs over
# 200 resamples of the MRIs and CTs (the FID floor's verdict with its uncertainty)
BOOTSTRAP_STEPS = {s for k in list(PRESETS)[:2] for s in (k, PRESETS[k])}
JUDGE_SETS = ["data.label_map={6: 1, 1: 2, 2: 3, 3: 4}", "train.seed=1", "train.iterations=3000"]


def mean(scores: dict[str, float], ids: list[int] | None = None) -> float:
    vals = [v for k, v in scores.items() if ids is None or int(k.rsplit("_", 1)[-1]) in ids]
    return float(np.mean(vals))


def training_minutes(run: Path) -> float:
    """Wall minutes of a run from its first logged iteration to its last (``metrics.csv``'s time column)."""
    times = [float(line.rsplit(",", 1)[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:] if line]
    return round((max(times) - min(times)) / 60, 1)


def network_of(run: Path) -> str:
    """A training run's network in words: 2D or 2.5D, its slices' spacing and its iterations."""
    cfg = load_config(run / "config.yaml")
    z = cfg.preprocess.spacing[2] if cfg.preprocess.spacing else None
    kind = "2D" if cfg.network.slices == 1 else f"2.5D ({cfg.network.slices} slices)"
    return f"{kind}, slices {'as scanned' if z is None else f'at {z:g} mm'}, {cfg.train.iterations} iterations"


def organ_contrast(images: Path, labels: Path, column: int) -> dict[str, float]:
    """Each organ's median intensity over the liver's, per volume, then the median over the volumes of ``images``
    (``labels`` by file name; ``column`` 0: BTCV values, 1: CHAOS values): the T2 contrast a synthetic MRI should have."""
    ratios = {organ: [] for organ in ORGANS}
    for path in sorted(images.glob("*.nii.gz")):
        image = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(labels / path.name)).dataobj)
        liver = float(np.median(image[label == LIVER_VALUES[column]]))
        for organ, values in ORGANS.items():
            if (label == values[column]).any():
                ratios[organ].append(float(np.median(image[label == values[column]])) / liver)
    return {organ: round(float(np.median(r)), 2) for organ, r in ratios.items() if r}


def link_files(files: list[Path], dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (dst / f.name).exists():
            (dst / f.name).symlink_to(f)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real" / "abdomen_uda_dev"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "shipped_eval"))
    p.add_argument("--only", default="zero_shot,tta,ct,speed,fit_mri,fit_mri_paint")
    p.add_argument("--write-cards", action="store_true")
    p.add_argument("--segmenters", default="", help="step ct2mri: these keys of CT2MRI_SEGMENTERS (default: all)")
    p.add_argument("--runs", default=str(ROOT / "benchmarks" / "out" / "shipped"),
                   help="the training runs of benchmarks/shipped_models.py (step architecture)")
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    if not (data / "PROVENANCE.md").is_file():
        print(f"shipped_eval: skipped: the development set is not at {data}")
        return 0
    steps = set(args.only.split(","))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    mri, mri_labels = data / "mri" / "images", data / "mri" / "labels"
    train_mri = link_cases(mri, work / "mri_train", TRAIN)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    committed = ROOT / "docs" / "results" / "shipped_models.json"
    if not results and committed.is_file():  # a fresh work folder: the committed figures stay, steps run add to them
        results = json.loads(committed.read_text())["per_case"]

    def ct_train_folders() -> tuple[Path, Path]:
        """The 25 training CTs and their labels as two folders of links."""
        names = [f"btcv_{i}.nii.gz" for i in TRAIN_CTS]
        return (link_files([data / "ct" / "images" / n for n in names], work / "ct_train" / "images"),
                link_files([data / "ct" / "labels" / n for n in names], work / "ct_train" / "labels"))

    def segment(name: str, model: str, inputs: Path, modality: str | None = None) -> Path:
        out = work / f"masks_{name}"
        if not out.is_dir():
            medgen("segment", model, str(inputs), str(out), *(["--modality", modality] if modality else []), log=log)
        return out

    def pipeline(name: str, inputs: Path, *args: str) -> dict[str, float]:
        """``medgen pipeline mri-liver ARGS INPUTS OUT --truth LABELS`` (masks, QC rows with flags, index.html)."""
        out = work / f"masks_{name}"
        if not (out / "summary.json").is_file():
            start = time.time()
            medgen("pipeline", "mri-liver", *args, str(inputs), str(out), "--truth", str(mri_labels), log=log)
            results.setdefault("pipeline_wall_s", {})[name] = time.time() - start
        return dice_by_case(out, mri_labels)

    if "zero_shot" in steps:
        matched = histogram_matched(mri, data / "ct" / "images" / f"btcv_{HELD_OUT_CTS[0]}.nii.gz",
                                    work / "mri_histmatch")
        scores = {"mri-liver": pipeline("zero_shot", mri),
                  "ct-liver direct": pipeline("ct_direct", mri, "--segmenter", "ct-liver"),
                  "ct-liver histmatch": pipeline("ct_histmatch", matched, "--segmenter", "ct-liver")}
        results["zero_shot"] = {k: {"dice": v, "mean_all_10": mean(v), "mean_held_out": mean(v, HELD_OUT)}
                                for k, v in scores.items()}
    if "tta" in steps:  # test-time contrast augmentation: the shipped mri-liver with inference.tta_gammas set
        variant = work / "mri-liver-tta"
        if not variant.is_dir():
            shutil.copytree(shipped_dir("mri-liver"), variant)
            cfg = load_config(variant / "config.yaml", [f"inference.tta_gammas={TTA_GAMMAS}"])
            save_config(cfg, variant / "config.yaml")
        d = pipeline("zero_shot_tta", mri, "--segmenter", str(variant))
        results["zero_shot_tta"] = {"gammas": TTA_GAMMAS, "dice": d, "mean_all_10": mean(d),
                                    "mean_held_out": mean(d, HELD_OUT)}
    if "ct" in steps:
        names = [f"btcv_{i}.nii.gz" for i in HELD_OUT_CTS]
        images = link_files([data / "ct" / "images" / n for n in names], work / "ct_held_out" / "images")
        labels = link_files([data / "ct" / "labels" / n for n in names], work / "ct_held_out" / "labels")
        scores = {"ct-liver": segment("ct_ct", "ct-liver", images),
                  "mri-liver": segment("ct_any", "mri-liver", images, "ct")}
        results["ct"] = {}
        for k, out in scores.items():
            d = {r["case"]: r["dice"] for r in evaluate_folders(out, labels, {6: 1})}
            results["ct"][k] = {"dice": d, "mean": float(np.mean(list(d.values())))}
    if "speed" in steps:
        src = nib.load(str(mri / "chaos_t2_19.nii.gz"))
        arr = np.asarray(src.dataobj, dtype=np.float32)
        pad = np.zeros(arr.shape[:2] + (40,), np.float32)
        pad[..., : arr.shape[2]] = arr[..., :40]
        vol = work / "mri_256x256x40.nii.gz"
        nib.save(nib.Nifti1Image(pad, src.affine, src.header), str(vol))
        times = []
        for i in range(3):
            out = work / f"speed_{i}.nii.gz"
            out.unlink(missing_ok=True)
            times.append(medgen("segment", "mri-liver", str(vol), str(out), "--modality", "mri", log=log))
        results["speed"] = {"shape": list(pad.shape), "seconds": times, "median_s": float(np.median(times))}
    if "fit_mri" in steps:
        model = work / "fit_mri"
        if not (model / "model.json").is_file():
            results["fit_mri_wall_s"] = medgen("fit", "mri-liver", "--mri", str(train_mri), "--out", str(model),
                                               "--preset", "cpu", "--set", "adapt.paint=false", log=log)
        d = pipeline("fit_mri", mri, "--model", str(model))
        results["fit_mri"] = {"dice": d, "mean_all_10": mean(d), "mean_held_out": mean(d, HELD_OUT),
                              "wall_s": results.get("fit_mri_wall_s")}
    if "fit_mri_paint" in steps:  # the preset's fit: the MRIs' anatomy also painted in random contrasts (adapt.paint)
        model = work / "fit_mri_paint"
        if not (model / "model.json").is_file():
            results["fit_mri_paint_wall_s"] = medgen("fit", "mri-liver", "--mri", str(train_mri), "--out", str(model),
                                                     "--preset", "cpu", log=log)
        d = pipeline("fit_mri_paint", mri, "--model", str(model))
        results["fit_mri_paint"] = {"dice": d, "mean_all_10": mean(d), "mean_held_out": mean(d, HELD_OUT),
                                    "wall_s": results.get("fit_mri_paint_wall_s")}
    for step, args_ in CT_FITS.items():  # fits with CTs: the frozen route and fit mri-ct
        if step not in steps:
            continue
        model = work / f"fit_{step}"
        listing = ct_datalist(data, TRAIN_CTS, work / "ct_train.json")
        if not (model / "model.json").is_file():
            labels = [] if step in UNLABELLED_FITS else ["--ct-labels", str(listing), "--label-map", "6:1"]
            results[f"{step}_wall_s"] = medgen("fit", *args_[:1], "--ct", str(listing), *labels, "--mri",
                                               str(train_mri), *args_[1:], "--out", str(model), "--preset", "cpu",
                                               log=log)
        d = pipeline(step, mri, "--model", str(model))
        results[step] = {"dice": d, "mean_all_10": mean(d), "mean_held_out": mean(d, HELD_OUT),
                         "wall_s": results.get(f"{step}_wall_s"), "stage_minutes": {
                             s: training_minutes(model / s) for s in ("translator", "ct2mri", "translator_pairs")
                             if (model / s / "metrics.csv").is_file()},
                         "set": [v for k, v in zip(args_, args_[1:]) if k == "--set"]}
    for step, (fit, stage, sets) in RETRAINS.items():  # a fit's stage trained again with other keys
        if step in steps and not run_finished(work / step):
            if not (work / f"fit_{fit}" / "model.json").is_file():
                raise SystemExit(f"shipped_eval: {step} trains step {fit}'s {stage} again (--only {fit} first)")
            for other in retrains_used(sets):  # a key naming another RETRAINS step's run: that run first
                if not run_finished(work / other):
                    raise SystemExit(f"shipped_eval: {step} starts from step {other}'s run (--only {other} first)")
            medgen("train", str(work / f"fit_{fit}" / stage / "config.yaml"), "--out", str(work / step),
                   *[a for kv in sets for a in ("--set", kv.format(work=work))], log=log)
    if "ct2mri" in steps:  # fit mri-ct's CT -> MRI translators: segmenters trained on their MRIs of the 25 CTs alone
        cts, labels = ct_train_folders()
        keys = args.segmenters.split(",") if args.segmenters else list(CT2MRI_SEGMENTERS)
        images, stage_s = {"ct": cts}, {}
        for source in {CT2MRI_SEGMENTERS[k][0] for k in keys} - {"ct"}:
            fit, sets = CT2MRI_SOURCES[source]
            model, name = work / f"fit_{fit}", source.replace("smri", "ct2mri")
            images[source] = work / f"{name}_images"
            if not (model / "model.json").is_file():
                raise SystemExit(f"shipped_eval: ct2mri: {source} needs step {fit}'s fit (--only {fit} first)")
            run = work / name if sets else model / "ct2mri"  # the fit's own stage, or that stage trained again
            if sets and not run_finished(run):
                medgen("train", str(model / "ct2mri" / "config.yaml"), "--out", str(run),
                       *[a for kv in sets for a in ("--set", kv)], log=log)
            stage_s[source] = training_minutes(run) * 60  # from its first logged iteration to its last
            if not images[source].is_dir():
                medgen("translate", str(work / name if sets else model), str(cts), str(images[source]), "--direction",
                       "ct2mri", *(["--labels", str(labels)] if "label_input=true" in sets else []), log=log)
        contrast = results.setdefault("ct2mri_contrast", {})
        contrast["real T2 MRIs"] = organ_contrast(mri, mri_labels, 1)
        contrast.update({source: organ_contrast(path, labels, 0) for source, path in images.items() if source != "ct"})
        for key in keys:
            source, sets = CT2MRI_SEGMENTERS[key][:2]
            run = work / f"seg_{key}"
            if not run_finished(run):
                results[f"{key}_seg_wall_s"] = medgen(
                    "train", "segmenter_ct_liver_2d.yaml", "--out", str(run), "--set", f"data.images={images[source]}",
                    "--set", f"data.labels={labels}", "--set", "data.label_map={6: 1}", "--set",
                    f"data.modality={'ct' if source == 'ct' else 'mri'}", "--set",
                    f"train.iterations={CT2MRI_SEG_ITERATIONS}", *[a for kv in sets for a in ("--set", kv)], log=log)
            d = pipeline(f"{key}_seg", mri, "--segmenter", str(run))
            results[key] = {"dice": d, "mean_all_10": mean(d), "mean_held_out": mean(d, HELD_OUT), "set": sets,
                            "stage_wall_s": stage_s.get(source),
                            "seg_wall_s": results.get(f"{key}_seg_wall_s"), "seg_iterations": CT2MRI_SEG_ITERATIONS}
    if "architecture" in steps:  # 2D against its candidates, the same CTs, iterations and CPU
        arch = results.setdefault("architecture", {})
        for name in ("mri-liver", *VARIANTS):
            run = Path(args.runs) / name
            if not run_finished(run):
                print(f"shipped_eval: architecture: {run} is not a finished run (benchmarks/shipped_models.py "
                      f"--models {name} --only train); skipped")
                continue
            pipeline(f"arch_{name}", mri, "--segmenter", str(run))
            rows = evaluate_folders(work / f"masks_arch_{name}", mri_labels, {1: 1}, levels=True)
            d = {r["case"]: r["dice"] for r in rows}
            arch[name] = {"dice": d, "mean_all_10": mean(d), "mean_held_out": mean(d, HELD_OUT),
                          **{f"mean_{k}": float(np.nanmean([r[f"dice_{k}"] for r in rows])) for k in ("top", "bottom")},
                          "train_minutes": training_minutes(run), "network": network_of(run)}
    judge = work / "ct_judge"
    if "ct_judge" in steps and not run_finished(judge):  # the realism judge no translator is trained through
        cts, labels = ct_train_folders()
        results["ct_judge_wall_s"] = medgen("train", "segmenter_ct_liver_2d.yaml", "--out", str(judge), "--set",
                                            f"data.images={cts}", "--set", f"data.labels={labels}",
                                            *[a for kv in JUDGE_SETS for a in ("--set", kv)], log=log)
    if "translation" in steps:  # each fit's translator judged on the real MRIs, with no paired CT
        judges = ["ct-liver", *([str(judge)] if run_finished(judge) else [])]  # realism: both segmenters' features
        # which training of the judge scored this folder's reports: another CPU trains it to other weights
        judged_by = judge_id(judge) if len(judges) > 1 else None
        for step in [*CT_FITS, *RETRAINS]:
            model, out = work / (step if step in RETRAINS else f"fit_{step}"), work / f"translation_{step}.json"
            report = json.loads(out.read_text()) if out.is_file() else None
            scores = (report or {}).get("summary", {}).get("translator", {}).get("by_features", {})
            boot = ["--bootstrap", str(BOOTSTRAP)] if step in BOOTSTRAP_STEPS else []
            if ((model / "model.json").is_file() or run_finished(model)) and (  # not judged yet, or before the judge
                    len(scores) < len(judges) or not all("fid_fov" in v for v in scores.values())  # or the common field
                    or (boot and not all("fid_delta_ci" in v for v in scores.values()))  # or the intervals
                    or not (report.get("realism") or {}).get("range")):  # or before the CTs' stored range
                medgen("evaluate", "translation", "--unpaired", "--run", str(model), "--mri", str(mri),
                       "--mri-labels", str(mri_labels), "--ct", str(data / "ct" / "images"), "--ct-labels",
                       str(data / "ct" / "labels"), "--segmenter", "ct-liver", "--out", str(out),
                       *[a for j in judges for a in ("--features", j)], *boot, log=log)
                report = json.loads(out.read_text())
            if report:
                results.setdefault("translation", {})[step] = {
                    **report["summary"], "held_out_dice": {m: mean({r["case"]: r["dice"] for r in report["cases"]
                                                                    if r["method"] == m}, HELD_OUT)
                                                           for m in ("translator", "identity", "histmatch")},
                    "ct_population": report["ct_population"], "fov_mm": (report.get("realism") or {}).get("fov_mm"),
                    "bootstrap": (report.get("realism") or {}).get("bootstrap", 0), "judge": judged_by,
                    "range": (report.get("realism") or {}).get("range")}
        for step, t in results.get("translation", {}).items():  # what each translator was trained on, as a column
            t["trained_on"] = trained_on(step, len(TRAIN_CTS), len(TRAIN))
        if results.get("translation"):
            write_record("translation_real", translation_record(results["translation"]))
    qc_rows = [r for summary in sorted(work.glob("masks_*/summary.json"))  # every pipeline's masks: several qualities
               for r in json.loads(summary.read_text())["cases"]]
    if len(qc_rows) >= results.get("qc_flags", {}).get("cases", 1):  # a fresh folder's few masks keep the figure
        results["qc_flags"] = flag_quality(qc_rows)
        print(json.dumps(results["qc_flags"], indent=1))
    results["data"] = {"ct_train": [f"btcv_{i}" for i in TRAIN_CTS], "ct_held_out": [f"btcv_{i}" for i in HELD_OUT_CTS],
                       "mri_fit": [f"chaos_t2_{i}" for i in TRAIN], "mri_held_out": [f"chaos_t2_{i}" for i in HELD_OUT]}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "data"}, indent=1))
    write_record("shipped_models", record(results))
    if args.write_cards:
        write_cards(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
