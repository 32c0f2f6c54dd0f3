"""``medgen fit mri-liver``: labelled CTs + unlabelled MRIs -> one model directory the pipeline runs.

Stages, each an ordinary ``medgen train`` run inside ``MODEL/`` (its config, metrics.csv, TensorBoard,
checkpoints), resumable one by one with ``--resume``:

1. ``segmenter/``: the contrast-agnostic liver segmenter (label -> image synthesis on the CTs); skipped
   when the user brings a CT segmenter (``--segmenter``), which is never retrained;
   CTs given without ``--ct-labels`` (a frozen segmenter's fit: ``--segmenter``, ``fit mri-ct``) are labelled first by
   that segmenter: ``ct_labels/``, its liver masks of them;
1b. route ``direct`` with ``adapt.iterations`` > 0: ``pseudo/``, that segmenter's masks of the fit's MRIs, and
   ``adapted/``, a copy of it fine-tuned on the CTs mixed with those MRIs and masks (self-training);
2. ``translator/`` (route ``synthct`` only): the MRI -> synthetic CT translator, trained on CTs painted with
   random contrasts and, when the segmenter is a 2D medgen run, through that frozen segmenter, on those CTs and on
   the fit's MRIs pseudo-labelled by the shipped ``mri-liver`` (``pseudo/``; the translator's ``target.ratio``);
2b. ``ct2mri/`` (a preset's ``ct2mri`` stage, ``fit mri-ct``'s): the CT -> MRI translator, a PatchGAN against the
   fit's MRIs and a cycle through the frozen ``translator/``;
2c. ``translator_pairs/`` (``pairs.iterations`` > 0, a ct2mri stage that reads the CT alone): ``translator/`` trained
   on from its weights, some CT samples' inputs now the CT rendered by ``ct2mri/`` (synthetic pairs, each rendered
   structure at a random gain); it is then the model's translator;
3. ``qc/``: the pipeline run on the training MRIs (liver volume, flags), a label-free check of the result.

``model.json`` is written last: a model directory without it is unfinished (``--resume`` completes it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from medgen.config import config_path, save_config
from medgen.data.datalist import image_label_pairs, list_volumes
from medgen.engines.train import train_or_reuse
from medgen.errors import MedgenError
from medgen.inference.pipeline import run_pipeline
from medgen.inference.segment import load_segmenter, segment_file
from medgen.io import atomic_write, case_name, load_image
from medgen.models.fit_model import FIT_CONFIG, MODEL_FILE, FitConfig, FitModel, load_fit_config, write_model
from medgen.models.registry import load_config
from medgen.models.run import CONFIG_FILE, latest_checkpoint
from medgen.models.shipped import SHIPPED, resolve_model
from medgen.validate import check_label_values, check_same_grid, check_volume

PRESETS = ("cpu", "gpu")


def preset_path(preset: str, pipeline: str = "mri-liver") -> Path:
    """``cpu`` / ``gpu`` -> ``configs/fit_{pipeline}_{preset}.yaml`` (``fit_mri_liver_cpu.yaml``); anything else is a
    YAML path."""
    name = f"fit_{pipeline.replace('-', '_')}_{preset}.yaml"
    path = config_path(name) if preset in PRESETS else Path(preset)
    if not path.is_file():
        raise MedgenError(path, f"no such fit preset (use {' or '.join(PRESETS)}, or a YAML file)")
    return path


def split_sets(sets: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` items -> (fit keys, {stage: that stage's dotted overrides}): ``segmenter.train.iterations=9``
    goes to the segmenter stage as ``train.iterations=9``; ``route=synthct`` or ``adapt.rounds=0`` stays.

    >>> split_sets(["route=direct", "segmenter.train.iterations=9", "translator.config=x.yaml"])[1]["segmenter"]
    ['train.iterations=9']
    """
    own, stages = [], {"segmenter": [], "translator": [], "ct2mri": []}
    for item in sets:
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        if parts[0] in stages and len(parts) > 1 and parts[1] not in ("config", "set"):
            stages[parts[0]].append(item.split(".", 1)[1])
        else:
            own.append(item)
    return own, stages


def _check_inputs(ct: str | None, ct_labels: str | None, label_map: dict[int, int] | None, mri: str,
                  segmenter: str | None = None) -> list[Path]:
    """Everything that can be wrong with the data, found before anything is written; returns the MRIs. CTs without
    labels are allowed with a frozen ``segmenter`` (its masks of them become their labels)."""
    if label_map and not ct_labels:
        raise MedgenError(None, "--label-map maps the values of --ct-labels; give both, or neither")
    if ct is not None and not ct_labels and segmenter is None:
        raise MedgenError(ct, "--ct needs --ct-labels (and --label-map), or --segmenter to label them")
    if Path(mri).is_file() and Path(mri).suffix.lower() != ".json":
        raise MedgenError(mri, "--mri must be a folder of MRIs or a datalist JSON (the fit adapts to several)")
    mris = list_volumes(mri)
    if not mris:
        raise MedgenError(mri, "no MRI volumes in this folder")
    for path in mris:  # every MRI readable, 3D, non-degenerate and non-constant, before anything is trained
        check_volume(load_image(path)[0], path)
    if ct is None:
        return mris
    if not ct_labels:
        for path in list_volumes(ct):
            check_volume(load_image(path)[0], path)
        return mris
    if not label_map or 1 not in label_map.values():
        raise MedgenError(None, f"--label-map {label_map} maps no source value to the liver class 1 (e.g. 6:1)")
    pairs = image_label_pairs(ct, ct_labels)
    sources = [src for src, dst in label_map.items() if dst == 1]
    for image_path, label_path in pairs:
        _, image_ref = load_image(image_path)
        labels, label_ref = load_image(label_path)
        check_same_grid(image_ref, label_ref)
        check_label_values(labels, label_path)
        if not np.isin(labels, sources).any():
            raise MedgenError(label_path, f"no voxel has the liver value {sources[0]} of --label-map "
                                          f"(values present: {np.unique(labels)[:20].tolist()})")
    return mris


def _trainable_through(spec: str) -> bool:
    """Whether gradients can pass through this segmenter: a 2D (one-slice) medgen segmenter run (or shipped model)."""
    config = Path(resolve_model(spec)) / CONFIG_FILE
    if not config.is_file():
        return False
    cfg = load_config(config)
    return cfg.task == "segmenter" and cfg.spatial_dims == 2 and cfg.network.slices == 1


def _stage(name: str, config: str, run: Path, sets: list[str]) -> tuple[Path, float]:
    """Train (or resume, or skip when finished) one stage; returns its run directory and wall time."""
    print(f"[medgen fit] {name}: {config_path(config).name} -> {run}", flush=True)
    return run, train_or_reuse(config, run, sets, tag=f"medgen fit] [{name}")


PSEUDO_REFUSED = {"empty_mask", "liver_volume_low", "liver_volume_high"}  # QC flags that keep a case out
PSEUDO_LABELLER = "mri-liver"  # route synthct: the MRIs' pseudo-labels for the translator
# route synthct with start: scratch: the translator trains through its segmenter slice by slice, so that segmenter is
# the 2D network (one slice, the slices as scanned), not the shipped config's 2.5D one
SLICEWISE = ["network.slices=1", "preprocess.spacing=[2.0, 2.0, null]"]


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


def _ct_pseudo_labels(segmenter: str, ct: str, out: Path, device: str) -> Path:
    """The frozen CT segmenter's liver masks of the fit's CTs (``out/CASE.nii.gz``), as a datalist JSON of the CTs
    with a non-empty mask: the labels of a fit given CTs without ``--ct-labels`` (the translator paints the liver and
    the body's intensity classes; the liver class is 1). A finished pass is reused (``--resume``)."""
    listing = out / "dataset.json"
    if listing.is_file():
        return listing
    cts = list_volumes(ct)
    print(f"[medgen fit] CT labels: {segmenter} on the {len(cts)} CTs -> {out}", flush=True)
    seg = load_segmenter(segmenter, device)
    entries = []
    for path in cts:
        _, _, mask, dst = segment_file(seg, path, out / f"{case_name(path)}.nii.gz", overwrite=True)
        if mask.any():
            entries.append({"image": str(path.resolve()), "label": str(dst.resolve())})
    if not entries:
        raise MedgenError(ct, f"{segmenter} finds no liver in any of these CTs: give --ct-labels")
    print(f"[medgen fit] CT labels: {len(entries)} of {len(cts)} CTs have a liver mask", flush=True)
    text = json.dumps({"training": entries}, indent=2) + "\n"
    return atomic_write(listing, lambda tmp: Path(tmp).write_text(text))


def _adapt(cfg: FitConfig, out: Path, base: str, mris: list[Path], mri: str, sets: list[str], has_ct: bool,
           times: dict) -> str:
    """Self-training: pseudo-labels from segmenter ``base`` (a run or a shipped model), then ``adapted/`` trained from
    its weights on the CTs and the pseudo-labelled MRIs (on those MRIs when ``has_ct`` is false); returns the
    segmenter the model uses (``base`` when no mask was plausible)."""
    source = resolve_model(base) if base in SHIPPED else out / base
    listing = _pseudo_labels(source, mris, mri, out / "pseudo", cfg)
    if not json.loads(listing.read_text())["training"]:
        print("[medgen fit] adapted: no MRI has a plausible mask to self-train on; the model keeps the segmenter "
              "as it is", flush=True)
        return base
    a = cfg.adapt
    ratio = a.ratio
    if not has_ct:  # no CT: the MRIs alone, or (paint) their anatomy painted as well, in place of the CTs
        ratio = a.ratio if a.paint else 1.0
        if a.paint:
            sets = [*sets, f"data.images={listing}", f"data.labels={listing}", "data.modality=mri",
                    "data.label_map={1: 1}"]
    own = [f"train.init={source}", f"target.images={listing}", f"target.labels={listing}", f"target.ratio={ratio}",
           f"train.iterations={a.iterations}", f"optim.lr={a.lr}"]
    _, times["adapted"] = _stage("adapted", cfg.segmenter.config, out / "adapted", sets + own)
    return "adapted"


NO_CT = ('data.images=""', 'data.labels=""')  # a stage's data when the fit has no CT (the MRIs alone)


def _keep_segmenter(spec: str, out: Path) -> str:
    """The user's frozen segmenter copied into the model folder (``model.json`` names only what is inside it),
    as a name relative to it; a shipped model's name stays as it is. A medgen run keeps its latest checkpoint
    only; a TorchScript file its sidecar."""
    if spec in SHIPPED:
        return spec
    src = Path(spec)
    dst = out / "user_segmenter" / src.name
    if dst.exists():  # --resume
        return str(dst.relative_to(out))
    if src.is_dir():
        last = latest_checkpoint(src)

        def ignore(folder: str, names: list[str]) -> list[str]:
            if Path(folder) == src:
                return [n for n in names if n == "tb"]
            return [n for n in names if last is not None and Path(folder) == last.parent and n != last.name]

        shutil.copytree(src, dst, ignore=ignore)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        for f in [src, *(src.with_suffix(x) for x in (".json", ".yaml", ".yml"))]:
            if f.is_file():
                shutil.copy2(f, dst.parent / f.name)
    return str(dst.relative_to(out))


def _common_sets(cfg: FitConfig) -> list[str]:
    sets = [f"train.device={cfg.device}", f"train.amp={cfg.amp}"]
    return sets + ([f"train.threads={cfg.threads}"] if cfg.threads > 0 else [])


def fit_mri_liver(ct: str | None, ct_labels: str | None, label_map: dict[int, int] | None, mri: str,
                  out: str | Path, preset: str = "cpu", segmenter: str | None = None, sets: list[str] = (),
                  resume: bool = False, pipeline: str = "mri-liver") -> Path:
    """Train what ``medgen pipeline mri-liver --model OUT`` runs (see the module docstring). Without CTs the fit
    adapts the shipped ``mri-liver`` (the preset's ``start``) to the MRIs alone.

    ``pipeline`` ``mri-ct`` (``medgen fit mri-ct``): the synthct route's stages with the ``fit_mri_ct_*`` presets and
    the shipped ``ct-liver`` as the frozen segmenter by default; its product is the translator
    (``medgen translate OUT``), trained on the painted CTs and on the fit's MRIs, and the model also runs the pipeline.
    """
    out = Path(out)
    if pipeline == "mri-ct":
        segmenter = segmenter or "ct-liver"
    own, stage_sets = split_sets(list(sets))
    saved = out / FIT_CONFIG
    if resume:
        if not saved.is_file():
            raise MedgenError(out, f"nothing to resume: no {FIT_CONFIG} in this model directory")
        cfg = load_fit_config(saved, own)
    else:
        if saved.exists() or (out / MODEL_FILE).exists():
            raise MedgenError(out, "already holds a fit model (use --resume to finish it, or another --out)")
        cfg = load_fit_config(preset_path(preset, pipeline), own)
        cfg.segmenter.set += stage_sets["segmenter"]
        cfg.translator.set += stage_sets["translator"]
        cfg.ct2mri.set += stage_sets["ct2mri"]
    if ct is None and (segmenter or cfg.start == "scratch"):
        raise MedgenError(None, "--ct is needed "
                          + ("by fit mri-ct: its translator learns the CT from CTs" if pipeline == "mri-ct"
                             else "with --segmenter: its MRI -> synthetic CT translator is trained on CTs" if segmenter
                             else "with start: scratch (the segmenter is trained on them)"))
    mris = _check_inputs(ct, ct_labels, label_map, mri, segmenter)
    if segmenter is not None:  # the user's segmenter loads (or fails in one line) before anything is trained
        load_segmenter(segmenter, "cpu")
    route = "synthct" if segmenter else cfg.route
    data = list(NO_CT)
    if ct is not None and ct_labels:
        lm = "{" + ", ".join(f"{k}: {v}" for k, v in label_map.items()) + "}"
        data = [f"data.images={ct}", f"data.labels={ct_labels}", f"data.label_map={lm}"]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    times = {}
    seg_spec = None if segmenter is None else _keep_segmenter(segmenter, out)
    if segmenter is None:
        seg_spec = cfg.start
        if cfg.start == "scratch":
            slicewise = SLICEWISE if route == "synthct" else []
            _, times["segmenter"] = _stage("segmenter", cfg.segmenter.config, out / "segmenter",
                                           data + _common_sets(cfg) + slicewise + cfg.segmenter.set)
            seg_spec = "segmenter"
        if route == "direct" and cfg.adapt.iterations > 0:
            seg_spec = _adapt(cfg, out, seg_spec, mris, mri, data + _common_sets(cfg) + cfg.segmenter.set, ct is not None,
                              times)
    model = FitModel(route, seg_spec, None, 1 if segmenter is None else None)
    frozen = model.resolve(out, seg_spec)
    if ct is not None and not ct_labels:  # the frozen segmenter labels the CTs (their liver; the body's classes)
        listing = _ct_pseudo_labels(frozen, ct, out / "ct_labels", cfg.device)
        data = [f"data.images={listing}", f"data.labels={listing}", "data.label_map={1: 1}"]
    translator = None
    if route == "synthct":
        if not _trainable_through(frozen):
            print(f"[medgen fit] translator: {frozen} is not a 2D medgen segmenter run; the translator trains "
                  "without the segmentation-consistency loss", flush=True)
        through = resolve_model(frozen) if _trainable_through(frozen) else "null"
        target = []  # the fit's MRIs, pseudo-labelled by the shipped mri-liver, trained through the frozen segmenter
        if through != "null" and load_config(config_path(cfg.translator.config), cfg.translator.set).target.ratio > 0:
            listing = _pseudo_labels(resolve_model(PSEUDO_LABELLER), mris, mri, out / "pseudo", cfg)
            if json.loads(listing.read_text())["training"]:
                target = [f"target.images={listing}", f"target.labels={listing}"]
            else:
                print("[medgen fit] translator: no MRI has a plausible liver mask; the segmentation loss judges the "
                      "painted CTs", flush=True)
        painted = [] if target else ["loss.seg_painted=true"]  # no MRI trains through the segmenter: the CTs do
        translator_sets = data + [f"segmenter={through}"] + target + _common_sets(cfg) + cfg.translator.set + painted
        _, times["translator"] = _stage("translator", cfg.translator.config, out / "translator", translator_sets)
        model.translator = translator = "translator"
        if cfg.ct2mri.config:  # the CT -> MRI translator: real CTs into the MRIs' contrast, cycled through that one
            listing = _pseudo_labels(resolve_model(PSEUDO_LABELLER), mris, mri, out / "pseudo", cfg)
            if json.loads(listing.read_text())["training"]:
                _, times["ct2mri"] = _stage("ct2mri", cfg.ct2mri.config, out / "ct2mri",
                                            data + [f"translator={out / translator}", f"target.images={listing}",
                                                    f"target.labels={listing}"] + _common_sets(cfg) + cfg.ct2mri.set)
                model.ct2mri = "ct2mri"
                if cfg.pairs.iterations > 0 and load_config(out / "ct2mri" / CONFIG_FILE).label_input:
                    print("[medgen fit] translator_pairs: ct2mri/ reads the CTs' labels (label_input), so it renders "
                          "no synthetic pairs; skipped", flush=True)
                elif cfg.pairs.iterations > 0:  # the translator again, on synthetic pairs too (CTs as ct2mri renders them)
                    _, times["pairs"] = _stage("translator_pairs", cfg.translator.config, out / "translator_pairs",
                                               translator_sets + [f"train.init={out / translator}",
                                                                  f"pairs.ct2mri={out / 'ct2mri'}",
                                                                  f"pairs.prob={cfg.pairs.prob}",
                                                                  f"pairs.organ_gain={cfg.pairs.organ_gain}",
                                                                  f"train.iterations={cfg.pairs.iterations}"])
                    model.translator = translator = "translator_pairs"
            else:
                print("[medgen fit] ct2mri: no MRI has a plausible liver mask to draw patches from; no CT -> MRI "
                      "translator", flush=True)
    print(f"[medgen fit] qc: the pipeline on the {len(mris)} training MRIs -> {out / 'qc'}", flush=True)
    run_pipeline(None if translator is None else str(out / translator), frozen, mri, out / "qc", cfg.device,
                 model.liver_index)
    write_model(out, model)
    if times:
        print("[medgen fit] wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()), flush=True)
    print(f"[medgen fit] model ready: " + (f"medgen translate {out} MRI SYNTH_CT" if pipeline == "mri-ct" else
                                           f"medgen pipeline mri-liver --model {out} MRI OUT"), flush=True)
    return out
