from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.engines.train import train
from medgen.errors import MedgenError
from medgen.inference.segment import load_segmenter, postprocess
from medgen.keys import Keys
from medgen.models.run import latest_checkpoint
from medgen.phantoms import make_case

from .conftest import ROOT, oblique_affine, tiny_segmenter, write_nifti


class Threshold(torch.nn.Module):
    """A deterministic 'segmenter': liver logit = 20 * (x - 0.5), background logit 0."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1] = 20.0
            self.conv.bias[1] = -10.0

    def forward(self, x):
        return self.conv(x)


def _phantom_ct(tmp_path: Path, affine: np.ndarray, shape=(48, 44, 20), name="ct.nii.gz") -> tuple[Path, dict]:
    case = make_case(seed=2, case=1, shape=shape, affine=affine)
    return write_nifti(tmp_path / name, case["ct"], affine, qform=affine, qcode=1, scode=2), case


def _expected(ct: np.ndarray, hu: float) -> np.ndarray:
    return postprocess((ct > hu).astype(np.float32))


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_fine_tuning_starts_from_another_runs_weights(phantom_dir, segmenter_run, cyclegan_run, tmp_path):
    sets = tiny_segmenter(phantom_dir, iterations=1, **{"train.init": str(segmenter_run), "optim.lr": 0.0,
                                                        "train.checkpoint_every": 1})
    run = train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path / "ft", sets)
    start = torch.load(latest_checkpoint(segmenter_run), weights_only=True)["net"]
    end = torch.load(latest_checkpoint(run), weights_only=True)
    assert end["trainer"]["iteration"] == 1  # a new run (its own schedule), from the other run's weights
    assert start.keys() == end["net"].keys() and all(torch.equal(start[k], end["net"][k]) for k in start)
    sets = tiny_segmenter(phantom_dir, iterations=1, **{"train.init": str(cyclegan_run)})
    with pytest.raises(MedgenError, match="train.init: the checkpoint has no net weights"):
        train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path / "wrong", sets)
    assert not (tmp_path / "wrong").exists()  # refused before the run directory is written


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_target_pairs_are_mixed_into_training_at_their_ratio(phantom_dir, tmp_path, ratio):
    from medgen.engines.segmenter import segmentation_samples
    from medgen.models.registry import load_config

    empty = tmp_path / "masks"
    empty.mkdir()
    for mri in sorted((phantom_dir / "mri").glob("*.nii.gz")):  # pseudo-labels without liver: recognisable
        img = nib.load(mri)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), empty / mri.name)
    cfg = load_config(ROOT / "configs" / "segmenter_ct_liver.yaml", tiny_segmenter(phantom_dir, **{
        "target.images": str(phantom_dir / "mri"), "target.labels": str(empty), "target.ratio": ratio,
        "data.pos_prob": 1.0}))
    samples = segmentation_samples(cfg, seed=0)
    with_liver = [bool((samples[n]["label"] > 0).any()) for n in range(24)]
    assert (not any(with_liver)) if ratio == 1.0 else all(with_liver)


@pytest.mark.parametrize("dims", [2, 3])
def test_train_segmenter_few_iterations(phantom_dir, tmp_path, segmenter_run, dims):
    run = segmenter_run if dims == 2 else train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path / "s3",
                                                tiny_segmenter(phantom_dir, 3, iterations=2))
    ckpt = torch.load(latest_checkpoint(run), weights_only=True)
    assert {"net", "opt", "trainer"} <= set(ckpt)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["value"]) for r in rows if r["phase"] == "val" and r["name"] == "dice_1"]
    assert len(val) == 1 and 0 <= val[0] <= 1
    assert any(r["name"] == "loss" for r in rows)


def test_a_2_5d_segmenter_trains_with_synthesis_and_segments_on_the_input_grid(phantom_dir, tmp_path):
    """network.slices=3: the label -> image synthesis paints all three slices, and inference gives each slice its
    neighbours; the mask lands on the input's grid and header."""
    run = train(ROOT / "configs" / "segmenter_liver_any_contrast.yaml", tmp_path / "s25",
                tiny_segmenter(phantom_dir, 2, iterations=2, **{"network.slices": 3, "network.ema_decay": 0.0}))
    ckpt = torch.load(latest_checkpoint(run), weights_only=True)
    first = next(w for w in ckpt["net"].values() if w.ndim == 4)  # the first 2D convolution's weight
    assert first.shape[1] == 3  # three input channels
    image = sorted((phantom_dir / "ct").glob("*.nii.gz"))[0]
    assert main(["segment", str(run), str(image), str(tmp_path / "mask.nii.gz"), "--modality", "mri"]) == 0
    src, out = nib.load(image), nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


@pytest.mark.parametrize("sets, problem", [({"network.slices": 2}, "odd number of slices"),
                                           ({"network.slices": 3, "spatial_dims": 3,
                                             "data.patch_size": "[16, 16, 16]"}, "for 2D networks")])
def test_slices_must_be_odd_and_2d(phantom_dir, tmp_path, sets, problem):
    with pytest.raises((MedgenError, ValueError), match=problem):
        train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path / "bad", tiny_segmenter(phantom_dir, 2, **sets))


def test_translator_cycled_augmentation(phantom_dir, cyclegan_run, tmp_path):
    from medgen.data.datalist import image_label_pairs
    from medgen.engines.segmenter import cycled_volumes
    from medgen.models.registry import load_config

    cfg = load_config(ROOT / "configs" / "segmenter_ct_liver.yaml", tiny_segmenter(phantom_dir))
    pairs = image_label_pairs(phantom_dir / "dataset.json", phantom_dir / "dataset.json")[:2]
    vols = cycled_volumes(cyclegan_run, pairs, cfg)
    assert len(vols) == 2 and vols[0]["image"].shape == (1, 64, 64, 32)
    assert vols[0]["image"].min() >= -1 and vols[0]["image"].max() <= 1
    assert int(vols[0]["label"].max()) == 1  # labels travel unchanged with the cycled CT
    gen = cycled_volumes(cyclegan_run, pairs[:1], cfg, gen_classes=2)[0][Keys.GEN]  # for label -> image synthesis
    assert gen.shape == vols[0]["label"].shape and bool((gen[vols[0]["label"] == 1] > 0).all())
    run = train(ROOT / "configs" / "segmenter_ct_liver.yaml", tmp_path / "seg",
                tiny_segmenter(phantom_dir, iterations=2, **{"augment.translator": str(cyclegan_run)}))
    assert latest_checkpoint(run).name == "checkpoint_2.pt"


@pytest.mark.parametrize("dims", [2, 3])
def test_organ_intensity_augmentation_moves_each_organ_on_its_own(dims):
    from medgen.data.augment import RandOrganIntensityd, intensity_augmentation

    shape = (1,) + (24,) * dims
    label = torch.zeros(shape)
    label[(0, slice(2, 10)) + (slice(2, 22),) * (dims - 1)] = 1
    label[(0, slice(14, 22)) + (slice(2, 22),) * (dims - 1)] = 2
    image = torch.full(shape, 0.3)
    t = RandOrganIntensityd("image", "label", (-0.4, 0.2), prob=1.0)
    shifts = []
    for seed in range(20):
        t.set_random_state(seed)
        out = t({"image": image, "label": label})["image"] - image
        assert out[:, 11:13].abs().max() == 0  # background two voxels from every organ: untouched
        shifts.append([float(out[label == v].mean()) for v in (1, 2)])
        assert -0.4 <= float(out.min()) and float(out.max()) <= 0.2
    shifts = np.array(shifts)
    assert shifts.min() < -0.1 and shifts.max() > 0.02  # both directions within the range
    assert np.abs(shifts[:, 0] - shifts[:, 1]).max() > 0.05  # organs get their own offsets
    t.set_random_state(3)
    again = t({"image": image, "label": label})["image"] - image
    t.set_random_state(3)
    assert torch.equal(again, t({"image": image, "label": label})["image"] - image)  # seeded
    assert intensity_augmentation(False, None) is None
    assert intensity_augmentation(False, [-0.3, 0.1]).transforms[0].offsets == (-0.3, 0.1)


def test_segment_cli_keeps_header(segmenter_run, tmp_path):
    src, _ = _phantom_ct(tmp_path, oblique_affine(spacing=(6.0, 6.5, 7.0)))
    assert main(["segment", str(segmenter_run), str(src), str(tmp_path / "mask.nii.gz")]) == 0
    out, ref = nib.load(tmp_path / "mask.nii.gz"), nib.load(src)
    assert out.shape == ref.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


def test_torchscript_backend_exact(tmp_path):
    affine = np.diag([-6.0, -6.0, 8.0, 1.0])  # LPS
    src, case = _phantom_ct(tmp_path, affine)
    model = tmp_path / "liver.pt"
    torch.jit.script(Threshold(3)).save(str(model))
    sidecar = {"spatial_dims": 3, "orientation": "RAS", "spacing": None, "window": [-175, 250], "range": [0, 1],
               "output": "softmax", "liver_index": 1, "roi_size": [32, 32, 16], "overlap": 0.25, "multiple": 1}
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    assert main(["segment", str(model), str(src), str(tmp_path / "m.nii.gz")]) == 0
    mask = np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj).astype(bool)
    expected = _expected(case["ct"], 37.5).astype(bool)  # normalised 0.5 <=> -175 + 0.5 * 425 HU
    assert dice(mask, expected) > 0.99


class TwoLevels(torch.nn.Module):
    """Three channels: background 0, a 'liver' logit 20 * (x - 0.5) and another 20 * (x - 0.8)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5), 20 * (x - 0.8)], dim=1)


def test_liver_index_reaches_torchscript_models(tmp_path):
    affine = np.diag([6.0, 6.0, 8.0, 1.0])
    src, case = _phantom_ct(tmp_path, affine)
    model = tmp_path / "two.pt"
    torch.jit.script(TwoLevels()).save(str(model))
    sidecar = {"window": [-175, 250], "range": [0, 1], "output": "sigmoid", "liver_index": 1, "roi_size": [32, 32, 16],
               "overlap": 0.25, "multiple": 1}
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    for args, hu in (([], 37.5), (["--liver-index", "2"], 165.0)):  # 0.5 / 0.8 of [-175, 250]
        out = tmp_path / f"m{len(args)}.nii.gz"
        assert main(["segment", str(model), str(src), str(out), *args]) == 0
        mask = np.asarray(nib.load(out).dataobj).astype(bool)
        assert dice(mask, _expected(case["ct"], hu).astype(bool)) > 0.99, args


def test_torchscript_needs_sidecar(tmp_path, capsys):
    model = tmp_path / "liver.pt"
    torch.jit.script(Threshold(3)).save(str(model))
    src, _ = _phantom_ct(tmp_path, np.diag([6.0, 6.0, 8.0, 1.0]))
    assert main(["segment", str(model), str(src), str(tmp_path / "m.nii.gz")]) == 2
    assert "needs a sidecar" in capsys.readouterr().err and not (tmp_path / "m.nii.gz").exists()


def _bundle(root: Path) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -175, "a_max": 250, "b_min": 0.0,
             "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(Threshold(3).conv.state_dict(), root / "models" / "model.pt")
    return root


def test_monai_bundle_backend(tmp_path):
    affine = oblique_affine(spacing=(5.0, 5.0, 7.0), angle_deg=8)
    src, case = _phantom_ct(tmp_path, affine)
    bundle = _bundle(tmp_path / "bundle")
    assert main(["segment", str(bundle), str(src), str(tmp_path / "m.nii.gz"), "--liver-index", "1"]) == 0
    out = nib.load(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(out.affine, nib.load(src).affine)
    mask = np.asarray(out.dataobj).astype(bool)
    expected = _expected(case["ct"], 37.5).astype(bool)
    assert dice(mask, expected) > 0.85  # through a 4 mm resampling and back


def test_a_bundle_with_python_expressions_needs_trust(tmp_path, capsys):
    src, _ = _phantom_ct(tmp_path, np.diag([6.0, 6.0, 8.0, 1.0]))
    bundle = _bundle(tmp_path / "bundle")
    marker = tmp_path / "ran"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["inferer"]["sw_batch_size"] = f"$__import__('pathlib').Path('{marker}').touch() or 1"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    out = tmp_path / "m.nii.gz"
    assert main(["segment", str(bundle), str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-bundle" in err[0] and not marker.exists() and not out.exists()
    assert main(["segment", str(bundle), str(src), str(out), "--trust-bundle"]) == 0 and marker.exists()


@pytest.mark.parametrize("weights", [b"", b"garbage" * 100, "pickle"])
def test_a_bundle_with_damaged_weights_is_one_line(tmp_path, capsys, weights):
    import pickle

    src, _ = _phantom_ct(tmp_path, np.diag([6.0, 6.0, 8.0, 1.0]))
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "models" / "model.pt").write_bytes(pickle.dumps({"w": object}) if weights == "pickle" else weights)
    assert main(["segment", str(bundle), str(src), str(tmp_path / "m.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medgen: error: {bundle / 'models' / 'model.pt'}")


FAKE_TOTALSEG = {
    "__init__.py": "",
    "config.py": "import os\ndef get_weights_dir():\n    return os.environ['TOTALSEG_WEIGHTS_PATH']\n",
    "python_api.py": (
        "import os, pathlib, nibabel as nib, numpy as np\n"
        "def totalsegmentator(input, output, roi_subset=None, device='cpu', quiet=False):\n"
        "    assert roi_subset == ['liver']\n"
        "    img = nib.load(input)\n"
        "    liver = np.zeros(img.shape, np.uint8)\n"
        "    liver[10:30, 12:30, 4:14] = 1\n"
        "    os.makedirs(output, exist_ok=True)\n"
        "    out = nib.Nifti1Image(liver, img.affine, img.header)\n"
        "    out.set_data_dtype(np.uint8)\n"
        "    nib.save(out, pathlib.Path(output) / 'liver.nii.gz')\n"
        "    np.save(pathlib.Path(os.environ['TOTALSEG_WEIGHTS_PATH']) / 'seen_affine.npy', img.affine)\n"),
}


@pytest.fixture
def fake_totalsegmentator(tmp_path, monkeypatch):
    """A stand-in ``totalsegmentator`` package (same API surface: config.get_weights_dir, python_api)."""
    import sys

    pkg = tmp_path / "site" / "totalsegmentator"
    pkg.mkdir(parents=True)
    for name, text in FAKE_TOTALSEG.items():
        (pkg / name).write_text(text)
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    yield tmp_path / "weights"
    for mod in [m for m in sys.modules if m.split(".")[0] == "totalsegmentator"]:
        del sys.modules[mod]


def test_totalsegmentator_backend_refuses_to_download_then_runs(fake_totalsegmentator, tmp_path, capsys):
    affine = oblique_affine(spacing=(3.0, 3.5, 5.0), angle_deg=10)
    src, _ = _phantom_ct(tmp_path, affine)
    out = tmp_path / "liver.nii.gz"
    assert main(["segment", "totalsegmentator", str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "totalseg_download_weights -t total" in err and "Dataset291_*" in err
    assert not out.exists()
    for task in (291, 292, 293, 294, 295):
        (fake_totalsegmentator / f"Dataset{task}_TotalSegmentator_part").mkdir()
    assert main(["segment", "totalsegmentator", str(src), str(out)]) == 0
    mask, ref = nib.load(out), nib.load(src)
    np.testing.assert_array_equal(mask.affine, ref.affine)
    np.testing.assert_allclose(np.load(fake_totalsegmentator / "seen_affine.npy"), ref.affine, atol=1e-5)
    expected = np.zeros(ref.shape, np.uint8)
    expected[10:30, 12:30, 4:14] = 1
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)


def test_backend_errors(tmp_path):
    with pytest.raises(MedgenError, match="TotalSegmentator is not installed"):
        load_segmenter("totalsegmentator")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedgenError, match="not a MONAI bundle"):
        load_segmenter(tmp_path / "empty")
    with pytest.raises(MedgenError, match="no such segmenter"):
        load_segmenter(tmp_path / "missing")


@pytest.mark.parametrize(
    "shift,expected_dice,expected_hd95",
    [(0, 1.0, 0.0), (2, 0.8, 4.0)],
)
def test_evaluate_segmentation_cli(tmp_path, capsys, shift, expected_dice, expected_hd95):
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[5:15, 5:15, 2:8] = 5
    pred = np.roll((truth == 5).astype(np.uint8), shift, axis=0)
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    nib.save(nib.Nifti1Image(truth, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "t" / "c1.nii.gz")
    nib.save(nib.Nifti1Image(pred, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "p" / "c1.nii.gz")
    assert main(["evaluate", "segmentation", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                 "--label-map", "5:1", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cases"][0]["dice"] == pytest.approx(expected_dice, abs=1e-6)
    assert report["cases"][0]["hd95"] == pytest.approx(expected_hd95, abs=1e-6)
    assert (tmp_path / "report.csv").read_text().startswith("case,dice,hd95,assd")
