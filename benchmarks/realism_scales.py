"""At which spatial scale, and where in the slice, a synthetic CT's FID gap to histogram matching lies: a translator's
synthetic CTs and the histogram-matched MRIs (the same liver-level slices as ``medgen evaluate translation
--unpaired``) split by a Gaussian of ``--sigma`` voxels into a coarse part and the rest, and each half swapped between
the two; then split into the common field of view and the rest of each scan, and swapped. FID on whole slices and
in the common field of view, on ct-liver's features and the judge's (shipped_eval.py --only ct_judge), against the
even-numbered real CTs, as the evaluation scores them.

    python benchmarks/realism_scales.py [--step mri_ct_pairs_gain] [--sigma 1.5 4]

Writes ``docs/results/realism_scales.json`` (rendered by ``python benchmarks/results_doc.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medgen.data.datalist import image_label_pairs
from medgen.evaluation.synthesis import DeepFeatures
from medgen.evaluation.translation import (FEATURE_SPACING_MM, ORGANS, ct_population, histogram_matched, labelled_image,
                                           organ_slices, realism, scanned_field)
from medgen.inference.translate import load_translator

from results_doc import write_record
from translation_record import JUDGE, TRANSLATOR_NAMES, judge_id

ROOT = Path(__file__).resolve().parents[1]


def split(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (slices, NaN beyond the scan) as its Gaussian-blurred coarse part and the rest (BTCV's air, -125 HU,
    beyond the scan while blurring)."""
    v = torch.nan_to_num(x, nan=-125.0).numpy()
    coarse = torch.from_numpy(ndimage.gaussian_filter(v, (0, 0, sigma, sigma)))
    return coarse, torch.from_numpy(v) - coarse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real" / "abdomen_uda_dev"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "shipped_eval"))
    p.add_argument("--step", default="mri_ct_pairs_gain", help="shipped_eval's translator step (its run in --work)")
    p.add_argument("--sigma", type=float, nargs="+", default=[1.5, 4.0], help="the split's Gaussian, voxels of 2 mm")
    args = p.parse_args()
    data, work = Path(args.data), Path(args.work)
    run = work / args.step if (work / args.step).is_dir() else work / f"fit_{args.step}"
    translator = load_translator(run, "mri2ct", "cpu")
    ct_slices: list[torch.Tensor] = []
    ct_population(data / "ct" / "images", data / "ct" / "labels", ct_slices)
    reference = labelled_image(*image_label_pairs(data / "ct" / "images", data / "ct" / "labels")[0])[0]
    fake, hm = [], []
    for image_path, label_path in image_label_pairs(data / "mri" / "images", data / "mri" / "labels"):
        image, ref, labels = labelled_image(image_path, label_path)
        liver = labels == ORGANS[0][1]
        fake.append(organ_slices(translator.translate(image, ref)[0], liver, ref))
        hm.append(organ_slices(histogram_matched(image, reference), liver, ref))
    cases = np.repeat(np.arange(len(fake)), [len(f) for f in fake])  # each slice's MRI (the mixes keep them)
    fake, hm, real = torch.cat(fake), torch.cat(hm), torch.cat(ct_slices[0::2])
    outside = fake.isnan()  # the same scans: the same voxels beyond them
    sets = {"synthetic CT": fake, "histmatch": hm}
    for sigma in args.sigma:
        (fc, ff), (hc, hf) = split(fake, sigma), split(hm, sigma)
        sets[f"synthetic CT coarse + histmatch fine, sigma {sigma:g}"] = (fc + hf).masked_fill(outside, float("nan"))
        sets[f"histmatch coarse + synthetic CT fine, sigma {sigma:g}"] = (hc + ff).masked_fill(outside, float("nan"))
    side = scanned_field(real, torch.cat(ct_slices[1::2]), *sets.values())  # the evaluation's field (real vs real's too)
    c, h = fake.shape[-1] // 2, side // 2
    inner = torch.zeros(fake.shape, dtype=torch.bool)
    inner[..., c - h:c + h, c - h:c + h] = True  # the common field of view; beyond it, the rest of each scan
    sets["synthetic CT in the common field + histmatch beyond it"] = torch.where(inner, fake, hm)
    sets["histmatch in the common field + synthetic CT beyond it"] = torch.where(inner, hm, fake)
    sets["real CTs, odd-numbered (real vs real)"] = torch.cat(ct_slices[1::2])
    ct_cases = [np.repeat(np.arange(len(c)), [len(x) for x in c]) for c in (ct_slices[1::2], ct_slices[0::2])]
    groups = {**{name: cases for name in sets}, "real CTs, odd-numbered (real vs real)": ct_cases[0], "real": ct_cases[1]}
    judges = {"ct-liver": "ct-liver", "judge": str(work / JUDGE)}
    scores = {name: realism(DeepFeatures(path, torch.device("cpu")), sets, real, side, groups)
              for name, path in judges.items()}
    def cell(j: str, name: str, key: str) -> str:
        v = scores[j][name].get(key, 1.0 if key == "spread" else None)  # the reference: its own spread, no FID
        return "-" if v is None else f"{v:.2f}"

    rows = [[name if name in sets else "real CTs, even-numbered (the reference)",
             *(cell(j, name, k) for k in ("fid", "fid_fov", "fid_mean", "spread", "spread_between") for j in judges)]
            for name in [*sets, "real"]]
    write_record("realism_scales", {
        "title": "Where the synthetic CT's FID gap lies: coarse and fine scales, and the common field and the rest, swapped "
                 "with histogram matching",
        "command": f"python benchmarks/realism_scales.py --step {args.step} --sigma {' '.join(map(str, args.sigma))}",
        "data": {"translator": f"{args.step}: {TRANSLATOR_NAMES.get(args.step, args.step)}",
                 "mri": "10 CHAOS T2 MRIs", "ct_count": 30, "reference": "the 15 even-numbered BTCV CTs",
                 "fov_mm": side * FEATURE_SPACING_MM, "judge": judge_id(work / JUDGE)},
        "notes": ["coarse: the slice blurred by a Gaussian of sigma voxels (2 mm each); fine: the slice minus its coarse "
                  "part; each mix keeps the scans' extent (NaN beyond it)",
                  "the same slices, features and FID as `medgen evaluate translation --unpaired` (whole slices, and "
                  "the centred square scanned in every slice)",
                  "in the common field + beyond it: one set's centred square (the common field of view) inside the "
                  "other's slice; in that field the mix is the first set's, so its common-field FID is that set's",
                  "FID's mean term: the squared distance of the mean features (FID minus it: the covariance term); "
                  "spread: the trace of the set's feature covariance over the real slices'; between scans: the part "
                  "of it in which the scans' mean features differ (the rest: between the slices of one scan); all "
                  "three on whole slices",
                  "every set judged in the range the BTCV CTs hold, [-125, 275] HU, beyond the scan their floor"],
        "table": {"columns": ["slices", "FID", "FID (judge)", "FID, common field of view",
                              "FID (judge), common field of view", "FID's mean term", "FID's mean term (judge)",
                              "spread", "spread (judge)", "spread between scans", "spread between scans (judge)"],
                  "rows": rows}})
    for row in rows:
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
