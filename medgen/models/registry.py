"""The one task registry: every trainable task, its config dataclass and where its training setup lives.

``medgen train`` (:mod:`medgen.engines.train`), run loading (:func:`medgen.models.run.load_run`) and the
inference backends all read :data:`TASKS`. A new task is one line here.

Training setups are named by dotted path (``"module:function"``) and imported only by ``medgen train``,
so that this layer never imports ``medgen.engines`` (which sits above it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgen.config import from_dict, read_yaml
from medgen.errors import MedgenError
from medgen.models.cyclegan import GENERATORS, CycleGANConfig, build_nets
from medgen.models.label2image import Label2ImageConfig
from medgen.models.segmenter import SegmenterConfig
from medgen.models.synth import GANConfig, VAEConfig
from medgen.models.synthct import GENERATORS as SYNTHCT_GENERATORS
from medgen.models.synthct import SynthCTConfig
from medgen.models.synthct import build_nets as build_synthct
from medgen.models.synthmri import GENERATORS as SYNTHMRI_GENERATORS
from medgen.models.synthmri import SynthMRIConfig
from medgen.models.synthmri import build_nets as build_synthmri

KINDS = ("translator", "segmenter", "synthesizer")


@dataclass(frozen=True)
class Task:
    """What medgen knows of one task.

    Args:
        config: the YAML config's dataclass (its ``task`` default is the registry key).
        kind: ``translator`` | ``segmenter`` | ``synthesizer``: which inference backend loads its runs.
        setup: ``"module:function"`` building the training ``TaskSetup`` from ``(cfg, device)``.
        build: translators: ``(cfg, channels_last_layout) -> {checkpoint name: network}``.
        generators: translators: direction (``mri2ct``/``ct2mri``) -> the network translating it.
    """

    config: type
    kind: str
    setup: str
    build: Callable[..., dict] | None = None
    generators: Mapping[str, str] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "cyclegan": Task(CycleGANConfig, "translator", "medgen.engines.cyclegan:setup", build_nets, GENERATORS),
    "synthct": Task(SynthCTConfig, "translator", "medgen.engines.synthct:setup", build_synthct, SYNTHCT_GENERATORS),
    "synthmri": Task(SynthMRIConfig, "translator", "medgen.engines.synthmri:setup", build_synthmri,
                     SYNTHMRI_GENERATORS),
    "segmenter": Task(SegmenterConfig, "segmenter", "medgen.engines.segmenter:setup"),
    "vae": Task(VAEConfig, "synthesizer", "medgen.engines.synth:setup"),
    "gan": Task(GANConfig, "synthesizer", "medgen.engines.synth:setup"),
    "label2image": Task(Label2ImageConfig, "synthesizer", "medgen.engines.label2image:setup"),
}


def get_task(name: str, source: str = "<config>") -> Task:
    """The registered task ``name``; an unknown name is a ``MedgenError`` listing the known ones.

    >>> get_task("cyclegan").kind
    'translator'
    """
    if name not in TASKS:
        raise MedgenError(source, f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def tasks_of(kind: str) -> list[str]:
    """Names of the tasks of ``kind``.

    >>> tasks_of("synthesizer")
    ['vae', 'gan', 'label2image']
    """
    return [name for name, t in TASKS.items() if t.kind == kind]


def check_patch_size(cfg: Any, source: str = "<config>") -> None:
    """Raise unless ``data.patch_size`` has one value per spatial dimension (configs without one pass)."""
    patch: Sequence[int] | None = getattr(getattr(cfg, "data", None), "patch_size", None)
    dims = getattr(cfg, "spatial_dims", None)
    if patch is not None and dims is not None and len(patch) != dims:
        raise MedgenError(source, f"data.patch_size {list(patch)} needs {dims} values for spatial_dims={dims}")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Read a YAML config, apply ``a.b=value`` overrides (values parsed as YAML) and type-check it
    against its task's dataclass.

    >>> load_config("configs/demo_cyclegan_2d.yaml", ["train.iterations=10"]).train.iterations  # doctest: +SKIP
    10
    """
    source = str(path)
    data = read_yaml(path, overrides)
    if "task" not in data:
        raise MedgenError(source, f"a config must be a mapping with a 'task' key ({', '.join(TASKS)})")
    cfg = from_dict(get_task(str(data["task"]), source).config, data, source)
    check_patch_size(cfg, source)
    return cfg
