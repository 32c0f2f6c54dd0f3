from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from medgen.config import PreprocessConfig, TrainConfig, _set_dotted, from_dict
from medgen.errors import MedgenError
from medgen.runtime import CpuShare


@dataclass
class _Data:
    images: str = ""
    label_map: dict[int, int] = field(default_factory=dict)


@dataclass
class _Cfg:
    task: str = "x"
    data: _Data = field(default_factory=_Data)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


def test_from_dict_types_and_defaults():
    cfg = from_dict(_Cfg, {"data": {"images": "ct/", "label_map": {5: 1}}, "train": {"iterations": 7, "amp": "bf16"},
                           "preprocess": {"spacing": [1, 1, 2.5]}})
    assert cfg.train.iterations == 7 and cfg.train.seed == 0 and cfg.data.label_map == {5: 1}
    assert cfg.preprocess.spacing == [1.0, 1.0, 2.5] and isinstance(cfg.preprocess.spacing[0], float)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": {"iteratons": 5}}, "unknown key 'train.iteratons'"),
        ({"train": {"iterations": "many"}}, "'train.iterations' must be int"),
        ({"train": 3}, "'train' must be a mapping"),
        ({"preprocess": {"ct_window": 5}}, "'preprocess.ct_window' must be a list"),
    ],
)
def test_from_dict_errors(data, message):
    with pytest.raises(MedgenError, match=message):
        from_dict(_Cfg, data, "cfg.yaml")


def test_dotted_overrides():
    data = {"train": {"iterations": 5}}
    _set_dotted(data, "train.iterations=12", "x")
    _set_dotted(data, "data.label_map={6: 1}", "x")
    _set_dotted(data, "preprocess.spacing=null", "x")
    assert data == {"train": {"iterations": 12}, "data": {"label_map": {6: 1}}, "preprocess": {"spacing": None}}
    with pytest.raises(MedgenError, match="not of the form"):
        _set_dotted(data, "train.iterations", "x")


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("fit_")))
def test_shipped_configs_load(name):
    from medgen.models.registry import load_config

    cfg = load_config(CONFIGS / name)
    assert cfg.task in ("cyclegan", "synthct", "synthmri", "segmenter", "vae", "gan", "label2image")
    assert cfg.train.iterations > 0
    patch = cfg.data.patch_size
    assert len(patch) == cfg.spatial_dims


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("fit_*.yaml")))
def test_fit_presets_load_and_name_existing_stage_configs(name):
    from medgen.models.fit_model import load_fit_config
    from medgen.models.registry import load_config

    cfg = load_fit_config(CONFIGS / name)
    assert cfg.route in ("direct", "synthct")
    for stage, task in ((cfg.segmenter, "segmenter"), (cfg.translator, "synthct"), (cfg.ct2mri, "synthmri")):
        if stage.config or task != "synthmri":  # the CT -> MRI stage is fit mri-ct's only
            assert load_config(CONFIGS / stage.config, stage.set).task == task
    assert bool(cfg.ct2mri.config) == (cfg.task == "fit_mri_ct")


@pytest.mark.parametrize("native, amp, device, expect", [
    (False, "bf16", "cpu", "none"),  # emulated bf16 is ~10x slower than fp32: fall back
    (True, "bf16", "cpu", "bf16"),
    (False, "none", "cpu", "none"),
    (False, "bf16", "cuda", "bf16"),  # the CPU's abilities do not matter on a GPU
    (False, "fp16", "cuda", "fp16"),
])
def test_effective_amp(monkeypatch, native, amp, device, expect):
    from medgen import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert runtime.effective_amp(torch.device(device), amp) == expect


@pytest.mark.parametrize("amp, device, message", [("fp16", "cpu", "fp16 needs CUDA"), ("fp8", "cpu", "none, bf16 or fp16")])
def test_effective_amp_rejects(amp, device, message):
    from medgen.runtime import effective_amp

    with pytest.raises(MedgenError, match=message):
        effective_amp(torch.device(device), amp)


@pytest.mark.parametrize("native, amp, device, expect", [
    (False, "bf16", "cpu", False),  # fp32 on an AVX2 CPU: contiguous (channels-last measured 23% slower)
    (True, "bf16", "cpu", True),
    (True, "none", "cpu", False),
    (False, "none", "cuda", True),
])
def test_generator_layout_follows_the_effective_precision(monkeypatch, native, amp, device, expect):
    from medgen import runtime
    from medgen.models.cyclegan import CycleGANConfig, GeneratorConfig, build_nets

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = runtime.prefers_channels_last(torch.device(device), amp)
    assert layout is expect
    g = build_nets(CycleGANConfig(generator=GeneratorConfig(ngf=4, n_blocks=1)), layout)["G_ab"]
    conv = next(m for m in g.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expect


@pytest.mark.parametrize("device, batch, voxels, expect", [
    ("cpu", 16, 256 * 256, 1), ("cpu", 16, 128 * 128, 4), ("cpu", 2, 64 * 64, 2), ("cpu", 4, 96 ** 3, 1),
    ("cuda", 16, 512 * 512, 16),
])
def test_inference_pass_size_is_capped_on_a_cpu(device, batch, voxels, expect):
    from medgen.inference.volume import pass_size

    assert pass_size(batch, torch.device(device), voxels) == expect


def test_translation_runs_channels_last(cyclegan_run):
    """Translators keep their generators channels-last (faster in inference at every precision)."""
    from medgen.inference.translate import load_translator

    t = load_translator(cyclegan_run, cycle=True, device="cpu")
    for net in (t.net, t.back_net):
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_share_splits_the_cores_between_live_medgen_processes(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        share = CpuShare(folder=tmp_path)
        share.cores = 4
        (tmp_path / f"{os.getppid()}.pid").touch()  # a live peer (the test runner's parent)
        (tmp_path / "999999999.pid").touch()  # a dead one: removed, not counted
        with share:
            assert (tmp_path / f"{os.getpid()}.pid").is_file()
            assert share.peers() == 2 and torch.get_num_threads() == 2
            assert not (tmp_path / "999999999.pid").exists()
            (tmp_path / f"{os.getppid()}.pid").unlink()  # the peer ended: the cores come back
            share.update(force=True)
            assert torch.get_num_threads() == 4
        assert not (tmp_path / f"{os.getpid()}.pid").exists()
        assert CpuShare(fixed=3, folder=tmp_path).threads() == 3  # train.threads pins the count ...
        with CpuShare(fixed=1, folder=tmp_path) as pinned:  # ... and the pinned process still counts for the others
            assert (tmp_path / f"{os.getpid()}.pid").is_file() and pinned.threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: a cap
        assert CpuShare(folder=tmp_path).threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "8")
        capped = CpuShare(folder=tmp_path)
        capped.cores = 4
        assert capped.threads() == 4
    finally:
        torch.set_num_threads(before)
