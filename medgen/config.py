"""YAML experiment configs -> typed dataclasses, with dotted ``--set a.b=c`` overrides.

A config file names its ``task`` (``cyclegan``, ``segmenter``, ``vae``, ``gan``); the task's dataclass
(registered in :data:`medgen.models.registry.TASKS`, loaded by :func:`medgen.models.load_config`) holds
every key with its default and documentation, so a misspelt key is an error, not a silently ignored
value. The resolved config is saved as ``RUN/config.yaml``. This module holds the machinery and the
sections every task shares; it knows no task.

Keys shared by every training config: ``train.iterations``, ``train.seed``, ``train.device``
(auto/cpu/cuda), ``train.amp`` (none/bf16/fp16); the ``data`` section points at volumes
(``data.mri``/``data.ct`` for translation; ``data.images``/``data.labels``/``data.label_map`` for
segmentation and synthesis).

>>> data = read_yaml("configs/demo_cyclegan_2d.yaml", ["train.iterations=10"])  # doctest: +SKIP
>>> from_dict(TrainConfig, {"iterations": 10, "amp": "bf16"}).iterations
10
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medgen.errors import MedgenError, short
from medgen.io import atomic_write


@dataclass
class TrainConfig:
    """How long and where to train; shared by every task."""

    iterations: int = 1000  # optimisation steps in total
    seed: int = 0  # seeds python, numpy, torch and data sampling
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    amp: str = "none"  # none | bf16 (CPU or CUDA autocast) | fp16 (CUDA, with a GradScaler)
    batch_size: int = 1
    num_workers: int = 0  # DataLoader workers (data are cached in memory, so 0 is usually enough)
    checkpoint_every: int = 500  # iterations between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    log_every: int = 50  # iterations between metrics.csv / TensorBoard scalar rows
    image_every: int = 500  # iterations between TensorBoard image grids (0: never)
    val_every: int = 0  # iterations between validations (0: only at the end; needs validation data)
    threads: int = 0  # torch intra-op threads (0: the cores split between the medgen processes running now)
    # fine-tuning: a run directory (its latest checkpoint) or a checkpoint file whose network weights (and
    # weight averages) this run starts from; optimizers and the learning-rate schedule start afresh
    init: str | None = None

    def __post_init__(self) -> None:  # checked before a run directory is made (from_dict names the file and key)
        for name in ("iterations", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(name, f"must be a positive integer, not {getattr(self, name)}")
        for name in ("num_workers", "image_every", "val_every", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(name, f"must be 0 or more, not {getattr(self, name)}")


@dataclass
class OptimConfig:
    """Adam with a constant learning rate, then a linear decay to zero (CycleGAN schedule)."""

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    decay_from: float = 0.5  # fraction of train.iterations after which the lr decays linearly to 0


@dataclass
class PreprocessConfig:
    """Geometry and intensity normalisation, applied identically in training and inference."""

    orientation: str = "RAS"  # every volume is reoriented to this axis code (exact axis flips/permutes)
    spacing: list[float | None] | None = None  # target voxel size in mm; null (or a null entry) keeps the own
    ct_window: list[float] = field(default_factory=lambda: [-1024.0, 2048.0])  # HU mapped to [-1, 1]
    mri_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])  # mapped to [-1, 1]
    mri_bias_correction: bool = True  # N4 bias-field correction of MRIs before intensity scaling


@dataclass
class InferenceConfig:
    """Whole-volume inference: slice batches (2D) or a Gaussian-blended sliding window (3D)."""

    batch_size: int = 8  # 2D: slices per forward pass; 3D: windows per forward pass
    roi_size: list[int] = field(default_factory=lambda: [96, 96, 96])  # 3D sliding-window size
    overlap: float = 0.5  # 3D sliding-window overlap
    amp: str = "bf16"  # none | bf16 | fp16 (CUDA)


@dataclass
class LabelledDataConfig:
    """Image + label data (segmenters and synthesizers)."""

    images: str = ""  # images: a folder or a datalist JSON ({image, label} entries)
    labels: str = ""  # label maps: a folder (matched to images by file name) or the same JSON
    label_map: dict[int, int] = field(default_factory=lambda: {1: 1})  # source value -> class (others: 0)
    modality: str = "ct"  # ct | mri: intensity preset of the images
    val_images: str | None = None  # segmenter: validation volumes (Dice at the end / every val_every)
    val_labels: str | None = None
    patch_size: list[int] = field(default_factory=lambda: [192, 192])  # 2D (X, Y) or 3D (X, Y, Z)
    pos_prob: float = 0.5  # probability that a patch is centred on a labelled voxel
    fg_prob: float = 0.9  # else, probability that it is centred inside the body
    min_foreground: float = 0.05  # 2D: slices with a smaller body fraction are never drawn
    cache_workers: int = 2  # threads loading/preprocessing volumes into the in-memory cache


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``, recursing into dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MedgenError(source, f"'{key}' must be a mapping, not {value!r}")
        return from_dict(tp, value, source, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise MedgenError(source, f"'{key}' must be a list, not {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise MedgenError(source, f"'{key}' must be a mapping, not {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(k, kt, key, source): _convert(v, vt, key, source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise MedgenError(source, f"'{key}' must be {getattr(tp, '__name__', tp)}, not {value!r}")


def from_dict(cls: type, data: dict, source: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ``MedgenError``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MedgenError(source, f"unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{prefix}{k}", source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a dataclass's own check: ValueError(field, problem)
        key, problem = exc.args if len(exc.args) == 2 else ("", short(exc))
        raise MedgenError(source, f"'{prefix}{key}' {problem}") from None


def _set_dotted(data: dict, assignment: str, source: str) -> None:
    if "=" not in assignment:
        raise MedgenError(source, f"override {assignment!r} is not of the form a.b=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MedgenError(source, f"override {key!r}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise MedgenError(source, f"override {assignment!r}: value is not valid YAML ({short(exc, 80)})") from None


CONFIG_DIR = Path(str(files("medgen") / "configs"))  # the configs and presets shipped inside the package


def config_path(name: str | Path) -> Path:
    """A config argument -> its file: an existing file as given; otherwise a config shipped in the package,
    named bare (``segmenter_ct_liver_2d``, ``.yaml`` optional) or as ``configs/NAME.yaml`` (the repository's
    spelling), so the same command works from any folder after ``pip install``.

    >>> config_path("segmenter_ct_liver_2d") == CONFIG_DIR / "segmenter_ct_liver_2d.yaml"
    True
    """
    path = Path(name)
    if path.is_file() or path.parent not in (Path("."), Path("configs")):
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def read_yaml(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """A YAML config file (a path, or the name of a shipped config: :func:`config_path`) as a dict, with
    ``a.b=value`` overrides applied (values parsed as YAML)."""
    source = str(path)
    try:
        data = yaml.safe_load(config_path(path).read_text()) or {}
    except FileNotFoundError:
        raise MedgenError(source, "no such config file") from None
    except yaml.YAMLError as exc:
        raise MedgenError(source, f"invalid YAML ({short(exc, 120)})") from None
    if not isinstance(data, dict):
        raise MedgenError(source, "a config must be a mapping")
    for assignment in overrides:
        _set_dotted(data, assignment, source)
    return data


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
