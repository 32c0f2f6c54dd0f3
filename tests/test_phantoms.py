from __future__ import annotations

import json

import numpy as np
import pytest

from medgen.io import load_image
from medgen.phantoms import LABELS, default_affine, make_case

SHAPE = (96, 96, 48)
AFFINE = default_affine(SHAPE, (4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed=3, case=i, shape=SHAPE, affine=AFFINE) for i in range(3)]


def test_deterministic_and_cases_differ(cases):
    again = make_case(seed=3, case=0, shape=SHAPE, affine=AFFINE)
    for key in ("ct", "mri", "labels"):
        np.testing.assert_array_equal(again[key], cases[0][key])
    assert not np.array_equal(cases[0]["labels"], cases[1]["labels"])
    other_seed = make_case(seed=4, case=0, shape=SHAPE, affine=AFFINE)
    assert not np.array_equal(other_seed["labels"], cases[0]["labels"])


@pytest.mark.parametrize(
    "label,lo,hi",
    [(1, 45, 72), (2, 35, 55), (3, 18, 45), (8, 35, 62), (9, -150, -70), (0, -1010, -985)],
)
def test_ct_hu_per_tissue(cases, label, lo, hi):
    from scipy import ndimage

    for c in cases:
        inner = ndimage.binary_erosion(c["labels"] == label)  # away from partial-volume edges
        assert lo < float(np.median(c["ct"][inner])) < hi, (LABELS[label], np.median(c["ct"][inner]))


def test_bone_and_gas(cases):
    for c in cases:
        bone = c["ct"][c["labels"] == 5]
        assert 250 < np.median(bone) < 1000 and bone.max() > 500
        assert np.median(c["ct"][c["labels"] == 7]) < -500


def test_anatomy_plausible(cases):
    voxel_ml = 4.0**3 / 1000
    for c in cases:
        labels = c["labels"]
        assert set(np.unique(labels)) <= set(LABELS)
        liver_ml = (labels == 1).sum() * voxel_ml
        assert 600 < liver_ml < 2500, liver_ml
        world = lambda m: (AFFINE[:3, :3] @ np.argwhere(m).mean(0) + AFFINE[:3, 3])  # noqa: E731
        assert world(labels == 1)[0] > 20  # liver on the patient's right (RAS +x)
        assert world(labels == 2)[0] < -20  # spleen on the left
        assert world(labels == 5)[1] < world(labels == 1)[1]  # spine posterior to the liver
        assert world(labels == 3)[0] > 0 > world(labels == 4)[0]


def test_mri_contrast_t1_and_t2(cases):
    c = cases[0]
    med = lambda img, lab: float(np.median(img[c["labels"] == lab]))  # noqa: E731
    t1 = c["mri"]
    assert med(t1, 9) > med(t1, 1) > med(t1, 8)  # fat bright, liver above muscle
    assert med(t1, 5) < med(t1, 1) and med(t1, 0) < 0.1 * med(t1, 9)  # bone and air dark
    t2 = make_case(seed=3, case=0, shape=SHAPE, affine=AFFINE, weighting="T2")
    np.testing.assert_array_equal(t2["labels"], c["labels"])
    assert med(t2["mri"], 3) > med(t2["mri"], 1)  # fluid-rich kidney brighter than liver on T2
    assert t1.dtype == np.float32 and (t1 >= 0).all()


def test_same_anatomy_on_an_oblique_grid():
    from .conftest import oblique_affine

    affine = oblique_affine(spacing=(4.0, 4.0, 4.0), angle_deg=10, origin=(-190, -150, -90))
    c = make_case(seed=3, case=0, shape=SHAPE, affine=affine)
    assert 600 < (c["labels"] == 1).sum() * 0.064 < 2500


def test_write_dataset(phantom_dir):
    info = json.loads((phantom_dir / "dataset.json").read_text())
    assert info["version"] and info["seed"] == 0 and info["labels"]["1"] == "liver"
    assert len(info["cases"]) == 6
    ct, ref = load_image(phantom_dir / info["cases"][0]["ct"])
    mri, mref = load_image(phantom_dir / info["cases"][0]["mri"])
    lab, lref = load_image(phantom_dir / info["cases"][0]["label"])
    assert ct.dtype == np.int16 and mri.dtype == np.float32 and lab.dtype == np.uint8
    assert ref.shape == mref.shape == lref.shape == (64, 64, 32)
    np.testing.assert_array_equal(ref.affine, lref.affine)
    assert ref.orientation == "RAS" and ref.spacing == (6.0, 6.0, 6.0)
