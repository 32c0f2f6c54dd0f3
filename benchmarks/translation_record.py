"""The result record of the translators judged on real MRIs with no paired CT (``docs/results/translation_real.json``),
from the reports of ``medgen evaluate translation --unpaired`` that ``shipped_eval.py --only translation`` gathers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medgen.models.run import latest_checkpoint

from shipped_models import TRAIN_CTS

ORGANS = ("liver", "spleen", "right_kidney", "left_kidney")
MRI_CT_3D = ["translator.spatial_dims=3", "translator.data.patch_size=[96, 96, 24]",  # 3D patches, 6 mm slices
             "translator.preprocess.spacing=[2.0, 2.0, 6.0]", "translator.inference.roi_size=[160, 160, 32]",
             "translator.train.batch_size=2", "translator.train.iterations=1500", "ct2mri.config=''"]
MRI_CT_3D_WORDS = "a 3D translator (96 x 96 x 24 patches at 2 x 2 x 6 mm, 1500 iterations)"  # what MRI_CT_3D sets
TRANSLATOR_NAMES = {  # as the translation table names them
    "frozen": "the presets' translator (`fit --segmenter ct-liver`; `fit mri-ct` trains the same stage, config "
              "identical but for paths)",
    "frozen_ct_only": "translator on painted CTs alone (`translator.target.ratio=0`)",
    "mri_ct": "`fit mri-ct` with the earlier preset (the segmentation loss on every sample)",
    "mri_ct_gan": "`fit mri-ct --set translator.loss.lambda_gan=1` (PatchGAN on its MRI outputs)",
    "mri_ct_3d": f"`fit mri-ct` with {MRI_CT_3D_WORDS}",
    "mri_ct_unlabelled": "`fit mri-ct` without `--ct-labels` (ct-liver's liver masks of the CTs label them)",
    "mri_ct_l1_only": "translator on painted CTs alone without the segmentation loss (`lambda_seg=0`, L1 only)",
    "mri_ct_seg_mri": "`fit mri-ct` with the segmentation loss on its MRIs alone (`seg_painted=false`; CTs: L1 only)",
    "mri_ct_seg_mri_half": "the same at half the segmentation loss's weight (`lambda_seg=0.5`)",
    "mri_ct_seg_mri_quarter": "the same at a quarter of its weight (`lambda_seg=0.25`): `fit mri-ct --preset cpu` now",
    "mri_ct_preset": "`fit mri-ct --preset cpu` again, as it ships (ct2mri stage included; the same seed)",
    "mri_ct_seed1": "`fit mri-ct --preset cpu` with another seed (`translator.train.seed=1`)",
    "mri_ct_structure": "the preset with `translator.loss.lambda_structure=1` (the MRI's edges kept: 1 - LNCC)",
    "mri_ct_liver_hu": "the preset with `translator.loss.lambda_liver=5` (the MRIs' liver pulled to the CTs' level)",
    "mri_ct_liver_hu_seed1": "the same, seed 1",
    "mri_ct_gan_preset": "the preset with `translator.loss.lambda_gan=1` (PatchGAN on its MRI outputs)",
    "mri_ct_gan_quarter": "the same at `lambda_gan=0.25`",
    "mri_ct_preset_now": "`fit mri-ct --preset cpu` as it shipped before synthetic pairs (ResNet ct2mri stage; the same "
                         "seed)",
    "mri_ct_pairs": "the same, then 1500 steps more with synthetic pairs (`pairs.iterations=1500`: CTs rendered by ct2mri)",
    "mri_ct_pairs_quarter": "those 1500 steps again with a quarter of the CT samples rendered (`pairs.prob=0.25`)",
    "mri_ct_pairs_gain": "those 1500 steps again, each rendered structure at a random gain (`pairs.organ_gain=2.5`): the "
                         "preset's translator from the ninth to the thirteenth stop",
    "mri_ct_pairs_seed1": "`fit mri-ct --preset cpu` with synthetic pairs and gains in [0.4, 2.5], seed 1",
    "mri_ct_pairs_gain_all": "the preset's pairs stage with every CT sample rendered (`pairs.prob=1`), seed 0",
    "mri_ct_pairs_gan": "the preset's pairs stage with a PatchGAN on its MRI outputs (`loss.lambda_gan=1`), seed 0",
    "mri_ct_pairs_long": "the preset's pairs stage twice as long (3000 steps), seed 0",
    "mri_ct_pairs_6000": "the preset's pairs stage four times as long (6000 steps), seed 0",
    "mri_ct_pairs_gan_pairs": "the preset's pairs stage with a PatchGAN on the synthetic pairs' outputs "
                              "(`loss.lambda_gan=1`, `loss.gan_on=pairs`), seed 0",
    "mri_ct_full_res": "`fit mri-ct --preset cpu` with a UNet level at the input's resolution "
                       "(`translator.generator.full_res=true`, `res_units=1`), seed 0",
    "mri_ct_pairs_6000_all": "the preset's pairs stage at 6000 steps with every CT sample rendered (`pairs.prob=1`), "
                             "seed 0",
    "mri_ct_pairs_organs": "the preset's pairs stage with the gains on the labelled organs alone, not the body's "
                           "intensity classes (`pairs.gain_on=organs`), seed 0",
    "mri_ct_pairs_organs_6000": "the same four times as long (6000 steps), seed 0",
    "mri_ct_pairs_gan_quarter": "the preset's pairs stage with a PatchGAN on its MRI outputs at a quarter weight "
                                "(`loss.lambda_gan=0.25`), seed 0",
    "mri_ct_pairs_gan_hold": "the preset's translator trained on with a PatchGAN on its MRI outputs, held to its own "
                             "below 4 mm (`loss.lambda_gan=1`, `loss.hold`, `lambda_hold=10`, `hold_sigma=2`), seed 0",
    "mri_ct_pairs_gain4": "the same with wider gains, in [0.25, 4] (`pairs.organ_gain=4`): the preset's translator in "
                          "the thirteenth and fourteenth stops, seed 0",
    "mri_ct_gain4_seed1": "`fit mri-ct --preset cpu` as it shipped then (gains in [0.25, 4], half the CT samples "
                          "rendered), seed 1",
    "mri_ct_pairs_gain4_long": "the preset's pairs stage twice as long (3000 steps, gains in [0.25, 4]), seed 0",
    "mri_ct_gain4_long_seed1": "`fit mri-ct --preset cpu` with the pairs stage twice as long (3000 steps, gains in "
                               "[0.25, 4]), seed 1",
    "mri_ct_gain4_seed1_here": "`fit mri-ct --preset cpu` as it shipped then, seed 1, rebuilt from "
                               "mri_ct_gain4_long_seed1's stages (its pairs stage at 1500 steps): the same CPU and judge as that run",
    "mri_ct_gain4_prob75_seed1": "the same with three quarters of the CT samples rendered (`pairs.prob=0.75`), seed 1",
    "mri_ct_prob75": "`fit mri-ct --preset cpu` as it ships now (three quarters of the CT samples rendered, "
                     "`pairs.prob=0.75`), seed 0",
    "mri_ct_gain4_here": "`fit mri-ct --preset cpu` as it shipped in the fourteenth stop, seed 0, rebuilt from "
                         "mri_ct_prob75's stages (its pairs stage at `pairs.prob=0.5`): the same CPU and judge as that run",
    "mri_ct_organs_gain4": "the same with the gains on the labelled organs alone (`pairs.gain_on=organs`), seed 0",
    "mri_ct_organs_gain4_prob75": "mri_ct_prob75's pairs stage with the gains on the labelled organs alone "
                                  "(`pairs.gain_on=organs`, `pairs.prob=0.75`), seed 0",
    "mri_ct_organs_gain4_seed1": "mri_ct_gain4_seed1_here's pairs stage with the gains on the labelled organs alone "
                                 "(`pairs.gain_on=organs`), seed 1",
    "mri_ct_organs_gain6_prob75": "mri_ct_prob75's pairs stage with the gains on the labelled organs alone, in [1/6, 6] "
                                  "(`pairs.gain_on=organs`, `pairs.organ_gain=6`), seed 0",
    "mri_ct_organs_gain6_prob75_seed1": "the same from seed 1 (mri_ct_gain4_prob75_seed1's pairs stage)"}
PRESETS = {  # the `fit mri-ct` preset's translator step -> its seed-1 run, newest first (the first measured is the preset)
    "mri_ct_prob75": "mri_ct_gain4_prob75_seed1", "mri_ct_pairs_gain4": "mri_ct_gain4_seed1",
    "mri_ct_pairs_gain": "mri_ct_pairs_seed1",
    "mri_ct_preset_now": "mri_ct_seed1", "mri_ct_seg_mri_quarter": "mri_ct_seed1", "mri_ct": None, "frozen": None}
JUDGE = "ct_judge"  # the realism judge's run (shipped_eval.py step ct_judge), by the end of its path


def judge_id(run: Path) -> str:
    """Which training of the judge ``run`` is: its weights' hash (the same recipe and seed on another CPU trains
    other weights, and other figures)."""
    return hashlib.sha256(latest_checkpoint(run).read_bytes()).hexdigest()[:12]


REALISM_COLUMNS = ((False, "fid"), (False, "kid"), (True, "fid"), (True, "kid"), (False, "fid_fov"), (True, "fid_fov"))


def judged(r: dict) -> dict | None:
    """FID and KID on the judge's features (no translator is trained through it), or None before it was trained."""
    return next((v for k, v in r.get("by_features", {}).items() if k.endswith(JUDGE)), None)


def figure(r: dict, judge: bool, key: str) -> float | None:
    """One realism figure of a report's method (``key``: fid, kid, fid_fov, kid_fov) on ct-liver's features (reports
    from before ``by_features`` hold them at the top) or on the judge's; None where it was not measured."""
    scores = judged(r) if judge else r.get("by_features", {}).get("ct-liver", r)
    return (scores or {}).get(key)


def first_pop(translation: dict) -> dict:
    """The real CTs' organ HU (the same in every translator's report)."""
    return next(iter(translation.values()))["ct_population"]


def offsets(r: dict, pop: dict) -> str:
    """A translator's organ HU minus the real CTs' (``pop``), in words: "liver -11, spleen -14, ..."."""
    short = {"liver": "liver", "spleen": "spleen", "right_kidney": "R kidney", "left_kidney": "L kidney"}
    return ", ".join(f"{short[o]} {round(r['organs'][o]['median'] - pop[o]['median']):+d}" for o in ORGANS
                     if o in r["organs"])


def delta_intervals(r: dict, key: str) -> str:
    """A translator's FID (``key``: fid, whole slices; fid_fov, the common field of view) minus histmatch's as 95 %
    intervals on ct-liver's features and the judge's: "[+0.01, +0.24]; [+0.02, +0.25]"."""
    return "; ".join("[{:+.2f}, {:+.2f}]".format(*figure(r, judge, f"{key}_delta_ci")["histmatch"])
                     for judge in (False, True))


def delta_rows(who: str, r: dict) -> list[list[str]]:
    """Summary rows of a translator's FID minus histmatch's intervals, whole slices and common field (if measured)."""
    if not (judged(r) or {}).get("fid_delta_ci", {}).get("histmatch"):
        return []
    return [[f"{who}: FID minus histmatch's, {what}, 95 % interval", delta_intervals(r, key)]
            for key, what in (("fid", "whole slices"), ("fid_fov", "common field"))]


METHODS = ("translator", "identity", "histmatch", "real_vs_real")
REALISM_KEYS = ("fid", "kid", "fid_fov", "kid_fov", "fid_mean", "spread", "by_features")


def on_one_ruler(translation: dict) -> dict:
    """``translation`` with the realism figures kept only where they were measured on the preset's ruler (its
    ``range``: every set in the real CTs' stored HU range); an older report's show as '-' (its FID saw the field
    beyond each scan at -1024 HU, a scanner's field of view rather than the tissue)."""
    ruler = next((translation[k].get("range") for k in PRESETS if k in translation), None)
    return {step: t if t.get("range") == ruler else
            {k: ({m: v for m, v in r.items() if m not in REALISM_KEYS} if k in METHODS else r)
             for k, r in t.items()} for step, t in translation.items()}


def translation_record(translation: dict) -> dict:
    """The result record of the translators on real MRIs (``docs/results/translation_real.json``)."""
    translation = on_one_ruler(translation)
    def cells(r: dict, own: dict | None = None) -> list:
        """A method's realism and organ cells; ``own``: its report, whose histmatch and real-vs-real figures are shown
        beside the judge's figures where another training of the judge scored it."""
        def cell(judge: bool, key: str) -> str:
            v, digits = figure(r, judge, key), 3 if key.startswith("kid") else 2
            hm, rr = (figure(own.get(m, {}), judge, key) if own and judge else None
                      for m in ("histmatch", "real_vs_real"))
            return "-" if v is None else f"{v:.{digits}f}" + (f" (hm {hm:.{digits}f}; rr {rr:.{digits}f})"
                                                                if None not in (hm, rr) else "")
        return [*(cell(judge, key) for judge, key in REALISM_COLUMNS), *(
            f"{r['organs'][o]['median']:.0f} ({r['organs'][o]['abs_diff']:.0f}; {r['organs'][o]['iqr_overlap']:.2f})"
            if o in r.get("organs", {}) else "-" for o in ORGANS)]

    rows, summary = [], []
    preset = next((k for k in PRESETS if k in translation), None)
    # the baselines are the same in every report but for the judge, which each work folder trains (None: the first
    # training, before its reports named it): one row each, from the newest report that the preset's judge scored
    judge_of = translation[preset].get("judge") if preset else None
    base = max(reversed([t for t in translation.values() if t.get("judge") == judge_of] or list(translation.values())),
               key=lambda t: [figure(t["histmatch"], judge, key) is not None  # the newest with the most figures
                              for judge, key in ((True, "fid"), (True, "fid_fov"))])
    for i, (step, t) in enumerate(translation.items()):
        for method in ("translator", "identity", "histmatch")[: 3 if i == 0 else 1]:
            r = t if method == "translator" else base
            other = t if t.get("judge") != base.get("judge") and method == "translator" else None
            rows.append([TRANSLATOR_NAMES.get(step, step) if method == "translator" else f"baseline: {method}",
                         t.get("trained_on", "") if method == "translator" else "",
                         round(r[method]["dice"], 3), round(r["held_out_dice"][method], 3), *cells(r[method], other)])
    if preset:
        t = translation[preset]
        r = t["translator"]
        who = "`fit mri-ct`" if preset.startswith("mri_ct") else "frozen route's"
        for judge, key, what in ((False, "fid", ", 10 MRIs: ct-liver Dice; FID"),
                                 (True, "fid", ": FID on the judge's features"),
                                 (False, "fid_fov", ", common field of view: FID"),
                                 (True, "fid_fov", ", common field of view: judge's FID")):
            mine, floor, hm = (figure(x, judge, key) for x in (r, t.get("real_vs_real", {}), t["histmatch"]))
            if None not in (mine, floor, hm):  # each beside real vs real and histmatch
                dice = f"{r['dice']:.3f}; " if "Dice" in what else ""
                summary.append([f"{who} synthetic CT{what} (real vs real; histmatch)",
                                f"{dice}{mine:.2f} ({floor:.2f}; {hm:.2f})"])
        summary.append([f"{who} synthetic CT: organ HU minus the real CTs'", offsets(r, first_pop(translation))])
        summary += delta_rows(who, r)  # the floor's verdict with its uncertainty
        other = PRESETS[preset]  # the same preset from another seed: the spread
        if other in translation:
            r = translation[other]["translator"]
            summary.append(["`fit mri-ct`, seed 1: Dice; organ HU minus real CTs'",
                            f"{r['dice']:.3f}; {offsets(r, first_pop(translation))}"])
            summary += delta_rows("`fit mri-ct`, seed 1", r)
    pop = first_pop(translation)
    draws = translation[preset].get("bootstrap") if preset else None  # the preset's intervals' resamples
    field = f"{base['fov_mm']:.0f} mm" if base.get("fov_mm") else "its side in each report"
    if "real_vs_real" in base:
        rows.append(["real CTs against real CTs (odd vs even BTCV)", "", "", "", *cells(base["real_vs_real"])[:6],
                     *(f"{pop[o]['median']:.0f} (IQR {pop[o]['iqr'][0]:.0f} to {pop[o]['iqr'][1]:.0f})" for o in ORGANS)])
    return {"title": "Translators judged on real MRIs, no paired CT", "summary": summary,
            "command": f"python benchmarks/shipped_eval.py --only {','.join(translation)},ct_judge,translation",
            "data": {"ct_count": 30, "ct_count_for_training": len(TRAIN_CTS), "mri": "10 CHAOS T2 MRIs, manual labels",
                     "translators": "the synthct translator of each fit (shipped_eval.py's step: its row) "
                                    + "; ".join(f"{k}: {TRANSLATOR_NAMES.get(k, k)}" for k in translation)},
            "notes": ["organ HU: the median synthetic-CT HU inside the MRI's manual organ label (median over the 10 "
                      "MRIs), the absolute difference to the real CTs' median, and the overlap of the two IQRs; BTCV HU are "
                      "known in [-125, 275] only, and the translator's output window is [-175, 250]",
                      "FID/KID: 12 axial slices over the liver per scan, 2 mm in-plane, features of ct-liver's deepest "
                      "layer, against the 15 even-numbered BTCV CTs; real vs real: the 15 odd-numbered ones. Every "
                      "set is judged in the range the BTCV CTs hold, [-125, 275] HU, the field beyond each scan at "
                      "-125 (rows judged before, which filled it with -1024 HU: '-'; their figures are in the "
                      "measurement log). Every "
                      "translator is trained through ct-liver, which shapes its features: the judge (ct-liver's "
                      "recipe, another seed, liver, spleen and kidneys; shipped_eval.py --only ct_judge) is a "
                      "segmenter no translator is trained through; '-': judged before it existed. The judge is "
                      "trained again in each work folder, and another CPU's arithmetic gives it other weights: where "
                      "another training of it scored a row, its cells add histmatch's and real vs real's figures on "
                      "that judge's features from the same report, '(hm 0.29; rr 0.19)': compare the row with those",
                      "FID, common field of view: the same slices cropped to the centred square scanned in every slice "
                      f"of the run ({field}), on each segmenter's features. The whole slices' figures also see how far "
                      "each scan reaches: the 10 MRIs share one field of view, the CTs' differ; '-': "
                      "judged before this figure existed",
                      "95 % intervals (the preset's translators, both seeds; ct-liver's features; the judge's): "
                      f"percentiles over {draws} bootstrap resamples of the cases, the 10 MRIs "
                      "and the 15 reference CTs drawn with replacement; FID minus histmatch's on the same resampled MRIs "
                      "(paired). Above 0: further from the real CTs than histogram matching"],
            "table": {"columns": ["method", "trained on", "ct-liver Dice, 10 MRIs", "MRIs 15 19 20", "FID", "KID", "FID (judge)",
                                  "KID (judge)", "FID, common field of view", "FID (judge), common field of view",
                                  "liver HU (abs. diff; IQR overlap)", "spleen", "right kidney", "left kidney"],
                      "rows": rows}}
