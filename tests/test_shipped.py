"""The ready-made models shipped in the package: cards, checksums, use with no training, fit from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.io import load_image
from medgen.metrics import segmentation_metrics
from medgen.models import shipped
from medgen.models.fit_model import read_model
from medgen.models.registry import load_config
from medgen.models.run import latest_checkpoint, load_checkpoint

TINY_ADAPT = ["segmenter.train.batch_size=2", "segmenter.data.patch_size=[32, 32]", "segmenter.data.cache_workers=1",
              "segmenter.train.amp=none", "segmenter.train.checkpoint_every=1", "adapt.iterations=2", "device=cpu"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return segmentation_metrics(pred, truth, (1.0, 1.0, 1.0), False)["dice"]


@pytest.fixture
def weights_copy(tmp_path, monkeypatch) -> Path:
    """The shipped models copied to a temporary folder that the package then reads (to damage them safely)."""
    copy = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, copy)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", copy)
    return copy


def test_every_shipped_model_has_a_card_whose_sha256_matches_and_fits_the_budget():
    total = 0
    for name in shipped.SHIPPED:
        card = shipped.read_card(name)
        weights = shipped.WEIGHTS_DIR / name / card["weights"]["file"]
        assert card["name"] == name and card["weights"]["sha256"] == shipped.sha256(weights)
        for key in ("summary", "training_data", "terms", "command", "architecture", "input", "intended_use",
                    "failure_modes"):
            assert card.get(key), f"{name}: card has no {key}"
        state = torch.load(weights, weights_only=True)
        assert list(state) == ["net"]  # plain tensors, readable without unpickling code
        total += weights.stat().st_size
    assert total <= 60e6


def test_models_lists_the_shipped_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}:" in out for name in shipped.SHIPPED)
    assert main(["models", "mri-liver"]) == 0
    assert shipped.read_card("mri-liver")["weights"]["sha256"] in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "flipped", "card"])
def test_a_damaged_shipped_model_is_one_line_naming_the_file(weights_copy, phantom_dir, tmp_path, capsys, damage):
    card = json.loads((weights_copy / "mri-liver" / "card.json").read_text())
    weights = weights_copy / "mri-liver" / card["weights"]["file"]
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flipped":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (weights_copy / "mri-liver" / "card.json").write_text("{not json")
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(phantom_dir / "mri" / "case_000.nii.gz"), str(out), "--modality", "mri"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medgen: error: ") and not out.exists()
    assert ("sha256" in err[0] and str(weights) in err[0]) if damage != "card" else "model card" in err[0]


def test_segment_with_no_model_uses_the_shipped_one_on_the_input_grid(phantom_dir, tmp_path):
    src = phantom_dir / "mri" / "case_000.nii.gz"
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(src), str(out), "--modality", "mri"]) == 0
    mask, ref = load_image(out)
    _, src_ref = load_image(src)
    assert mask.shape == src_ref.shape and np.allclose(ref.affine, src_ref.affine) and mask.dtype == np.uint8
    named = tmp_path / "named.nii.gz"
    assert main(["segment", "mri-liver", str(src), str(named), "--modality", "mri"]) == 0
    assert np.array_equal(load_image(named)[0], mask)  # the default is the shipped mri-liver
    truth = load_image(phantom_dir / "labels" / "case_000.nii.gz")[0] == 1
    assert dice(mask > 0, truth) > 0.5  # a real-CT model on a procedural phantom: finds its liver


def test_fit_from_the_shipped_model_with_no_ct(phantom_dir, tmp_path, capsys):
    model = tmp_path / "model"
    args = ["fit", "mri-liver", "--mri", str(phantom_dir / "mri"), "--out", str(model)]
    assert main(args + [a for s in TINY_ADAPT for a in ("--set", s)]) == 0
    route, translator, segmenter, _ = read_model(model)
    pseudo = json.loads((model / "pseudo" / "dataset.json").read_text())["training"]
    assert route == "direct" and translator is None and not (model / "segmenter").exists()  # nothing trained on CT
    if not pseudo:
        pytest.skip("no plausible pseudo-label on these phantoms: nothing to adapt to")
    assert Path(segmenter) == model / "adapted"
    cfg = load_config(model / "adapted" / "config.yaml")
    assert cfg.train.init == str(shipped.WEIGHTS_DIR / "mri-liver")
    listing = str(model / "pseudo" / "dataset.json")  # the preset's adapt.paint: the MRIs painted and as they are
    assert (cfg.data.images, cfg.data.modality, cfg.target.images, cfg.target.ratio) == (listing, "mri", listing, 0.5)
    start = load_checkpoint(latest_checkpoint(shipped.WEIGHTS_DIR / "mri-liver"))["net"]
    tuned = load_checkpoint(latest_checkpoint(model / "adapted"))["net"]
    assert start.keys() == tuned.keys() and any(not torch.equal(start[k], tuned[k]) for k in start)
    alone = tmp_path / "alone"  # adapt.paint off: the pseudo-labelled MRIs alone, no CT read
    assert main(args[:-1] + [str(alone)] + [a for s in [*TINY_ADAPT, "adapt.paint=false"] for a in ("--set", s)]) == 0
    cfg = load_config(alone / "adapted" / "config.yaml")
    assert (cfg.data.images, cfg.target.ratio) == ("", 1.0)


def test_fit_with_a_frozen_segmenter_needs_cts(phantom_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["fit", "mri-liver", "--mri", str(phantom_dir / "mri"), "--out", str(out),
                 "--segmenter", "ct-liver"]) == 2
    assert "--ct" in capsys.readouterr().err and not out.exists()


def test_shipped_mri_liver_on_a_real_mri(real_dir, tmp_path):
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(real_dir / "example_mr_sm.nii.gz"), str(out), "--modality", "mri"]) == 0
    truth = load_image(real_dir / "example_seg_mr.nii.gz")[0] == 5  # TotalSegmentator's liver
    assert dice(load_image(out)[0] > 0, truth) > 0.8
