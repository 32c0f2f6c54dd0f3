"""`medgen evaluate translation` against metrics recomputed here, the CSV/JSON report and the demo's HTML report."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import torch
import pytest

from medgen.cli import main
from medgen.data.datalist import image_label_pairs
from medgen.evaluation.report import write_demo_report, write_report
from medgen.inference.translate import load_translator
from medgen.io import load_image, save_like
from medgen.metrics import body_mask, synthrad_metrics
from medgen.phantoms import write_dataset


def test_evaluate_translation_cli(cyclegan_run, phantom_dir, tmp_path, capsys):
    ds = phantom_dir / "dataset.json"
    out = tmp_path / "translation"
    assert main(["evaluate", "translation", "--run", str(cyclegan_run), "--mri", f"{ds}#cases", "--ct", f"{ds}#cases",
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["cases"]
    assert [r["case"] for r in rows] == [f"case_{i:03d}" for i in range(6)]
    # case 0 recomputed here: the translator and the identity baseline against the paired CT, inside the body
    mri_path, ct_path = image_label_pairs(f"{ds}#cases", f"{ds}#cases", "mri", "ct")[0]
    translator = load_translator(cyclegan_run, device="cpu")
    mri, ref = load_image(mri_path)
    ct = load_image(ct_path)[0]
    mask = body_mask(ct)
    expected = synthrad_metrics(translator.translate(mri, ref)[0], ct, mask)
    baseline = synthrad_metrics(translator.identity(mri), ct, mask)
    for key in ("mae", "psnr", "ssim"):
        assert rows[0][key] == pytest.approx(expected[key], rel=1e-6)
        assert rows[0][f"identity_{key}"] == pytest.approx(baseline[key], rel=1e-6)
    assert report["summary"]["mae_mean"] == pytest.approx(np.mean([r["mae"] for r in rows]))
    assert f"MAE {report['summary']['mae_mean']:.1f} HU" in capsys.readouterr().out
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("case,mae,psnr,ssim,identity_mae") and len(lines) == 1 + 6 + 2


def test_write_report_rows_mean_and_sd(tmp_path):
    rows = [{"case": "a", "dice": 0.5, "hd95": 2.0}, {"case": "b", "dice": 0.7, "hd95": math.inf}]
    csv_path, json_path = write_report(rows, tmp_path / "r", extra={"note": "x"})
    table = list(csv.reader(csv_path.open()))
    assert table == [["case", "dice", "hd95"], ["a", "0.5000", "2.0000"], ["b", "0.7000", "inf"],
                     ["mean", "0.6000", "2.0000"], ["sd", "0.1000", "0.0000"]]
    report = json.loads(json_path.read_text())
    assert report["summary"]["hd95_n_inf"] == 1 and report["note"] == "x" and len(report["cases"]) == 2


def test_demo_report_page(tmp_path):
    out = tmp_path / "demo"
    info = write_dataset(out / "phantoms", cases=2, seed=1, shape=(48, 48, 16), spacing=(8.0, 8.0, 8.0), test=1)
    name = info["test"][0]["name"]
    ct, ref = load_image(out / "phantoms" / info["test"][0]["ct"])
    liver = load_image(out / "phantoms" / info["test"][0]["label"])[0] == 1
    save_like(ct, ref, out / "liver" / "sct" / f"{name}.nii.gz")
    save_like(liver.astype(np.uint8), ref, out / "liver" / f"{name}.nii.gz")
    figures = {"translation": {"mae": 51.4, "psnr": 27.5, "ssim": 0.81, "identity_mae": 212.0},
               "pipeline_dice": 0.894, "baseline_dice": 0.412}
    page = write_demo_report(out, [{"case": name, "mae": 51.4}], [{"case": name, "dice": 0.9, "mask": "x"}], figures)
    text = page.read_text()
    assert "MAE 51.4 HU" in text and "0.8940" in text and "0.4120" in text and "Identity baseline" in text
    assert f"<td>{name}</td>" in text and "<th>mask</th>" not in text  # the mask path column is left out
    assert f'src="figures/{name}.png"' in text and (out / "figures" / f"{name}.png").stat().st_size > 5000
    assert "Anatomy synthesizer" not in text  # no synthesis figures, no section


def _relabelled(src, dst, mapping):
    dst.mkdir()
    for path in sorted(src.glob("*.nii.gz")):
        labels, ref = load_image(path)
        out = np.zeros_like(labels)
        for a, b in mapping.items():
            out[labels == a] = b
        save_like(out, ref, dst / path.name)
    return dst


def test_evaluate_translation_unpaired(cyclegan_run, phantom_dir, tmp_path, capsys):
    from medgen.evaluation.translation import ORGANS, organ_medians

    # the phantoms' liver 1, spleen 2, kidneys 3 4 written as CHAOS (MRI) and BTCV (CT) label values
    chaos = _relabelled(phantom_dir / "labels", tmp_path / "mri_labels", {1: 1, 2: 4, 3: 2, 4: 3})
    btcv = _relabelled(phantom_dir / "labels", tmp_path / "ct_labels", {1: 6, 2: 1, 3: 2, 4: 3})
    out = tmp_path / "report.json"
    assert main(["evaluate", "translation", "--unpaired", "--run", str(cyclegan_run), "--mri", str(phantom_dir / "mri"),
                 "--mri-labels", str(chaos), "--ct", str(phantom_dir / "ct"), "--ct-labels", str(btcv),
                 "--out", str(out), "--features", "ct-liver", "--features", "mri-liver", "--bootstrap", "4"]) == 0
    report = json.loads(out.read_text())
    cases = len(list((phantom_dir / "mri").glob("*.nii.gz")))
    methods = ["histmatch", "identity", "translator"]
    assert sorted(report["summary"]) == ["histmatch", "identity", "real_vs_real", "translator"]
    assert len(report["cases"]) == 3 * cases
    liver = [organ_medians(load_image(p)[0], load_image(btcv / p.name)[0], {"liver": 6})["liver"]
             for p in sorted((phantom_dir / "ct").glob("*.nii.gz"))]
    assert report["ct_population"]["liver"]["median"] == pytest.approx(float(np.median(liver)))
    for method in methods:
        r = report["summary"][method]
        assert set(r["organs"]) == {name for name, _, _ in ORGANS} and 0.0 <= r["dice"] <= 1.0
        liver_row = r["organs"]["liver"]
        assert liver_row["abs_diff"] == pytest.approx(abs(liver_row["median"] - report["ct_population"]["liver"]["median"]))
    # realism on the shipped ct-liver's features, and on mri-liver's: every method and the real-vs-real floor
    printed = capsys.readouterr().out
    assert "translator: liver Dice of ct-liver" in printed
    for method in ("translator", "identity", "histmatch", "real_vs_real"):
        r = report["summary"][method]
        assert list(r["by_features"]) == ["ct-liver", "mri-liver"]
        assert (r["fid"], r["kid"]) == (r["by_features"]["ct-liver"]["fid"], r["by_features"]["ct-liver"]["kid"])
        assert r["fid"] >= 0.0 and np.isfinite(r["kid"]) and r["by_features"]["mri-liver"]["fid"] != r["fid"]
        # the common field's figures: the whole slices' where it spans them (384 mm), others where it does not
        fov_fid = r["by_features"]["ct-liver"]["fid_fov"]
        assert (fov_fid == r["fid"]) == (report["realism"]["fov_mm"] == 384)
        assert np.isfinite(r["by_features"]["mri-liver"]["kid_fov"])
        assert f"{method}: " in printed and "(mri-liver)" in printed.split(f"{method}: ", 1)[1].splitlines()[0]
    assert report["summary"]["identity"]["fid"] > report["summary"]["real_vs_real"]["fid"]  # a raw MRI is no CT
    # the bootstrap: an interval per FID; differences between the methods on the same MRIs, not to real vs real
    for method in methods:
        r = report["summary"][method]["by_features"]["mri-liver"]
        assert r["fid_ci"][0] <= r["fid_ci"][1] and r["fid_fov_ci"][0] <= r["fid_fov_ci"][1]
        assert sorted(r["fid_delta_ci"]) == sorted(set(methods) - {method})
        for other in set(methods) - {method}:  # paired draws: A - B is -(B - A) in every draw, so the intervals mirror
            lo, hi = report["summary"][other]["by_features"]["mri-liver"]["fid_delta_ci"][method]
            assert r["fid_delta_ci"][other] == pytest.approx([-hi, -lo], abs=1e-9)
    assert report["summary"]["real_vs_real"]["by_features"]["ct-liver"]["fid_delta_ci"] == {}
    assert report["realism"]["bootstrap"] == 4 and "FID, 95 % interval (ct-liver)" in (tmp_path / "report.html").read_text()
    fov = report["realism"]["fov_mm"]  # the common field: a multiple of 16 voxels of 2 mm, inside the 384 mm slices
    assert fov % 32 == 0 and 32 <= fov <= 384 and f"{fov:.0f} mm square" in report["realism"]["slices"]
    pictures = sorted((tmp_path / "report_qc").glob("*.png"))
    assert len(pictures) == cases and pictures[0].stat().st_size > 2000
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") == cases and "real_vs_real" in page and "right_kidney" in page
    assert "FID (ct-liver)" in page and "FID (mri-liver)" in page


def test_realism_of_identical_slices_is_zero():
    from medgen.evaluation.synthesis import DeepFeatures
    from medgen.evaluation.translation import realism
    from medgen.runtime import resolve_device

    features = DeepFeatures("ct-liver", resolve_device("cpu"))
    x = torch.linspace(-200, 300, 96 * 96).reshape(1, 1, 96, 96).repeat(40, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 30
    r = realism(features, {"same": x, "inverted": -x}, x)
    same = r["same"]
    assert same["fid"] == pytest.approx(0.0, abs=1e-3) and same["kid"] == pytest.approx(0.0, abs=1e-3)
    assert r["inverted"]["fid"] > 1.0  # contrast inverted: far from the real slices
    assert same["fid_mean"] == pytest.approx(0.0, abs=1e-6) and same["spread"] == pytest.approx(1.0)
    one = realism(features, {"one": x[:1].repeat(40, 1, 1, 1)}, x)["one"]  # every slice alike: no spread at all
    f, f1 = features(x), features(x[:1])
    assert one["spread"] == pytest.approx(0.0, abs=1e-9)
    assert one["fid_mean"] == pytest.approx(float(((f1[0] - f.mean(0)) ** 2).sum()), rel=1e-4)
    assert one["fid"] > one["fid_mean"]  # and a covariance term: the real slices' spread, missing
    cases = np.repeat(np.arange(4), 10)  # four cases of ten slices each: their means differ by the noise alone
    grouped = realism(features, {"same": x}, x, groups={"same": cases, "real": cases})
    assert grouped["same"]["spread_between"] == pytest.approx(grouped["real"]["spread_between"])
    assert 0 < grouped["same"]["spread_between"] < 0.5 * grouped["same"]["spread"]


def test_realism_judges_every_set_in_the_range_the_real_ct_holds():
    """A CT stored clipped to [-125, 275] (BTCV): a synthetic CT whose air lies below that floor, scanned in a smaller
    field (NaN beyond it), is the same image in that range, so FID 0; its tissue changed is not."""
    from medgen.evaluation.synthesis import DeepFeatures
    from medgen.evaluation.translation import realism, stored_range
    from medgen.runtime import resolve_device

    features = DeepFeatures("ct-liver", resolve_device("cpu"))
    g = torch.Generator().manual_seed(0)
    real = torch.full((24, 1, 96, 96), -125.0)
    real[:, :, 24:72, 20:76] = (torch.rand(24, 1, 48, 56, generator=g) * 350 - 100).round()  # a body: fat to bone
    real[:, :, 40, 40:44] = 275.0  # and the ceiling that the CTs were clipped to
    real[:, :, :4] = float("nan")  # each CT scanned a little less than the grid
    fake = real.clone()
    fake[fake == -125.0] = -175.0  # the synthetic CT's air, below any value the real CTs hold
    fake[:, :, :, :12] = fake[:, :, :, -12:] = float("nan")  # another field of view
    assert stored_range(real) == (-125.0, 275.0)
    denser = fake.clone()
    denser[:, :, 24:72, 20:76] += 60  # its tissue 60 HU denser
    r = realism(features, {"same": fake, "denser": denser}, real)
    assert r["same"]["fid"] == pytest.approx(0.0, abs=1e-3) and r["denser"]["fid"] > 0.05


def test_bootstrap_fid_resamples_cases_and_pairs_the_sets_on_the_same_cases():
    """Cases that are all alike give the same FID in every resample (the interval is the FID); two sets on the same
    cases are resampled together (their difference's interval is exactly 0 for equal features); a set on other cases
    gets no difference."""
    from monai.metrics import FIDMetric

    from medgen.evaluation.translation import bootstrap_fid

    g = torch.Generator().manual_seed(0)
    case = torch.randn(3, 8, generator=g)  # one case: three slices of 8 features
    alike = case.repeat(4, 1)  # four identical cases
    ref = (torch.randn(3, 8, generator=g) + 1).repeat(5, 1)
    varied = torch.randn(12, 8, generator=g)
    groups = {"alike": np.repeat(np.arange(4), 3), "twin": np.repeat(np.arange(4), 3), "other": np.repeat(np.arange(6), 2),
              "real": np.repeat(np.arange(5), 3)}
    out = bootstrap_fid({"alike": alike, "twin": alike.clone(), "other": varied}, ref, groups, draws=20)
    fid = float(FIDMetric()(alike, ref))
    assert out["alike"][0] == pytest.approx([fid, fid], rel=1e-4)
    assert out["alike"][1] == {"twin": [0.0, 0.0]} and out["twin"][1] == {"alike": [0.0, 0.0]}
    assert out["other"][1] == {} and out["other"][0][0] < out["other"][0][1]  # its 6 cases differ: the FID varies


def test_unpaired_evaluation_refuses_labels_on_another_grid_writing_nothing(cyclegan_run, phantom_dir, tmp_path,
                                                                            capsys):
    labels = _relabelled(phantom_dir / "labels", tmp_path / "mri_labels", {1: 1, 2: 4, 3: 2, 4: 3})
    bad = sorted(labels.glob("*.nii.gz"))[-1]
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), bad)  # one slice short: another grid
    out = tmp_path / "report.json"
    assert main(["evaluate", "translation", "--unpaired", "--run", str(cyclegan_run), "--mri", str(phantom_dir / "mri"),
                 "--mri-labels", str(labels), "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medgen: error:") and bad.name in err[0]
    assert not out.exists() and not (tmp_path / "report_qc").exists() and not (tmp_path / "report.html").exists()


def test_unpaired_evaluation_refuses_features_that_are_no_segmenter_run(cyclegan_run, phantom_dir, tmp_path, capsys):
    """--features names a medgen segmenter run: anything else is refused in one line before a volume is read."""
    labels = _relabelled(phantom_dir / "labels", tmp_path / "mri_labels", {1: 1, 2: 4, 3: 2, 4: 3})
    out = tmp_path / "report.json"
    assert main(["evaluate", "translation", "--unpaired", "--run", str(cyclegan_run), "--mri", str(phantom_dir / "mri"),
                 "--mri-labels", str(labels), "--ct", str(phantom_dir / "ct"), "--ct-labels", str(phantom_dir / "labels"),
                 "--features", str(cyclegan_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medgen: error:") and str(cyclegan_run) in err[0]
    assert not out.exists() and not (tmp_path / "report_qc").exists()


def test_realism_in_the_common_field_of_view_ignores_where_each_scan_ends():
    """Two slice sets with the same content inside a centred square and scans that end in different places: the
    whole slices' FID sees the edges, the common field of view's does not (the same features, FID 0)."""
    from medgen.evaluation.synthesis import DeepFeatures
    from medgen.evaluation.translation import realism, scanned_field

    g = torch.Generator().manual_seed(0)
    content = 60 + 40 * torch.randn(6, 1, 64, 64, generator=g)
    wide, narrow = content.clone(), content.clone()
    narrow[..., :, :12] = narrow[..., :, 52:] = float("nan")  # a scan 40 voxels wide: NaN beyond it
    side = scanned_field(wide, narrow)
    assert side == 32  # 40 voxels scanned around the centre -> the largest multiple of 16 inside
    r = realism(DeepFeatures("ct-liver", torch.device("cpu")), {"narrow": narrow}, wide, side)["narrow"]
    assert r["fid_fov"] == pytest.approx(0.0, abs=1e-4) and r["fid"] > 10 * max(r["fid_fov"], 1e-4)
