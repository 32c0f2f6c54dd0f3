"""Metrics against hand-computed values, and whole-volume inference against known networks."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.inference.volume import infer_volume
from medgen.metrics import body_mask, evaluate_pairs, mean_rows, segmentation_metrics, synthrad_metrics

CPU = torch.device("cpu")


# ---------------------------------------------------------------- SynthRAD image metrics


def test_synthrad_mae_psnr_by_hand():
    true = np.zeros((10, 10, 10))
    mask = np.zeros(true.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    pred = true + np.where(mask, 10.0, 1000.0)  # outside the mask: ignored
    m = synthrad_metrics(pred, true, mask)
    assert m["mae"] == pytest.approx(10.0)
    assert m["psnr"] == pytest.approx(10 * math.log10(4024.0**2 / 100.0))  # 52.09 dB, range 4024 HU


def test_synthrad_clips_both_volumes_to_the_hu_range():
    true = np.full((8, 8, 8), 3000.0)
    mask = np.ones(true.shape, bool)
    m = synthrad_metrics(true + 2000.0, true, mask)  # 5000 HU clips to 3000 HU: no error left
    assert m["mae"] == 0 and m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0)
    m = synthrad_metrics(np.full(true.shape, -3000.0), np.full(true.shape, -1000.0), mask)
    assert m["mae"] == pytest.approx(24.0)  # -3000 clips to -1024


def test_synthrad_ssim_drops_with_structural_error_and_refuses_an_empty_mask():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 200, (16, 16, 16))
    mask = np.ones(true.shape, bool)
    assert synthrad_metrics(true, true, mask)["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert synthrad_metrics(rng.normal(0, 200, true.shape), true, mask)["ssim"] < 0.3  # unrelated noise
    with pytest.raises(ValueError, match="empty mask"):
        synthrad_metrics(true, true, np.zeros(true.shape, bool))


def test_body_mask_keeps_the_largest_component_and_fills_holes():
    ct = np.full((20, 20, 3), -1000.0)
    ct[2:12, 2:12] = 40.0  # the body ...
    ct[5:8, 5:8] = -1000.0  # ... with air inside (bowel gas): filled
    ct[16:18, 16:18] = 40.0  # a table or an arm: not the largest component
    mask = body_mask(ct)
    assert mask[2:12, 2:12].all() and mask.sum() == 10 * 10 * 3


# ---------------------------------------------------------------- segmentation metrics


def test_dice_of_shifted_cubes_by_hand():
    a = np.zeros((12, 12, 12), bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 2, axis=0)  # overlap 2 x 4 x 4 = 32 of 64 voxels each
    assert segmentation_metrics(a, b, (1, 1, 1), distances=False) == {"dice": pytest.approx(0.5)}


def test_surface_distances_of_single_voxels_in_mm():
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[1, 4, 4] = True
    b[4, 4, 4] = True  # 3 voxels apart along an axis of 2 mm voxels
    m = segmentation_metrics(a, b, (2.0, 1.0, 1.0))
    assert m == {"dice": 0.0, "hd95": pytest.approx(6.0), "assd": pytest.approx(6.0)}


def test_empty_mask_conventions():
    empty, full = np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool)
    assert segmentation_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    assert segmentation_metrics(full, empty, (1, 1, 1)) == {"dice": 0.0, "hd95": math.inf, "assd": math.inf}


# ---------------------------------------------------------------- paired files


def test_evaluate_pairs_with_a_baseline(tmp_path):
    ct = np.full((12, 12, 8), -1000, np.int16)
    ct[2:10, 2:10] = 50
    mri = np.where(ct > -500, 300.0, 0.0).astype(np.float32)
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    for name, data in (("mri", mri), ("ct", ct)):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}_case_3.nii.gz")
    pairs = [(tmp_path / "mri_case_3.nii.gz", tmp_path / "ct_case_3.nii.gz")]
    rows = evaluate_pairs(lambda m, ref: np.where(m > 0, 70.0, -1000.0), pairs, baseline=lambda m: m - 500.0)
    assert rows[0]["case"] == "mri_case_3"
    assert rows[0]["mae"] == pytest.approx(20.0) and rows[0]["identity_mae"] == pytest.approx(250.0)
    assert mean_rows(rows + [{**rows[0], "mae": 40.0}])["mae"] == pytest.approx(30.0)


# ---------------------------------------------------------------- whole-volume inference


class Recorder(torch.nn.Module):
    """Pointwise ``2x + 1`` (channel 0) and ``-x`` (channel 1), recording the shapes it is given."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([2 * x + 1, -x], dim=1)


def test_infer_volume_2d_slices_padded_and_cropped_back():
    volume = torch.rand(1, 13, 11, 5) * 2 - 1
    net = Recorder()
    out = infer_volume(net, volume, 2, CPU, batch_size=2, multiple=4)
    assert out.shape == (2, 13, 11, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], 2 * volume[0] + 1)
    torch.testing.assert_close(out[1], -volume[0])
    assert net.shapes == [(2, 1, 16, 12), (2, 1, 16, 12), (1, 1, 16, 12)]  # axial slices, 2 a pass


def test_infer_volume_2_5d_gives_each_slice_its_neighbours():
    volume = torch.rand(1, 9, 7, 4) * 2 - 1
    net = Recorder()
    out = infer_volume(net, volume, 2, CPU, batch_size=3, multiple=4, slices=3)
    assert out.shape == (6, 9, 7, 4) and net.shapes == [(3, 3, 12, 8), (1, 3, 12, 8)]
    padded = torch.cat([torch.full((9, 7, 1), -1.0), volume[0], torch.full((9, 7, 1), -1.0)], dim=-1)
    for c in range(3):  # channel c: the slice c - 1 away, -1 beyond the volume
        torch.testing.assert_close(out[c], 2 * padded[..., c:c + 4] + 1)
    with pytest.raises(ValueError, match="one-channel"):
        infer_volume(net, torch.zeros(2, 9, 7, 4), 2, CPU, slices=3)


@pytest.mark.parametrize("shape", [(20, 18, 9), (6, 6, 6)], ids=["larger", "smaller than the window"])
def test_infer_volume_3d_sliding_window_blends_exactly(shape):
    volume = torch.rand(1, *shape) * 2 - 1
    out = infer_volume(Recorder(), volume, 3, CPU, batch_size=4, roi_size=(8, 8, 8), overlap=0.5)
    assert out.shape == (2, *shape)
    torch.testing.assert_close(out[0], 2 * volume[0] + 1, atol=1e-5, rtol=1e-5)
