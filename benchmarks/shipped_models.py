"""Train the models that ship inside the package (``ct-liver``, ``mri-liver``) and write them with their cards.

The one command that made every shipped weight file (slow: about an hour on 2 CPU cores for both):

    python benchmarks/shipped_models.py [--data ../shared/data/real/abdomen_uda_dev] [--work DIR]
                                        [--only train,export] [--models ct-liver,mri-liver]
    python benchmarks/shipped_models.py --models mri-liver-2d --only train   (the 2D network it is measured against)

- training data: the BTCV CTs ``btcv_0`` .. ``btcv_24`` with their manual labels (liver = 6); ``btcv_25`` ..
  ``btcv_29`` are held out for the CT figures of the cards. No MRI is read: the weights carry the CT data's
  terms alone (BTCV/Synapse: research use).
- ``mri-liver``: ``segmenter_liver_any_contrast.yaml`` (label -> image synthesis, any contrast);
- ``ct-liver``: ``segmenter_ct_liver_2d.yaml`` (real CT only).

Each model is an ordinary ``medgen train`` run in ``--work``; ``export`` copies its weight average into
``medgen/models/weights/<name>/`` (``config.yaml``, ``checkpoints/``, ``card.json`` with the sha256 checked at
load).
The card's measured figures come from ``benchmarks/shipped_eval.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgen.models.run import run_finished
from medgen.models.shipped_export import export_run

from real_liver import ct_datalist, medgen

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CTS = list(range(25))
HELD_OUT_CTS = list(range(25, 30))
MODELS = {
    "mri-liver": ("segmenter_liver_any_contrast.yaml", ["train.iterations=4600"]),
    "ct-liver": ("segmenter_ct_liver_2d.yaml", ["train.iterations=3000"]),
}
# Candidates measured against a shipped model at the same CPU time (trained with --models NAME; never exported).
# mri-liver-2d: the plain 2D network that shipped first (one slice, 2 mm in-plane, the volumes' own slices). The
# shipped mri-liver is 2.5D (network.slices=3 at 6 mm slices): its iterations cost more (three slices painted and
# augmented a sample), so it gets 4600 to the 2D network's 6000; both runs' training minutes are in the record of
# `shipped_eval.py --only architecture`.
VARIANTS = {
    "mri-liver-2d": ("segmenter_liver_any_contrast.yaml",
                     ["train.iterations=6000", "network.slices=1", "preprocess.spacing=[2.0, 2.0, null]"]),
}
COMMON = {
    "training_data": "BTCV abdominal CTs btcv_0 .. btcv_24 (25 portal-venous CTs, Synapse multi-organ challenge) with "
                     "their manual labels (liver = 6); no MRI. btcv_25 .. btcv_29 held out for the CT figures.",
    "terms": "The weights derive from BTCV (Synapse) data, released for research use: research use only, not for "
             "clinical decisions. The code is Apache-2.0.",
}
CARDS = {
    "mri-liver": {
        "summary": "contrast-agnostic liver segmenter (2.5D, axial slices with their neighbours): MRI of any weighting, "
                   "and CT",
        "intended_use": "Liver masks on abdominal MRI (T1, T2, in/opposed phase) and CT with no training: "
                        "`medgen segment IN OUT --modality mri`; the starting point of `medgen fit mri-liver`.",
        "method": "Label -> image synthesis (SynthSeg-style): 80 % of the training slices are painted with a random "
                  "contrast per structure from the CT label maps, with blur, bias field, resolution and noise "
                  "changes, rotation, scaling and smooth deformation; the network learns the liver's shape and "
                  "context, not its intensity. Inference on MRI: N4 bias correction, the 0.5-99.5 percentile "
                  "range into [-1, 1].",
        "failure_modes": [
            "trained on CT anatomy only: MRI-specific appearances (fat suppression failures, strong motion, "
            "susceptibility artefacts) are not modelled",
            "2.5D (each axial slice with its neighbours 6 mm away): the lowest slices of the liver (Dice about 0.5 "
            "there on the development MRIs), the left lobe against the stomach and the medial liver by the IVC are "
            "where masks go wrong most",
            "the training CTs' intensities were clipped to [-125, 275] HU",
            "adult abdomens only; no pathology beyond what 25 BTCV CTs show",
        ],
    },
    "ct-liver": {
        "summary": "CT liver segmenter (2D, axial), real CT only",
        "intended_use": "Liver masks on portal-venous abdominal CT (`medgen segment ct.nii.gz liver.nii.gz`); the "
                        "frozen CT segmenter behind `medgen fit mri-liver --segmenter ct-liver` (MRI -> synthetic "
                        "CT -> this model).",
        "method": "Supervised on real CT slices in the abdominal window [-175, 250] HU, with intensity, rotation and "
                  "scaling augmentation.",
        "failure_modes": [
            "not for MRI directly: on an MRI it finds the liver poorly (see its figures); use mri-liver",
            "trained on portal-venous CTs whose intensities were clipped to [-125, 275] HU: other phases, "
            "non-contrast CT and metal artefacts are untested",
            "2D axial slices at 2 mm in-plane: very thick slices or unusual fields of view may cut the dome",
        ],
    },
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real" / "abdomen_uda_dev"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "shipped"))
    p.add_argument("--only", default="train,export")
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    if not (data / "PROVENANCE.md").is_file():
        print(f"shipped_models: skipped: the development set is not at {data}")
        return 0
    steps, names = set(args.only.split(",")), args.models.split(",")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    listing = ct_datalist(data, TRAIN_CTS, work / "ct_train.json")
    for name in names:
        config, sets = {**MODELS, **VARIANTS}[name]
        run = work / name
        if "train" in steps:
            if not run_finished(run):
                secs = medgen("train", config, "--out", str(run), "--set", f"data.images={listing}",
                              "--set", f"data.labels={listing}", "--set", "data.label_map={6: 1}",
                              *(a for s in sets for a in ("--set", s)), log=log)
                (work / f"{name}.train_s").write_text(f"{secs:.0f}\n")
        if "export" in steps and name in MODELS:
            command = (f"python benchmarks/shipped_models.py --models {name} (medgen train {config} --set "
                       f"data.images=BTCV[{TRAIN_CTS[0]}..{TRAIN_CTS[-1]}] --set data.label_map={{6: 1}} "
                       + " ".join(f"--set {s}" for s in sets) + ")")
            export_run(run, name, command=command, **COMMON, **CARDS[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
