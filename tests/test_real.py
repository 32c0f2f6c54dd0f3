"""The shipped configs on real scans: train a few iterations on the TotalSegmentator examples with their
real geometry (LPS MR, int16/int32, 3 mm, resampled to each config's spacing) and run the pipeline."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medgen.cli import main
from medgen.engines.train import train
from medgen.inference.translate import load_translator
from medgen.io import hu_int16, load_image
from tests.conftest import ROOT

COMMON = ["data.cache_workers=1", "train.checkpoint_every=2", "train.log_every=1", "train.amp=none"]


@pytest.fixture(scope="module")
def real_runs(real_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    datalist = out / "liver.json"
    datalist.write_text(json.dumps({"training": [{"image": str(real_dir / "example_ct_sm.nii.gz"),
                                                  "label": str(real_dir / "example_seg.nii.gz")}]}))
    translator = train(ROOT / "configs" / "cyclegan_2d.yaml", out / "cyclegan", [
        f"data.mri={real_dir / 'example_mr_sm.nii.gz'}", f"data.ct={real_dir / 'example_ct_sm.nii.gz'}",
        "data.patch_size=[64, 64]", "generator.ngf=4", "generator.n_blocks=1", "discriminator.ndf=4",
        "train.iterations=2", "train.image_every=2", *COMMON])
    segmenter = train(ROOT / "configs" / "segmenter_ct_liver.yaml", out / "segmenter", [
        f"data.images={datalist}", f"data.labels={datalist}", "data.label_map={5: 1}", "data.patch_size=[32, 32, 32]",
        "network.channels=[4, 8]", "network.num_res_units=0", "train.iterations=2", "train.batch_size=1",
        "train.num_workers=0", "inference.roi_size=[32, 32, 32]", *COMMON])
    return translator, segmenter


def test_real_scans_train_with_shipped_preprocessing(real_runs):
    translator, segmenter = real_runs
    norm = json.loads((translator / "norm.json").read_text())
    assert norm["ct_range"][0] < -900 and 100 < norm["ct_range"][1] < 2048  # HU percentiles: air, soft tissue/bone
    lo, hi = norm["mri_scale"]
    assert -47 <= lo < hi <= 833  # inside the real MR's intensity range [-47, 833]
    config = (segmenter / "config.yaml").read_text()
    assert "5: 1" in config and "1.5" in config
    assert (segmenter / "metrics.csv").read_text().count("\n") > 1


def test_real_mr_pipeline_with_real_trained_models(real_runs, real_dir, tmp_path):
    translator, segmenter = real_runs
    src = real_dir / "example_mr_sm.nii.gz"
    out = tmp_path / "liver.nii.gz"
    assert main(["pipeline", "mri-liver", "--translator", str(translator), "--segmenter", str(segmenter),
                 "--save-sct", str(src), str(out)]) == 0
    ref = nib.load(src)
    for path, dtype in ((out, np.uint8), (tmp_path / "liver_sct.nii.gz", None)):
        img = nib.load(path)
        assert img.shape == ref.shape == (117, 91, 20)
        np.testing.assert_array_equal(img.affine, ref.affine)
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (0, 2)
        if dtype is not None:
            assert img.get_data_dtype() == dtype
    sct, sct_ref = load_image(tmp_path / "liver_sct.nii.gz")
    assert sct_ref.orientation == "LPS" and sct.dtype == np.int16
    mri, mri_ref = load_image(src)
    expected, _ = load_translator(translator, device="cpu").translate(mri, mri_ref)
    np.testing.assert_array_equal(sct, hu_int16(expected))  # the translation itself, on the MR's own grid
    assert len(np.unique(sct)) > 10  # it varies with the MR, not a constant
