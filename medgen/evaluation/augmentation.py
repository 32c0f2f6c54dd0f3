"""Does synthetic data help my segmenter? Real-only vs real + synthetic, same seeds, same budget, repeats.

For each repeat r: draw k labelled training cases (seed r; another subset than the earlier repeats' while one
remains); make synthetic pairs from those k cases only;
train the segmenter on the k cases alone and again with the synthetic pairs mixed in at ``ratio`` (same
config, seed and iterations); score both on the held-out set (liver Dice after post-processing), or, without
one, on the pool's cases not drawn in that repeat. The report gives per-repeat Dice and mean +- sd of both
arms and of the gain. The synthetic pairs come from either

- a synthesizer config (VAE, GAN): trained on the k cases, then ``synthetic`` pairs sampled once;
- a ``label2image`` config with ``label_config`` (a VAE/GAN config of label maps): both trained on the k cases,
  the label2image run rendering the label-map synthesizer's maps (new anatomy, sharp images); or
- ``synth_config="synthseg"``: label -> image synthesis on the fly from the k cases' label maps
  (``augment.synthseg.prob = ratio``; ``synth_sets`` are then segmenter overrides of that arm, e.g. the
  generative model's deformation ``augment.deform=0.1``).

With ``judge_dice`` the written pairs are judged by the repeat's real-only segmenter (trained first): only those
whose label it agrees with at Dice >= ``judge_dice`` are kept (:func:`medgen.inference.synthesize.judged_pairs`).

With ``reference=True`` a third arm trains on every labelled training case (same seed and budget): the
gain that more *real* data buys, the yardstick for the synthetic gain.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from medgen.data.datalist import image_label_pairs
from medgen.data.volumes import remap_labels
from medgen.engines.train import train_or_reuse
from medgen.errors import MedgenError
from medgen.inference.segment import RunSegmenter, postprocess
from medgen.inference.synthesize import write_synthetic
from medgen.inference.synthesizers import SYNTHESIZERS
from medgen.io import atomic_write, load_image
from medgen.metrics import segmentation_metrics
from medgen.models.registry import load_config


def draw_subsets(n: int, k: int, repeats: int) -> list[list[int]]:
    """The k cases (indices of ``n``) of each repeat: drawn with seed r, redrawn (up to 100 times) while another
    repeat already has that subset, so that repeats differ in their data whenever enough subsets exist.

    >>> draw_subsets(4, 1, 3), draw_subsets(4, 4, 2)
    ([[3], [1], [0]], [[0, 1, 2, 3], [0, 1, 2, 3]])
    """
    used, out = set(), []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        for _ in range(100):
            chosen = tuple(sorted(int(i) for i in rng.choice(n, k, replace=False)))
            if chosen not in used:
                break
        used.add(chosen)
        out.append(list(chosen))
    return out


def _subset_datalist(pairs, chosen: list[int], path: Path) -> Path:
    entries = [{"image": str(Path(pairs[i][0]).resolve()), "label": str(Path(pairs[i][1]).resolve())} for i in chosen]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"training": entries}, indent=2)))
    return path


def _synthesize(synth_config, rep: Path, data: list[str], synth_sets, n: int, seed: int,
                label_config=None, label_sets=(), judge: Path | None = None, min_dice: float = 0.0) -> Path:
    """A synthesizer trained on the repeat's cases (``data``), and ``n`` pairs sampled from it (all reused); with
    ``label_config``, a label-map synthesizer trained on them first, whose maps the (label2image) synthesizer
    renders; with ``judge``, only the pairs that segmenter agrees with at Dice >= ``min_dice``."""
    synth_run = rep / "synthesizer"
    if label_config is not None:
        label_run = rep / "label_synthesizer"
        train_or_reuse(label_config, label_run, [*data, *label_sets], replace=True)
        synth_sets = [*synth_sets, f"labels={label_run}"]
    if train_or_reuse(synth_config, synth_run, [*data, *synth_sets], replace=True) and (rep / "synthetic").exists():
        shutil.rmtree(rep / "synthetic")  # pairs of an earlier synthesizer
    if not (rep / "synthetic" / "dataset.json").exists():
        write_synthetic(synth_run, rep / "synthetic", n, seed=seed, judge=judge, min_dice=min_dice)
    return rep / "synthetic"


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


SYNTHSEG = "synthseg"


def augmentation_experiment(seg_config: str | Path, synth_config: str | Path, train: tuple[str, str],
                            test: tuple[str, str] | None, out: str | Path, k: int = 2, repeats: int = 3, ratio: float = 0.5,
                            synthetic: int = 200, seg_sets: list[str] = (), synth_sets: list[str] = (),
                            reference: bool = False, label_config: str | Path | None = None,
                            label_sets: list[str] = (), judge_dice: float | None = None) -> dict:
    """Run the experiment into ``out``; returns (and writes ``augmentation.json``) the report.

    ``train``/``test``: (images, labels) sources as in configs (folders or datalist JSONs; for one JSON
    holding both, give it twice); ``test`` None: each repeat is scored on the pool's cases it did not draw.
    """
    out = Path(out)
    pairs = image_label_pairs(*train)
    fixed_test = image_label_pairs(*test) if test is not None else None
    if k > len(pairs):
        raise MedgenError(train[0], f"k={k} exceeds the {len(pairs)} labelled training cases")
    if fixed_test is None and k == len(pairs):
        raise MedgenError(train[0], f"k={k} leaves none of the {len(pairs)} cases to test on (give --test-images)")
    if fixed_test is None and reference:
        raise MedgenError(train[0], "the reference arm trains on every case of the pool: it needs a held-out set "
                                    "(--test-images)")
    label_map = load_config(seg_config, list(seg_sets)).data.label_map
    on_the_fly = str(synth_config) == SYNTHSEG
    if judge_dice is not None and (on_the_fly or not 0.0 <= judge_dice <= 1.0):
        raise MedgenError(synth_config, "--judge-dice takes a Dice in [0, 1] and written pairs (not synthseg)")
    if label_config is not None:
        renderer = None if on_the_fly else SYNTHESIZERS.get(load_config(synth_config, list(synth_sets)).task)
        if not getattr(renderer, "renders_label_maps", False):
            raise MedgenError(synth_config, "a label-map synthesizer (--label-config) needs a label2image synthesizer "
                                            "config to render its maps")
        if not getattr(SYNTHESIZERS.get(load_config(label_config, list(label_sets)).task), "label_source", False):
            raise MedgenError(label_config, "the label-map synthesizer must be a VAE or GAN config")
    rows, t0 = [], time.perf_counter()
    for r, chosen in enumerate(draw_subsets(len(pairs), k, repeats)):
        rep = out / f"repeat_{r}"
        subset = str(_subset_datalist(pairs, chosen, rep / "train.json"))
        data = [f"data.images={subset}", f"data.labels={subset}", f"train.seed={r}"]
        seg = [*data, "data.val_images=null", "data.val_labels=null", *seg_sets]

        def trained(arm: str, extra: list[str]) -> Path:
            run = rep / f"segmenter_{arm}"
            train_or_reuse(seg_config, run, [*seg, *extra], replace=True)
            return run

        real_run = trained("real", [])  # first: it judges the pairs with judge_dice
        if on_the_fly:
            synthetic_arm = [f"augment.synthseg.prob={ratio}", *synth_sets]
        else:
            pairs_dir = _synthesize(synth_config, rep, data, synth_sets, synthetic, r, label_config, label_sets,
                                    None if judge_dice is None else real_run, judge_dice or 0.0)
            synthetic_arm = [f"augment.synthetic.source={pairs_dir}", f"augment.synthetic.ratio={ratio}"]
        arms = {"real": [], "real_synthetic": synthetic_arm}
        if reference:
            everything = str(_subset_datalist(pairs, list(range(len(pairs))), rep / "train_all.json"))
            arms["real_all"] = [f"data.images={everything}", f"data.labels={everything}"]
        test_pairs = fixed_test or [pair for i, pair in enumerate(pairs) if i not in chosen]
        row = {"repeat": r, "cases": k}
        for arm, extra in arms.items():
            row[f"dice_{arm}"] = float(np.mean(held_out_dice(trained(arm, extra), test_pairs, label_map)))
        if judge_dice is not None:
            judged = json.loads((pairs_dir / "dataset.json").read_text())["judge"]
            row["judged"] = {"kept": judged["kept"], "drawn": judged["drawn"]}
        row["test_cases"] = [Path(image).name for image, _ in test_pairs]
        row["gain"] = row["dice_real_synthetic"] - row["dice_real"]
        if reference:
            row["gain_real_all"] = row["dice_real_all"] - row["dice_real"]
        rows.append(row)
        print(f"[augmentation] repeat {r}: Dice real-only {row['dice_real']:.4f}, "
              f"real+synthetic {row['dice_real_synthetic']:.4f}, gain {row['gain']:+.4f}"
              + (f"; all {len(pairs)} real cases {row['dice_real_all']:.4f}" if reference else ""), flush=True)
    report = {"k": k, "repeats": repeats, "ratio": ratio, "synthetic_pairs": "on the fly" if on_the_fly else synthetic,
              "test_cases": len(test_pairs),
              "tested_on": "the held-out set" if fixed_test else "the pool's cases not drawn",
              "training_pool": len(pairs),
              "segmenter_config": str(seg_config), "synthesizer_config": str(synth_config),
              "label_config": None if label_config is None else str(label_config), "judge_dice": judge_dice,
              "rows": rows,
              "minutes": round((time.perf_counter() - t0) / 60, 1)}
    for key in ("dice_real", "dice_real_synthetic", "gain", "dice_real_all", "gain_real_all"):
        values = [row[key] for row in rows if key in row]
        if not values:
            continue
        report[f"{key}_mean"], report[f"{key}_sd"] = float(np.mean(values)), float(np.std(values))
    atomic_write(out / "augmentation.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    return report
