"""``medgen fit mri-liver``: its config (a preset YAML) and the model directory it writes.

A fit trains everything the MRI liver pipeline needs from labelled CTs and unlabelled MRIs into one
directory, and ``medgen pipeline mri-liver --model MODEL`` runs it. The directory holds the resolved
``fit.yaml``, one ``medgen train`` run per stage and ``model.json``, which names the route::

    {"route": "direct", "segmenter": "adapted", "translator": null, "liver_index": 1, "ct2mri": null}

Routes:

- ``direct``: the MRI goes, through the MRI preset, into a contrast-agnostic liver segmenter trained on
  the CTs with label -> image synthesis (``augment.synthseg``);
- ``synthct``: MRI -> synthetic CT (a translator run) -> a CT segmenter (the fit's own, or the user's
  ``--segmenter``, used frozen).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medgen.config import from_dict, read_yaml
from medgen.errors import MedgenError, short
from medgen.io import atomic_write
from medgen.models.shipped import SHIPPED
from medgen.runtime import AMP_MODES

FIT_CONFIG = "fit.yaml"
MODEL_FILE = "model.json"
ROUTES = ("direct", "synthct")
FIT_TASKS = ("fit_mri_liver", "fit_mri_ct")  # fit mri-ct: the synthct route's stages, its translator the product


@dataclass
class StageConfig:
    """One training stage: a config file (a path, or the name of a config shipped in the package) and
    dotted overrides applied on top of it (after the data the fit fills in)."""

    config: str = ""
    set: list[str] = field(default_factory=list)


@dataclass
class AdaptConfig:
    """Self-training (route ``direct``): the segmenter's masks of the fit's MRIs become pseudo-labels, and a
    copy of it is fine-tuned on the CTs (synthesis as before) mixed with those MRIs in their own contrast."""

    iterations: int = 0  # fine-tuning steps (0: no adaptation)
    ratio: float = 0.5  # fraction of the training samples drawn from the pseudo-labelled MRIs
    lr: float = 3e-4  # learning rate of the fine-tuning (constant, then the segmenter's linear decay)
    paint: bool = False  # with no CT: the pseudo-labelled MRIs also feed the label -> image synthesis (their
    # anatomy painted in random contrasts) in place of the CTs; off: the MRIs alone, in their own contrast


@dataclass
class PairsConfig:
    """Route synthct after a ct2mri stage: the translator trained again from its weights (``translator_pairs/``: its
    config and overrides, then these), a CT sample's input now and then the CT rendered in the MRIs' contrast by
    ``ct2mri/``, its target the CT (synthct's ``pairs``). That stage is then the model's translator. Without a ct2mri
    stage, or with one that reads the CTs' labels (``label_input``), there is nothing to render with: no such stage."""

    iterations: int = 0  # its training steps (0: no such stage)
    prob: float = 0.5  # the fraction of CT samples rendered (synthct's pairs.prob)
    organ_gain: float = 1.0  # each rendered structure's random gain range (synthct's pairs.organ_gain; 1: off)


@dataclass
class FitConfig:
    task: str = "fit_mri_liver"  # or fit_mri_ct (a preset of `medgen fit mri-ct`)
    route: str = "direct"  # direct | synthct (with --segmenter the route is always synthct)
    start: str = "mri-liver"  # the shipped model the segmenter starts from, or scratch: trained on the CTs first
    segmenter: StageConfig = field(default_factory=lambda: StageConfig("segmenter_liver_any_contrast.yaml"))
    translator: StageConfig = field(default_factory=lambda: StageConfig("synthct_2d.yaml"))
    # route synthct: the CT -> MRI translator trained after the translator, through it (empty config: none)
    ct2mri: StageConfig = field(default_factory=StageConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)  # route synthct with ct2mri: synthetic pairs
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    device: str = "auto"  # every stage: auto | cpu | cuda
    amp: str = "none"  # every stage: none | bf16 | fp16
    threads: int = 0  # torch CPU threads of every stage (0: the cores split between running medgen processes)


def load_fit_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FitConfig:
    """A fit preset + ``--set`` overrides -> :class:`FitConfig` (unknown keys, bad values and a preset that is not a
    fit preset are one-line errors, before anything is trained)."""
    data = read_yaml(path, overrides)
    if data.get("task") not in FIT_TASKS:
        raise MedgenError(path, f"not a fit preset (it needs task: {' or '.join(FIT_TASKS)}; see "
                                "fit_mri_liver_cpu.yaml)")
    cfg = from_dict(FitConfig, data, str(path))
    if cfg.route not in ROUTES:
        raise MedgenError(path, f"route must be one of {', '.join(ROUTES)}, not {cfg.route!r}")
    if cfg.start not in (*SHIPPED, "scratch"):
        raise MedgenError(path, f"start must be scratch or a shipped model ({', '.join(SHIPPED)}), not {cfg.start!r}")
    if cfg.amp not in AMP_MODES or cfg.device not in ("auto", "cpu", "cuda"):
        raise MedgenError(path, f"amp must be one of {', '.join(AMP_MODES)} and device auto, cpu or cuda, not "
                                f"{cfg.amp!r} / {cfg.device!r}")
    return cfg


@dataclass
class FitModel:
    """What ``model.json`` says: the route and the runs (paths relative to the model directory: the fit copies a
    user's own segmenter into it), or a shipped model's name."""

    route: str
    segmenter: str
    translator: str | None = None
    liver_index: int | None = None
    ct2mri: str | None = None  # the CT -> MRI translator run (fit mri-ct), or None

    def resolve(self, model_dir: Path, name: str | None) -> str | None:
        """A run named in ``model.json`` -> its path inside ``model_dir`` (a shipped model's name as it is); a name
        that leaves the folder (``..``, an absolute path) or is missing is a one-line error."""
        if name is None or name in SHIPPED:
            return name
        source = model_dir / MODEL_FILE
        inside = (model_dir / name).resolve()
        if Path(name).is_absolute() or not inside.is_relative_to(model_dir.resolve()):
            raise MedgenError(source, f"{name!r} points outside the model folder: model.json names runs inside it")
        if not inside.exists():
            raise MedgenError(source, f"names {name!r}, which is not in the model folder (copy it back, or refit)")
        return str(model_dir / name)


def write_model(model_dir: Path, model: FitModel) -> Path:
    text = json.dumps(model.__dict__, indent=2) + "\n"
    return atomic_write(Path(model_dir) / MODEL_FILE, lambda tmp: Path(tmp).write_text(text))


def read_model(model_dir: str | Path) -> tuple[str, str | None, str, int | None]:
    """``(route, translator, segmenter, liver_index)`` of a fit model directory, paths resolved; a missing or
    broken ``model.json`` is a one-line error naming the fix."""
    model_dir = Path(model_dir)
    model = _checked_model(model_dir)
    return (model.route, model.resolve(model_dir, model.translator), model.resolve(model_dir, model.segmenter),
            model.liver_index)


def model_translator(model_dir: str | Path, direction: str) -> str | None:
    """The translator run of a fit model directory for ``direction`` (``mri2ct``: ``translator``, ``ct2mri``:
    ``ct2mri``), its path resolved, or None when the model has none."""
    model = _checked_model(Path(model_dir))
    return model.resolve(Path(model_dir), model.ct2mri if direction == "ct2mri" else model.translator)


def _checked_model(model_dir: Path) -> FitModel:
    """``model.json`` read and checked (names, types, route)."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise MedgenError(model_dir, f"not a fit model (no {MODEL_FILE}; make one with `medgen fit mri-liver`, "
                                     "or finish it with `medgen fit mri-liver ... --resume`)")
    try:
        data = json.loads(path.read_text())
        model = FitModel(**data)
    except (ValueError, TypeError) as exc:
        raise MedgenError(path, f"unreadable model file: {short(exc)}") from None
    for key in ("route", "segmenter", "translator", "ct2mri"):
        value, optional = getattr(model, key), key in ("translator", "ct2mri")
        if not (isinstance(value, str) and value) and not (optional and value is None):
            raise MedgenError(path, f"'{key}' must be {'a name or null' if optional else 'a name'}, "
                                    f"not {short(repr(value), 40)}")
    index = model.liver_index
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 64):
        raise MedgenError(path, f"'liver_index' must be null or a class index 0-63, not {short(repr(index), 40)}")
    if model.route not in ROUTES:
        raise MedgenError(path, f"unknown route {model.route!r}")
    if model.route == "synthct" and not model.translator:
        raise MedgenError(path, "route synthct needs a translator")
    return model
