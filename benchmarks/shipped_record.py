"""The shipped models' result record (``docs/results/shipped_models.json``) and their cards' figures, from the results
of ``benchmarks/shipped_eval.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fit_steps import CT_FITS, trained_on
from real_liver import TRAIN
from shipped_models import TRAIN_CTS
from translation_record import MRI_CT_3D_WORDS, PRESETS

ROOT = Path(__file__).resolve().parents[1]
ORGAN_AUG = "augment.organ_intensity=[-0.7, 0.2]"  # each organ's intensity shifted at random (the config's default)
GIN_AUG = "augment.gin=0.5"  # half the patches through random shallow convolutions (GIN+IPA): non-monotonic contrast
PRIOR_AUG = ["augment.synthseg.prob=0.5", "augment.synthseg.contrast=prior"]  # half the patches: each labelled
# structure (and each intensity class of the unlabelled body) of the image moved by its own offset in [-0.25, 0.25]
BASELINE_WORDS = "baseline: that recipe on the 25 real CTs themselves, no translation"
CT2MRI_SOURCES = {  # the synthetic MRIs of CT2MRI_SEGMENTERS: source -> (the CT_FITS step whose ct2mri stage makes
    # them, and the keys that stage's config.yaml is trained again with, if any; label_input: made with translate --labels)
    "smri": ("mri_ct", []),  # the earlier preset's fit
    "smri_labels": ("mri_ct", ["label_input=true"]),  # the generator also reads the liver, the discriminator sees it
    "smri_preset": ("mri_ct_preset", []),  # the preset's fit, with the pointwise generator (pinned in CT_FITS)
    "smri_liver": ("mri_ct_preset", ["label_input=true", "loss.lambda_liver=5"]),  # and the liver at the MRIs' level
    "smri_local": ("mri_ct_preset", ["generator.name=resnet", "generator.n_downsampling=0", "generator.n_blocks=3",
                                     "generator.ngf=16"])}  # 25 voxels around each one: synthmri_2d.yaml's generator now
CT2MRI_SEGMENTERS = {  # shipped_eval's segmenters of step ct2mri: key -> (what it trains on: fit mri-ct's synthetic
    # MRIs (a source of CT2MRI_SOURCES) or the real CTs "ct", its extra --set, its row, the key
    # of its real-CT baseline)
    "ct2mri": ("smri", [], "`fit mri-ct`'s ct2mri (the earlier preset's fit): a 2D segmenter trained on its synthetic "
                           "MRIs of the 25 CTs alone (their liver labels; ct-liver's recipe, whose real-CT baseline is "
                           "ct-liver)", None),
    "ct2mri_organ": ("smri", [ORGAN_AUG], "the same with random organ intensities (`augment.organ_intensity`)",
                     "ct_organ"),
    "ct_organ": ("ct", [ORGAN_AUG], BASELINE_WORDS, None),
    "ct2mri_gin": ("smri", [GIN_AUG], "the ct2mri segmenter with random-convolution contrast on half its patches "
                                      "(`augment.gin=0.5`, GIN+IPA)", "ct_gin"),
    "ct_gin": ("ct", [GIN_AUG], BASELINE_WORDS, None),
    "ct2mri_gin80": ("smri", ["augment.gin=0.8"], "the ct2mri segmenter with random-convolution contrast on 80 % of its "
                                                  "patches (`augment.gin=0.8`)", None),
    "ct2mri_labels_gin": ("smri_labels", [GIN_AUG], "the same (`augment.gin=0.5`) on the synthetic MRIs of a ct2mri "
                                                    "generator that also reads the CT's liver, judged by a discriminator "
                                                    "that sees the liver (`ct2mri.label_input=true`, `translate "
                                                    "--labels`)", "ct_gin"),
    "ct2mri_preset_gin": ("smri_preset", [GIN_AUG], "the same (`augment.gin=0.5`) on the synthetic MRIs of `fit mri-ct "
                                                    "--preset cpu`'s fit (`mri_ct_preset`), its pointwise generator", "ct_gin"),
    "ct2mri_liver_gin": ("smri_liver", [GIN_AUG], "the same on those of its ct2mri stage trained again reading the "
                                                  "liver, its liver pulled to the fit MRIs' liver level "
                                                  "(`ct2mri.label_input=true`, `ct2mri.loss.lambda_liver=5`)", "ct_gin"),
    "ct2mri_local_gin": ("smri_local", [GIN_AUG], "the same on those of its ct2mri stage trained again with a "
                                                  "convolutional generator that sees 25 voxels (50 mm) around each "
                                                  "voxel, no labels (ResNet, 3 blocks, no downsampling, 16 filters): "
                                                  "the ct2mri generator now",
                         "ct_gin"),
    "ct2mri_local_prior": ("smri_local", [GIN_AUG, *PRIOR_AUG], "the same (`augment.gin=0.5`), half its patches each "
                                                                "structure of the synthetic MRI shifted by its own "
                                                                "random offset (`augment.synthseg.contrast=prior`, "
                                                                "prob 0.5): the synthetic MRI's own texture, other "
                                                                "organ contrasts (an iron-dark liver)", "ct_prior"),
    "ct2mri_local_prior_seed1": ("smri_local", [GIN_AUG, *PRIOR_AUG, "train.seed=1"], "the same, seed 1 (the "
                                                                                    "spread)", "ct_prior"),
    "ct_prior": ("ct", [GIN_AUG, *PRIOR_AUG], BASELINE_WORDS, None)}


def write_cards(results: dict) -> None:
    """The figures of ``results`` into the shipped models' cards (the weights and their sha256 unchanged)."""
    cmd = "python benchmarks/shipped_eval.py"
    figures = {"mri-liver": {}, "ct-liver": {}}
    if "zero_shot" in results:
        z = results["zero_shot"]
        figures["mri-liver"]["liver Dice, 10 CHAOS T2 MRIs, zero-shot"] = {
            "value": round(z["mri-liver"]["mean_all_10"], 3), "command": f"{cmd} --only zero_shot",
            "baselines": {k: round(v["mean_all_10"], 3) for k, v in z.items() if k != "mri-liver"}}
        figures["ct-liver"]["liver Dice, 10 CHAOS T2 MRIs, the CT model on the MRI (not its use)"] = {
            "value": round(z["ct-liver direct"]["mean_all_10"], 3), "command": f"{cmd} --only zero_shot"}
    if "ct" in results:
        for name, r in results["ct"].items():
            figures[name][f"liver Dice, held-out BTCV CTs {', '.join(r['dice'])}"] = {
                "value": round(r["mean"], 3), "command": f"{cmd} --only ct"}
    if "fit_mri_paint" in results:
        f = results["fit_mri_paint"]
        figures["mri-liver"]["liver Dice after `medgen fit mri-liver --mri` on 7 MRIs, held-out 15 19 20"] = {
            "value": round(f["mean_held_out"], 3), "command": f"{cmd} --only fit_mri",
            "fit_minutes": None if f.get("wall_s") is None else round(f["wall_s"] / 60, 1)}
    if "speed" in results:
        figures["mri-liver"]["seconds for `medgen segment` on a 256 x 256 x 40 MRI, 2 CPU cores"] = {
            "value": round(results["speed"]["median_s"], 1), "command": f"{cmd} --only speed"}
    if "frozen" in results:
        figures["ct-liver"]["liver Dice, 10 CHAOS T2 MRIs, frozen behind `fit --segmenter ct-liver`"] = {
            "value": round(results["frozen"]["mean_all_10"], 3), "command": f"{cmd} --only frozen"}
    for name, figs in figures.items():
        path = ROOT / "medgen" / "models" / "weights" / name / "card.json"
        card = json.loads(path.read_text())
        card["figures"] = {**card.get("figures", {}), **figs}
        path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"shipped_eval: figures written into {path}")


def record(results: dict) -> dict:
    """The result record of this run (``docs/results/shipped_models.json``, rendered into docs/results.md)."""
    rows = []
    shipped, cts = f"shipped ({len(TRAIN_CTS)} CTs)", f"{len(TRAIN_CTS)} CTs"  # the "trained on" column
    z = results.get("zero_shot", {})
    names = {"mri-liver": "`medgen pipeline mri-liver` (the shipped mri-liver, zero-shot)",
             "ct-liver direct": "baseline: `ct-liver` on the MRI (its range into the CT window)",
             "ct-liver histmatch": "baseline: `ct-liver` on the MRI histogram-matched to a CT"}
    for key, label in names.items():
        if key in z:
            rows.append([label, shipped, z[key]["mean_all_10"], z[key]["mean_held_out"], ""])
    if "zero_shot_tta" in results:
        r = results["zero_shot_tta"]
        rows.append([f"the same with test-time contrast augmentation (gammas {r['gammas']})", shipped, r["mean_all_10"],
                     r["mean_held_out"], ""])
    for key, label in (("fit_mri_paint", "`medgen fit mri-liver --mri` (7 MRIs, no CT; the preset) + `pipeline --model`"),
                       ("fit_mri", "the same fit with `--set adapt.paint=false` (the MRIs alone, unpainted)"),
                       ("frozen", "`fit --segmenter ct-liver` (25 CTs, 7 MRIs; frozen CT segmenter; the preset) + `pipeline`"),
                       ("frozen_ct_only", "the same fit with `--set translator.target.ratio=0` (the translator on "
                                          "painted CTs alone, not on the MRIs)"),
                       ("mri_ct", "`fit mri-ct` (25 CTs, 7 MRIs; the earlier preset, the segmentation loss on every "
                                  "sample) + `pipeline --model`: its synthetic CT through ct-liver"),
                       ("mri_ct_gan", "the same fit with `--set translator.loss.lambda_gan=1` (a PatchGAN on the "
                                      "synthetic CTs of the MRIs)"),
                       ("mri_ct_3d", f"the same fit with {MRI_CT_3D_WORDS}"),
                       ("mri_ct_unlabelled", "the same fit without `--ct-labels` (ct-liver's masks label the CTs; "
                                             "no ct2mri stage)"),
                       ("mri_ct_l1_only", "the same fit with `translator.loss.lambda_seg=0` and `translator.target.ratio=0` "
                                          "(L1 to the painted CTs alone; no ct2mri stage)"),
                       ("mri_ct_seg_mri", "the same fit with `translator.loss.seg_painted=false` (the segmentation loss "
                                          "on the MRIs alone, L1 alone on the painted CTs; no ct2mri stage)"),
                       ("mri_ct_seg_mri_half", "the same with `translator.loss.lambda_seg=0.5` as well (that loss at half "
                                               "its weight)"),
                       ("mri_ct_seg_mri_quarter", "the same with `translator.loss.lambda_seg=0.25` (a quarter): "
                                                  "`fit mri-ct --preset cpu` now, without its ct2mri stage"),
                       ("mri_ct_preset", "`fit mri-ct --preset cpu`, every stage in one timed run (its ct2mri with the "
                                         "pointwise generator it had then: `ct2mri.generator.name=pointwise`)"),
                       ("mri_ct_seed1", "the same translator from another seed (`translator.train.seed=1`; no ct2mri "
                                        "stage)"),
                       ("mri_ct_structure", "the preset's translator with `translator.loss.lambda_structure=1` (the "
                                            "MRI's edges kept; no ct2mri stage)"),
                       ("mri_ct_liver_hu", "the preset's translator with `translator.loss.lambda_liver=5` (the MRIs' "
                                           "liver pulled to the CTs' level; no ct2mri stage)"),
                       ("mri_ct_liver_hu_seed1", "the same, seed 1"),
                       ("mri_ct_gan_preset", "the preset's translator with `translator.loss.lambda_gan=1` (a PatchGAN "
                                             "on its MRI outputs; no ct2mri stage)"),
                       ("mri_ct_gan_quarter", "the same at `translator.loss.lambda_gan=0.25`"),
                       ("mri_ct_preset_now", "`fit mri-ct --preset cpu` as it shipped before synthetic pairs, every "
                                             "stage in one timed run (its ct2mri stage the ResNet)"),
                       ("mri_ct_pairs", "the same, then its translator 1500 steps more with synthetic pairs "
                                        "(`pairs.iterations=1500`: the CTs as its ct2mri stage renders them)"),
                       ("mri_ct_pairs_seed1", "`fit mri-ct --preset cpu` with synthetic pairs and organ gains in "
                                              "[0.4, 2.5], its translator from seed 1, every stage in one timed run"),
                       ("mri_ct_full_res", "`fit mri-ct --preset cpu` with a UNet level at the input's resolution "
                                           "(`translator.generator.full_res=true`, `res_units=1`), one timed run"),
                       ("mri_ct_gain4_seed1", "`fit mri-ct --preset cpu` as it shipped then (the pairs stage's gains in "
                                              "[0.25, 4]), its translator from seed 1, every stage in one timed run"),
                       ("mri_ct_gain4_long_seed1", "the same with the pairs stage twice as long (`pairs.iterations="
                                                   "3000`), seed 1, one timed run"),
                       ("mri_ct_prob75", "`fit mri-ct --preset cpu` as it ships now (three quarters of the CT samples "
                                         "rendered in the pairs stage, `pairs.prob=0.75`), seed 0, one timed run")):
        if key in results:
            r = results[key]
            wall = f"fit {r['wall_s'] / 60:.1f} min" if r.get("wall_s") else "fit time: reused run"
            if r.get("stage_minutes"):  # each stage's training time (first to last logged iteration)
                wall += " (training: " + ", ".join(f"{k} {v} min" for k, v in r["stage_minutes"].items()) + ")"
            mine = (trained_on(key, len(TRAIN_CTS), len(TRAIN)) if key in CT_FITS  # else fit mri-liver --mri
                    else f"{shipped} + {len(TRAIN)} MRIs")
            rows.append([label, mine, r["mean_all_10"], r["mean_held_out"], wall])
    for key, (source, _, label, _) in CT2MRI_SEGMENTERS.items():
        if key in results:
            r = results[key]
            stage = r.get("stage_wall_s")
            other = f"ct2mri stage {stage / 60:.1f} min; " if stage and source != "ct" else ""
            rows.append([label, cts if source == "ct" else f"ct2mri MRIs of {cts}", r["mean_all_10"], r["mean_held_out"],
                         other + (f"segmenter trained {r['seg_wall_s'] / 60:.1f} min" if r.get("seg_wall_s") else "")])
    for name, r in results.get("architecture", {}).items():
        rows.append([f"architecture: `{name}` training run, {r['network']}", cts,
                     r["mean_all_10"], r["mean_held_out"],
                     f"dome {r['mean_top']:.3f}, lowest slices {r['mean_bottom']:.3f}; trained {r['train_minutes']} min"])
    for key, r in results.get("ct", {}).items():
        rows.append([f"`medgen segment {key}`" + (" --modality ct" if key == "mri-liver" else "")
                     + f" on held-out CTs ({', '.join(r['dice'])})", shipped, "", "", f"CT liver Dice {r['mean']:.3f}"])
    if "speed" in results:
        sp = results["speed"]
        rows.append(["`medgen segment mri-liver IN OUT --modality mri`, a new process (load included)", shipped, "", "",
                     f"{sp['median_s']:.1f} s (median of 3) on {'x'.join(map(str, sp['shape']))}"])
    summary = []
    if "mri-liver" in z:
        base = z.get("ct-liver direct", {}).get("mean_all_10")
        summary.append(["`mri-liver` zero-shot: liver Dice, 10 CHAOS T2 MRIs (no MRI in its training)",
                        f"{z['mri-liver']['mean_all_10']:.3f}" + (f" (ct-liver on the MRI: {base:.3f})" if base else "")])
    if "fit_mri_paint" in results:
        r = results["fit_mri_paint"]
        summary.append(["`fit mri-liver --mri` (7 unlabelled MRIs, no CT): Dice on held-out MRIs 15 19 20",
                        f"{r['mean_held_out']:.3f}" + (f" (fit {r['wall_s'] / 60:.1f} min)" if r.get("wall_s") else "")])
    if "frozen" in results:
        other = results.get("frozen_ct_only", {}).get("mean_all_10")
        summary.append(["`fit --segmenter ct-liver` (frozen CT segmenter): Dice, 10 MRIs",
                        f"{results['frozen']['mean_all_10']:.3f}" + (f" (translator on painted CTs alone: {other:.3f})"
                                                                     if other else "")])
    timed = [run for pair in PRESETS.items() for run in pair if run in results and results[run].get("wall_s")]
    if timed:  # the newest preset's run timed end to end, either seed (PRESETS: newest first)
        preset = timed[0]
        r = results[preset]
        which = ("as it ships" if preset in next(iter(PRESETS.items())) else "an earlier preset") + (
            ", seed 1" if preset in PRESETS.values() else ", seed 0")
        summary.append([f"`fit mri-ct --preset cpu`, all stages ({which}): time; ct-liver Dice, 10 MRIs",
                        f"{r['wall_s'] / 60:.1f} min; {r['mean_all_10']:.3f}"])
    if "ct2mri" in results:
        best = max((k for k, v in CT2MRI_SEGMENTERS.items() if v[0] != "ct" and k in results
                    and not k.endswith("_seed1")),  # a recipe's first seed (its other seed: the spread, not a pick)
                   key=lambda k: results[k]["mean_all_10"])
        base = results.get(CT2MRI_SEGMENTERS[best][3] or "")
        words = "on the real CTs" if base else "ct-liver on the MRI"
        base = base or results.get("zero_shot", {}).get("ct-liver direct", {})
        source = CT2MRI_SEGMENTERS[best][0]
        fit = " (earlier preset)" if CT2MRI_SOURCES[source][0] == "mri_ct" else ""
        sets = results[best]["set"]
        recipe = [kv.removeprefix("augment.") for kv in sets if kv not in PRIOR_AUG]
        recipe += ["prior offsets"] if set(PRIOR_AUG) <= set(sets) else []
        summary.append([f"Segmenter on ct2mri MRIs alone{fit}: Dice, 10 MRIs; held out",
                        f"{results[best]['mean_all_10']:.3f}; {results[best]['mean_held_out']:.3f} "
                        f"({', '.join(recipe) or 'ct-liver recipe'}"
                        f"{', organ labels read' if 'label_input=true' in CT2MRI_SOURCES[source][1] else ''}; "
                        f"{words}: {base.get('mean_all_10', float('nan')):.3f})"])
    arch = results.get("architecture", {})
    if "mri-liver" in arch and len(arch) > 1:
        others = ", ".join(f"{k} {v['mean_all_10']:.3f}" for k, v in arch.items() if k != "mri-liver")
        summary.append(["Architecture at the same CPU time: zero-shot Dice of the shipped 2.5D `mri-liver`, 10 MRIs",
                        f"{arch['mri-liver']['mean_all_10']:.3f} ({others})"])
    if "ct-liver" in results.get("ct", {}):
        summary.append(["`ct-liver`: liver Dice on 5 held-out BTCV CTs", f"{results['ct']['ct-liver']['mean']:.3f}"])
    if "speed" in results:
        summary.append(["`medgen segment` of a 256 x 256 x 40 MRI, model load included",
                        f"{results['speed']['median_s']:.1f} s"])
    notes = []
    if "qc_flags" in results:
        q = results["qc_flags"]
        notes.append(f"QC flags over the {q['cases']} masks of this run ({q['bad']} with Dice < 0.7, {q['good']} with "
                     f"Dice >= 0.8); Spearman of the pipeline's uncertainty against Dice: "
                     f"{q['spearman_uncertainty_dice']:.2f}")
        notes += [f"flag {name}: fired {f['fired']}, precision {f['precision']:.2f}, recall {f['recall']:.2f}, "
                  f"fires on {f['on_good']:.0%} of the good masks" for name, f in q["flags"].items()]
        notes.append("low_confidence's threshold (uncertainty > 0.3) was chosen on these masks; touches_fov_edge "
                     "did not single out bad masks on them and was removed")
    if "ct2mri_contrast" in results:
        names = {"real T2 MRIs": "the 10 real T2 MRIs", "smri": "ct2mri's synthetic MRIs of the 25 CTs",
                 "smri_labels": "those of the ct2mri generator reading the liver (`label_input`)",
                 "smri_preset": "those of `fit mri-ct --preset cpu`'s pointwise generator",
                 "smri_liver": "those of its stage reading the liver, pulled to the MRIs' liver level (`lambda_liver`)",
                 "smri_local": "those of its stage with a convolutional generator (50 mm around each voxel, the "
                               "generator now)"}
        notes.append("T2 organ contrast (median over the volumes of each organ's median intensity over the liver's; "
                     "spleen / right kidney / left kidney): " + "; ".join(
                         f"{names[k]} {' / '.join(f'{v:.2f}' for v in c.values())}"
                         for k, c in results["ct2mri_contrast"].items()))
    return {"title": "Shipped models on the development set", "notes": notes, "summary": summary, "command": "python benchmarks/shipped_eval.py",
            "data": {"ct_count_for_training": len(TRAIN_CTS), **results["data"]},
            "machine": f"{os.cpu_count()} CPU cores, no GPU",
            "table": {"columns": ["what", "trained on", "liver Dice, all 10 MRIs", "MRIs 15 19 20", "other"],
                      "rows": rows},
            "per_case": {k: v for k, v in results.items() if k != "data"}}
