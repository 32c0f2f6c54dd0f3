"""The model layer: the task registry, config loading, run directories, and what adding a translator or a
segmenter backend takes (a class and one registry line)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from medgen.models.fit_model import load_fit_config
from medgen.cli import main
from medgen.config import InferenceConfig, PreprocessConfig, save_config
from medgen.errors import MedgenError
from medgen.inference import segment, translate
from medgen.inference.pipeline import MriLiverPipeline, PipelineOptions
from medgen.io import load_image, ref_from_affine, save_like
from medgen.models import registry
from medgen.models.registry import Task, load_config
from medgen.models.run import CHECKPOINT_DIR, load_run, read_norm
from medgen.models.segmenter import PostprocessConfig

from .conftest import ROOT


@pytest.mark.parametrize("text, overrides, message", [
    ("task: cyclegan\n", ["data.patch_size=[64, 64, 64]"], r"cfg.yaml: data.patch_size \[64, 64, 64\] needs 2 values"),
    ("task: fit\n", [], r"cfg.yaml: unknown task 'fit' \(known: cyclegan, synthct, synthmri, segmenter, vae, gan, label2image\)"),
    ("train: {}\n", [], "cfg.yaml: a config must be a mapping with a 'task' key"),
    ("task: segmenter\nnetwork: {nam: unet}\n", [], "unknown key 'network.nam'"),
    ("- task\n", [], "cfg.yaml: a config must be a mapping"),
])
def test_config_errors_name_the_file(tmp_path, text, overrides, message):
    (tmp_path / "cfg.yaml").write_text(text)
    with pytest.raises(MedgenError, match=message):
        load_config(tmp_path / "cfg.yaml", overrides)


def test_run_of_another_kind_is_refused(segmenter_run):
    with pytest.raises(MedgenError, match=r"is a segmenter run, not a translator run \(cyclegan or synthct or synthmri\)"):
        load_run(segmenter_run, "translator")
    assert load_run(segmenter_run, "segmenter").task == "segmenter"


def test_norm_artifact_of_a_run_without_one(tmp_path):
    assert read_norm(tmp_path) == (None, (-1000.0, 1000.0))


# ---------------------------------------------------------------- a new translator: one registry line


class Shift(torch.nn.Module):
    """A toy one-direction translator network: ``x + offset`` (with a weight, so it has a checkpoint)."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x + self.offset).clamp(-1, 1)


@dataclass
class ToyConfig:
    task: str = "toy"
    spatial_dims: int = 2
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(mri_bias_correction=False))
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(amp="none"))


def test_a_new_translator_task_is_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.TASKS, "toy", Task(ToyConfig, "translator", "medgen.engines.toy:setup",
                                                    build=lambda cfg: {"G": Shift()}, generators={"mri2ct": "G"}))
    run = tmp_path / "toy_run"
    save_config(ToyConfig(), run / "config.yaml")
    (run / CHECKPOINT_DIR).mkdir()
    torch.save({"G": {"offset": torch.tensor(0.5)}}, run / CHECKPOINT_DIR / "checkpoint_1.pt")
    translator = translate.load_translator(run, "mri2ct", "cpu", cycle=True)  # no reverse generator: no cycle
    mri = np.tile(np.linspace(0, 100, 8, dtype=np.float32), (8, 6, 1)).transpose(2, 0, 1)
    sct, cycle = translator.translate(mri, ref_from_affine(np.eye(4), mri.shape))
    assert cycle is None and sct.shape == mri.shape
    ct_window = ToyConfig().preprocess.ct_window  # [-1, 1] + 0.5 in the CT window, back in HU
    lo, hi = np.percentile(mri, [0.5, 99.5])
    expected = (np.clip((mri - lo) / (hi - lo) * 2 - 1 + 0.5, -1, 1) + 1) / 2 * (ct_window[1] - ct_window[0]) + ct_window[0]
    np.testing.assert_allclose(sct, expected, rtol=1e-4, atol=0.5)
    with pytest.raises(MedgenError, match="a toy run cannot translate ct2mri"):
        translate.load_translator(run, "ct2mri", "cpu")


# ---------------------------------------------------------------- a new segmenter backend: one class, one line


class ConstantSegmenter:
    """``const:P``: probability P everywhere."""

    @classmethod
    def accepts(cls, spec):
        return str(spec).startswith("const:")

    def __init__(self, spec, device="auto", liver_index=None):
        self.value = float(str(spec).split(":")[1])
        self.postprocess = PostprocessConfig(threshold=0.3)

    def predict(self, array, ref):
        return np.full(array.shape, self.value, np.float32)


def test_a_new_segmenter_backend_is_one_class_and_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(segment.SEGMENTERS, "const", ConstantSegmenter)
    assert isinstance(segment.load_segmenter("const:0.4"), ConstantSegmenter)
    ct = tmp_path / "ct.nii.gz"
    save_like(np.zeros((6, 6, 4), np.int16), ref_from_affine(np.eye(4), (6, 6, 4)), ct)
    assert main(["segment", "const:0.4", str(ct), str(tmp_path / "m.nii.gz")]) == 0
    assert load_image(tmp_path / "m.nii.gz")[0].all()  # 0.4 > the backend's own threshold 0.3


def test_pipeline_options_override_the_segmenters_postprocessing(cyclegan_run, segmenter_run):
    own = load_run(segmenter_run, "segmenter").postprocess
    pipe = MriLiverPipeline(cyclegan_run, segmenter_run, "cpu", options=PipelineOptions(threshold=0.7, fill_holes=False))
    assert pipe.postprocess == dataclasses.replace(own, threshold=0.7, fill_holes=False)
    assert MriLiverPipeline(cyclegan_run, segmenter_run, "cpu").postprocess == own


def test_shipped_configs_round_trip_through_a_run_directory(tmp_path):
    """A run directory's config.yaml (as `medgen train` saves it) loads back to the same config."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load = load_fit_config if path.name.startswith("fit_") else load_config  # fit presets: `medgen fit`
        cfg = load(path)
        save_config(cfg, tmp_path / path.stem / "config.yaml")
        assert load(tmp_path / path.stem / "config.yaml") == cfg
