"""`make demo` / `medgen demo OUT`: the whole job on the embedded phantoms, with figures printed.

1. 20 phantom cases, the last 6 held out (``OUT/phantoms``);
2. the demo CycleGAN (``configs/demo_cyclegan_2d.yaml``) trained on the 14 others, unpaired;
3. held-out MRIs translated to CT and scored against their CTs beside the identity baseline;
4. the demo CT liver segmenter (``configs/demo_segmenter_ct_liver.yaml``) trained on phantom CTs, half
   of its patches cycled CT -> MRI -> CT through the demo translator (labels kept);
5. the MRI liver pipeline and its direct baseline on the held-out MRIs, with Dice against the labels;
6. a joint image+label VAE (``configs/demo_vae_2d.yaml``) trained on the training phantoms, a few samples
   written with ``medgen synth`` and scored (FID/KID on the segmenter's features, diversity, plausibility);
7. an HTML report with figures (``OUT/report.html``).

Every stage reuses what an earlier run left in OUT, so an interrupted demo continues.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medgen.engines.train import train_or_reuse
from medgen.evaluation.report import write_demo_report
from medgen.evaluation.synthesis import evaluate_synthesis, write_synthesis_report
from medgen.inference.pipeline import PipelineOptions, run_pipeline
from medgen.inference.synthesize import write_synthetic
from medgen.inference.translate import load_translator
from medgen.metrics import evaluate_pairs, mean_rows
from medgen.phantoms import write_dataset

CASES, TEST = 20, 6


def _phantoms(out: Path, cases: int, test: int, shape=None, spacing=None) -> dict:
    if (out / "dataset.json").exists():
        info = json.loads((out / "dataset.json").read_text())
        if len(info["cases"]) == cases and len(info.get("test", [])) == test:
            print(f"[demo] reusing phantoms in {out}")
            return info
    extra = {} if shape is None else {"shape": shape, "spacing": spacing}
    info = write_dataset(out, cases, seed=0, overwrite=True, test=test, **extra)
    print(f"[demo] wrote {cases} phantom cases to {out} in {info['seconds']:.1f} s ({test} held out)")
    return info


def _train(config: str, run: Path, sets: list[str]) -> float:
    return train_or_reuse(config, run, sets, replace=True, tag="demo")


def run_demo(out: str | Path, quick: bool = False) -> dict:
    """Run every stage of medgen on phantoms; returns the headline figures."""
    out = Path(out)
    ds = out / "phantoms" / "dataset.json"
    if quick:  # the wiring in about a minute: small phantoms, a few iterations
        _phantoms(out / "phantoms", 8, 3, (64, 64, 32), (6.0, 6.0, 6.0))
    else:
        _phantoms(out / "phantoms", CASES, TEST)
    data = [f"data.mri={ds}#training", f"data.ct={ds}#training", f"data.val_mri={ds}#test", f"data.val_ct={ds}#test"]
    seg_data = [f"data.images={ds}#training", f"data.labels={ds}#training", f"data.val_images={ds}#test",
                f"data.val_labels={ds}#test", f"augment.translator={out / 'runs' / 'cyclegan'}"]
    if quick:
        data += ["train.iterations=20", "preprocess.spacing=null", "data.patch_size=[64, 64]"]
        seg_data += ["train.iterations=20", "preprocess.spacing=null", "data.patch_size=[64, 64]"]
    figures: dict = {}

    seconds = _train("demo_cyclegan_2d.yaml", out / "runs" / "cyclegan", data)
    if seconds:
        figures["cyclegan_train_seconds"] = round(seconds, 1)
        print(f"[demo] CycleGAN trained in {seconds / 60:.1f} min")
    info = json.loads(ds.read_text())
    root = ds.parent
    pairs = [(root / c["mri"], root / c["ct"]) for c in info["test"]]
    translator = load_translator(out / "runs" / "cyclegan")
    rows = evaluate_pairs(lambda mri, ref: translator.translate(mri, ref)[0], pairs, translator.identity)
    means = mean_rows(rows)
    figures["translation"] = means
    print(f"[demo] held-out MRI -> CT ({len(rows)} cases), inside the body: MAE {means['mae']:.1f} HU, "
          f"PSNR {means['psnr']:.2f} dB, SSIM {means['ssim']:.3f}; identity baseline (MRI rescaled into the "
          f"training CTs' range): MAE {means['identity_mae']:.1f} HU, PSNR {means['identity_psnr']:.2f} dB, "
          f"SSIM {means['identity_ssim']:.3f}")

    _train("demo_segmenter_ct_liver.yaml", out / "runs" / "segmenter", seg_data)
    test_mri = out / "test_mri"
    test_mri.mkdir(exist_ok=True)
    for c in info["test"]:
        link = test_mri / Path(c["mri"]).name
        if not link.exists():
            link.symlink_to((root / c["mri"]).resolve())
    summary, failed = run_pipeline(out / "runs" / "cyclegan", out / "runs" / "segmenter", test_mri, out / "liver",
                                   options=PipelineOptions(save_sct=True, baseline=True), truth=root / "labels")
    ok = [r for r in summary if r["status"] == "ok"]
    figures["pipeline_dice"] = float(np.mean([r["dice"] for r in ok]))
    figures["baseline_dice"] = float(np.mean([r["baseline_dice"] for r in ok]))
    print(f"[demo] MRI liver pipeline on {len(ok)} held-out MRIs: mean liver Dice {figures['pipeline_dice']:.4f} "
          f"(direct baseline, segmenter on the MRI itself: {figures['baseline_dice']:.4f}); masks in {out / 'liver'}")

    synth_data = [f"data.images={ds}#training", f"data.labels={ds}#training"]
    if quick:
        synth_data += ["train.iterations=20", "preprocess.spacing=null"]
    _train("demo_vae_2d.yaml", out / "runs" / "vae", synth_data)
    write_synthetic(out / "runs" / "vae", out / "synthetic", 8, seed=0, overwrite=True)
    synthesis = evaluate_synthesis(out / "runs" / "vae", out / "runs" / "segmenter", n=64 if quick else 200)
    write_synthesis_report(synthesis, out / "synthesis", out / "runs" / "vae")
    figures["synthesis"] = synthesis
    print(f"[demo] VAE synthesizer: 8 image+label pairs in {out / 'synthetic'}; FID {synthesis['fid']:.3f}, "
          f"KID {synthesis['kid']:.4f}, MS-SSIM {synthesis['ms_ssim_synthetic']:.3f} (real "
          f"{synthesis['ms_ssim_real']:.3f}), single plausible liver in "
          f"{synthesis['class_1']['plausible_fraction']:.0%} of samples")

    report = write_demo_report(out, rows, summary, figures)
    print(f"[demo] report: {report}")
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures
