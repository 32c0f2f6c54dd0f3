"""``medgen fit mri-liver``: labelled CTs + unlabelled MRIs -> one model directory the pipeline runs.

Stages, each an ordinary ``medgen train`` run inside ``MODEL/`` (its config, metrics.csv, TensorBoard,
checkpoints), resumable one by one with ``--resume``:

1. ``segmenter/``: the contrast-agnostic liver segmenter (label -> image synthesis on the CTs); skipped
   when the user brings a CT segmenter (``--segmenter``), which is never retrained;
1b. route ``direct`` with ``adapt.iterations`` > 0: ``pseudo/``, that segmenter's masks of the fit's MRIs, and
   ``adapted/``, a copy of it fine-tuned on the CTs mixed with those MRIs and masks (self-training);
2. ``translator/`` (route ``synthct`` only): the MRI -> synthetic CT translator, trained on CTs painted with
   random contrasts and, when the segmenter is a 2D medgen run, through that frozen segmenter;
3. ``qc/``: the pipeline run on the training MRIs (liver volume, flags), a label-free check of the result.

``model.json`` is written last: a model directory without it is unfinished (``--resume`` completes it).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from medgen.config import save_config
from medgen.data.datalist import image_label_pairs, list_volumes
from medgen.engines.train import train
from medgen.errors import MedgenError
from medgen.inference.pipeline import run_pipeline
from medgen.io import atomic_write, case_name, load_image
from medgen.models.fit import FIT_CONFIG, MODEL_FILE, FitConfig, FitModel, load_fit_config, write_model
from medgen.models.registry import load_config
from medgen.models.run import CONFIG_FILE, latest_checkpoint
from medgen.validate import check_same_grid

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = ("cpu", "gpu")


def preset_path(preset: str) -> Path:
    """``cpu`` / ``gpu`` -> ``configs/fit_mri_liver_{preset}.yaml``; anything else is a YAML path."""
    path = CONFIGS / f"fit_mri_liver_{preset}.yaml" if preset in PRESETS else Path(preset)
    if not path.is_file():
        raise MedgenError(path, f"no such fit preset (use {' or '.join(PRESETS)}, or a YAML file)")
    return path


def split_sets(sets: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` items -> (fit keys, {stage: that stage's dotted overrides}): ``segmenter.train.iterations=9``
    goes to the segmenter stage as ``train.iterations=9``; ``route=synthct`` or ``adapt.rounds=0`` stays.

    >>> split_sets(["route=direct", "segmenter.train.iterations=9", "translator.config=x.yaml"])
    (['route=direct', 'translator.config=x.yaml'], {'segmenter': ['train.iterations=9'], 'translator': []})
    """
    own, stages = [], {"segmenter": [], "translator": []}
    for item in sets:
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        if parts[0] in stages and len(parts) > 1 and parts[1] not in ("config", "set"):
            stages[parts[0]].append(item.split(".", 1)[1])
        else:
            own.append(item)
    return own, stages


def _check_inputs(ct: str, ct_labels: str, label_map: dict[int, int], mri: str) -> tuple[list, list[Path]]:
    """Everything that can be wrong with the data, found before anything is written."""
    if not label_map or 1 not in label_map.values():
        raise MedgenError(None, f"--label-map {label_map} maps no source value to the liver class 1 (e.g. 6:1)")
    pairs = image_label_pairs(ct, ct_labels)
    sources = [src for src, dst in label_map.items() if dst == 1]
    for image_path, label_path in pairs:
        _, image_ref = load_image(image_path)
        labels, label_ref = load_image(label_path)
        check_same_grid(image_ref, label_ref)
        if not np.isin(labels, sources).any():
            raise MedgenError(label_path, f"no voxel has the liver value {sources[0]} of --label-map "
                                          f"(values present: {np.unique(labels)[:20].tolist()})")
    mris = list_volumes(mri)
    if not mris:
        raise MedgenError(mri, "no MRI volumes in this folder")
    return pairs, mris


def _finished(run: Path) -> bool:
    """Whether a stage's run holds its final checkpoint."""
    last = latest_checkpoint(run) if (run / CONFIG_FILE).is_file() else None
    if last is None:
        return False
    m = re.search(r"(\d+)\.pt$", last.name)
    return bool(m) and int(m.group(1)) >= load_config(run / CONFIG_FILE).train.iterations


def _trainable_through(spec: str) -> bool:
    """Whether gradients can pass through this segmenter: a 2D medgen segmenter run."""
    config = Path(spec) / CONFIG_FILE
    if not config.is_file():
        return False
    cfg = load_config(config)
    return cfg.task == "segmenter" and cfg.spatial_dims == 2


def _stage(name: str, config: str, run: Path, sets: list[str], resume: bool) -> tuple[Path, float]:
    """Train (or resume, or skip when finished) one stage; returns its run directory and wall time."""
    start = time.time()
    if _finished(run):
        print(f"[medgen fit] {name}: finished earlier ({run})", flush=True)
        return run, 0.0
    path = Path(config) if Path(config).is_absolute() else CONFIGS / config
    again = resume and latest_checkpoint(run) is not None
    print(f"[medgen fit] {name}: {'resuming' if again else 'training'} {path.name} -> {run}", flush=True)
    train(None if again else path, run, sets if not again else [], resume=again)
    return run, time.time() - start


PSEUDO_REFUSED = {"empty_mask", "liver_volume_low", "liver_volume_high"}  # QC flags that keep a case out


def _pseudo_labels(segmenter: Path, mris: list[Path], mri: str, out: Path, cfg: FitConfig) -> Path:
    """The segmenter's masks of the fit's MRIs (a pipeline pass into ``out``) as a datalist JSON of the cases
    whose liver volume is plausible (the pipeline's QC flags); a finished pass is reused (``--resume``)."""
    listing = out / "dataset.json"
    if listing.is_file():
        return listing
    print(f"[medgen fit] pseudo-labels: the segmenter on the {len(mris)} MRIs -> {out}", flush=True)
    rows, _ = run_pipeline(None, str(segmenter), mri, out, cfg.device, 1)
    masks = {r["case"]: r["mask"] for r in rows
             if r["status"] == "ok" and not PSEUDO_REFUSED & set(r["flags"].split(";"))}
    entries = [{"image": str(p.resolve()), "label": str(Path(masks[case_name(p)]).resolve())}
               for p in mris if case_name(p) in masks]
    left = sorted(set(map(case_name, mris)) - {case_name(Path(e["image"])) for e in entries})
    print(f"[medgen fit] pseudo-labels: {len(entries)} of {len(mris)} MRIs kept"
          + (f"; left out ({', '.join(sorted(PSEUDO_REFUSED))} or failed): {', '.join(left)}" if left else ""),
          flush=True)
    text = json.dumps({"training": entries}, indent=2) + "\n"
    return atomic_write(listing, lambda tmp: Path(tmp).write_text(text))


def _adapt(cfg: FitConfig, out: Path, mris: list[Path], mri: str, sets: list[str], resume: bool,
           times: dict) -> str:
    """Self-training: pseudo-labels from ``segmenter/``, then ``adapted/`` trained from its weights on the CTs and
    the pseudo-labelled MRIs; returns the segmenter the model uses (``segmenter`` when no mask was plausible)."""
    listing = _pseudo_labels(out / "segmenter", mris, mri, out / "pseudo", cfg)
    if not json.loads(listing.read_text())["training"]:
        print("[medgen fit] adapted: no MRI has a plausible mask to self-train on; the model keeps the segmenter "
              "as trained", flush=True)
        return "segmenter"
    a = cfg.adapt
    own = [f"train.init={out / 'segmenter'}", f"target.images={listing}", f"target.labels={listing}",
           f"target.ratio={a.ratio}", f"train.iterations={a.iterations}", f"optim.lr={a.lr}"]
    _, times["adapted"] = _stage("adapted", cfg.segmenter.config, out / "adapted", sets + own, resume)
    return "adapted"


def _common_sets(cfg: FitConfig) -> list[str]:
    sets = [f"train.device={cfg.device}", f"train.amp={cfg.amp}"]
    return sets + ([f"train.threads={cfg.threads}"] if cfg.threads > 0 else [])


def fit_mri_liver(ct: str, ct_labels: str, label_map: dict[int, int], mri: str, out: str | Path,
                  preset: str = "cpu", segmenter: str | None = None, sets: list[str] = (),
                  resume: bool = False) -> Path:
    """Train what ``medgen pipeline mri-liver --model OUT`` runs (see the module docstring)."""
    out = Path(out)
    own, stage_sets = split_sets(list(sets))
    saved = out / FIT_CONFIG
    if resume:
        if not saved.is_file():
            raise MedgenError(out, f"nothing to resume: no {FIT_CONFIG} in this model directory")
        cfg = load_fit_config(saved, own)
    else:
        if saved.exists() or (out / MODEL_FILE).exists():
            raise MedgenError(out, "already holds a fit model (use --resume to finish it, or another --out)")
        cfg = load_fit_config(preset_path(preset), own)
        cfg.segmenter.set += stage_sets["segmenter"]
        cfg.translator.set += stage_sets["translator"]
    _, mris = _check_inputs(ct, ct_labels, label_map, mri)
    route = "synthct" if segmenter else cfg.route
    lm = "{" + ", ".join(f"{k}: {v}" for k, v in label_map.items()) + "}"
    data = [f"data.images={ct}", f"data.labels={ct_labels}", f"data.label_map={lm}"]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    times = {}
    seg_spec = segmenter
    if segmenter is None:
        run, times["segmenter"] = _stage("segmenter", cfg.segmenter.config, out / "segmenter",
                                         data + _common_sets(cfg) + cfg.segmenter.set, resume)
        seg_spec = "segmenter"
        if route == "direct" and cfg.adapt.iterations > 0:
            seg_spec = _adapt(cfg, out, mris, mri, data + _common_sets(cfg) + cfg.segmenter.set, resume, times)
    translator = None
    if route == "synthct":
        frozen = str(out / seg_spec) if segmenter is None else str(segmenter)
        if not _trainable_through(frozen):
            print(f"[medgen fit] translator: {frozen} is not a 2D medgen segmenter run; the translator trains "
                  "without the segmentation-consistency loss", flush=True)
            frozen = "null"
        _, times["translator"] = _stage("translator", cfg.translator.config, out / "translator",
                                        data + [f"segmenter={frozen}"] + _common_sets(cfg) + cfg.translator.set,
                                        resume)
        translator = "translator"
    model = FitModel(route, seg_spec, translator, 1 if segmenter is None else None)
    qc_translator = None if translator is None else str(out / translator)
    qc_segmenter = str(out / seg_spec) if segmenter is None else str(segmenter)
    print(f"[medgen fit] qc: the pipeline on the {len(mris)} training MRIs -> {out / 'qc'}", flush=True)
    run_pipeline(qc_translator, qc_segmenter, mri, out / "qc", cfg.device, model.liver_index)
    write_model(out, model)
    if times:
        print("[medgen fit] wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()), flush=True)
    print(f"[medgen fit] model ready: medgen pipeline mri-liver --model {out} MRI OUT", flush=True)
    return out

