"""Does synthetic data help my segmenter? Real-only vs real + synthetic, same seeds, same budget, repeats.

For each repeat r: draw k labelled training cases (seed r); train the synthesizer on those k cases only;
sample synthetic pairs; train the segmenter on the k cases alone and again with the synthetic pairs mixed
in at ``ratio`` (same config, seed and iterations); score both on the held-out set (liver Dice after
post-processing). The report gives per-repeat Dice and mean +- sd of both arms and of the gain.

With ``reference=True`` a third arm trains on every labelled training case (same seed and budget): the
gain that more *real* data buys, the yardstick for the synthetic gain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from medgen.data.datalist import image_label_pairs
from medgen.data.volumes import remap_labels
from medgen.engines.train import train as train_run
from medgen.errors import MedgenError
from medgen.inference.segment import RunSegmenter, postprocess
from medgen.inference.synthesize import write_synthetic
from medgen.io import atomic_write, load_image
from medgen.metrics import segmentation_metrics
from medgen.models.registry import load_config
from medgen.models.run import CONFIG_FILE


def _subset_datalist(pairs, k: int, seed: int, path: Path) -> Path:
    if k > len(pairs):
        raise MedgenError(path, f"k={k} exceeds the {len(pairs)} labelled training cases")
    chosen = np.random.default_rng(seed).choice(len(pairs), k, replace=False)
    entries = [{"image": str(Path(pairs[i][0]).resolve()), "label": str(Path(pairs[i][1]).resolve())}
               for i in sorted(chosen)]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"training": entries}, indent=2)))
    return path


def held_out_dice(seg_run: Path, test_pairs, label_map) -> list[float]:
    """Liver Dice of a segmenter run on each held-out pair (post-processed like ``medgen segment``)."""
    seg = RunSegmenter(seg_run, "auto")
    scores = []
    for image_path, label_path in test_pairs:
        image, ref = load_image(image_path)
        truth = remap_labels(load_image(label_path)[0], label_map) == 1
        mask = postprocess(seg.predict(image, ref), seg.postprocess) > 0
        scores.append(segmentation_metrics(mask, truth, ref.spacing, False)["dice"])
    return scores


def augmentation_experiment(seg_config: str | Path, synth_config: str | Path, train: tuple[str, str],
                            test: tuple[str, str], out: str | Path, k: int = 2, repeats: int = 3, ratio: float = 0.5,
                            synthetic: int = 200, seg_sets: list[str] = (), synth_sets: list[str] = (),
                            reference: bool = False) -> dict:
    """Run the experiment into ``out``; returns (and writes ``augmentation.json``) the report.

    ``train``/``test``: (images, labels) sources as in configs (folders or datalist JSONs; for one JSON
    holding both, give it twice).
    """
    out = Path(out)
    pairs, test_pairs = image_label_pairs(*train), image_label_pairs(*test)
    label_map = load_config(seg_config, list(seg_sets)).data.label_map
    rows, t0 = [], time.perf_counter()
    for r in range(repeats):
        rep = out / f"repeat_{r}"
        subset = str(_subset_datalist(pairs, k, r, rep / "train.json"))
        data = [f"data.images={subset}", f"data.labels={subset}", f"train.seed={r}"]
        synth_run = rep / "synthesizer"
        if not (synth_run / CONFIG_FILE).exists():
            train_run(synth_config, synth_run, [*data, *synth_sets])
        if not (rep / "synthetic" / "dataset.json").exists():
            write_synthetic(synth_run, rep / "synthetic", synthetic, seed=r)
        seg = [*data, "data.val_images=null", "data.val_labels=null", *seg_sets]
        arms = {"real": [], "real_synthetic": [f"augment.synthetic.source={rep / 'synthetic'}",
                                                 f"augment.synthetic.ratio={ratio}"]}
        if reference:
            everything = str(_subset_datalist(pairs, len(pairs), r, rep / "train_all.json"))
            arms["real_all"] = [f"data.images={everything}", f"data.labels={everything}"]
        row = {"repeat": r, "cases": k}
        for arm, extra in arms.items():
            run = rep / f"segmenter_{arm}"
            if not (run / CONFIG_FILE).exists():
                train_run(seg_config, run, [*seg, *extra])
            row[f"dice_{arm}"] = float(np.mean(held_out_dice(run, test_pairs, label_map)))
        row["gain"] = row["dice_real_synthetic"] - row["dice_real"]
        if reference:
            row["gain_real_all"] = row["dice_real_all"] - row["dice_real"]
        rows.append(row)
        print(f"[augmentation] repeat {r}: Dice real-only {row['dice_real']:.4f}, "
              f"real+synthetic {row['dice_real_synthetic']:.4f}, gain {row['gain']:+.4f}"
              + (f"; all {len(pairs)} real cases {row['dice_real_all']:.4f}" if reference else ""), flush=True)
    report = {"k": k, "repeats": repeats, "ratio": ratio, "synthetic_pairs": synthetic, "test_cases": len(test_pairs),
              "training_pool": len(pairs),
              "segmenter_config": str(seg_config), "synthesizer_config": str(synth_config), "rows": rows,
              "minutes": round((time.perf_counter() - t0) / 60, 1)}
    for key in ("dice_real", "dice_real_synthetic", "gain", "dice_real_all", "gain_real_all"):
        values = [row[key] for row in rows if key in row]
        if not values:
            continue
        report[f"{key}_mean"], report[f"{key}_sd"] = float(np.mean(values)), float(np.std(values))
    atomic_write(out / "augmentation.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    return report
