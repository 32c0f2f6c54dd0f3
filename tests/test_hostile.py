"""Issue #13: hostile and broken inputs get one line, ``medgen: error: <file>: <problem>``, exit status 2, no
traceback, nothing written and the inputs untouched; huge claims are refused before anything is read."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import pytest

from medgen.data.datalist import image_label_pairs, list_volumes
from medgen.errors import MedgenError
from medgen.io import load_image
from medgen.validate import check_output_of
from tests.bad_inputs import binary_nifti, dicom_series, hostile_nifti, save, write_corpus
from tests.conftest import ROOT, config, tiny

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_PROGRESS": "0"}


def medgen(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgen", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=ROOT)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (or the file itself) -> its SHA-256."""
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def assert_refused(proc: subprocess.CompletedProcess, name: str | Path, cause: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"medgen: error: {name}"), lines[0]
    assert re.search(cause, lines[0]), lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_corpus(tmp_path_factory.mktemp("bad"))


# ------------------------------------------------------------------- every bad file through `info`


def test_corpus_through_info_one_line_each(corpus):
    before = snapshot(next(iter(corpus.values()))[0].parent)
    for name, (path, cause) in corpus.items():
        if not name.startswith("thin") and name != "zeros":  # readable; only whole-volume inference refuses them
            assert_refused(medgen("info", path), path, cause)
    assert snapshot(next(iter(corpus.values()))[0].parent) == before


@pytest.mark.parametrize("command, name", [
    ("translate", "huge_nii"), ("translate", "complex"), ("translate", "thin_z"),
    ("segment", "rgb"), ("segment", "huge_niigz"),
    ("pipeline", "complex"), ("pipeline", "thin_y"),
    ("translate", "zeros"), ("pipeline", "zeros"),
    ("translate", "dicom_gap"), ("segment", "dicom_two_series"), ("pipeline", "dicom_truncated"),
])
def test_corpus_through_inference_commands(command, name, corpus, cyclegan_run, segmenter_run, tmp_path):
    path, cause = corpus[name]
    before = snapshot(path)
    out = tmp_path / "out" / "result.nii.gz"
    args = {"translate": ["translate", cyclegan_run, path, out, "--device", "cpu"],
            "segment": ["segment", segmenter_run, path, out, "--device", "cpu"],
            "pipeline": ["pipeline", "mri-liver", "--translator", cyclegan_run, "--segmenter", segmenter_run, path,
                         out, "--device", "cpu"]}[command]
    assert_refused(medgen(*args), path, cause)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert snapshot(path) == before


def test_clean_dicom_series_reads_with_its_slice_spacing(tmp_path):
    array, ref = load_image(dicom_series(tmp_path / "ok"))
    assert array.shape == (16, 16, 6) and ref.spacing[2] == pytest.approx(2.0) and ref.modality == "CT"
    assert [int(array[0, 0, k]) for k in range(6)] == [10 * k for k in range(6)]  # slices in position order


# ------------------------------------------------------------------- hostile headers: fast, small


@pytest.mark.parametrize("name, shape", [("claim.nii", (20000, 20000, 20000)), ("claim.nii.gz", (20000,) * 3),
                                         ("g1024.nii.gz", (1024, 1024, 1024)), ("g1024.nii", (1024, 1024, 1024))])
def test_hostile_header_refused_before_reading(name, shape, tmp_path):
    path = hostile_nifti(tmp_path / name, shape)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(MedgenError, match="over the limit|truncated"):
        load_image(path)
    seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 200e6


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    path = save(tmp_path / "v.nii.gz", np.ones((8, 8, 8), np.float32))
    monkeypatch.setenv("MEDGEN_MAX_VOXELS", "100")
    with pytest.raises(MedgenError, match="header claims 512 voxels .* over the limit of 100"):
        load_image(path)
    monkeypatch.setenv("MEDGEN_MAX_VOXELS", "512")
    assert load_image(path)[0].shape == (8, 8, 8)


# ------------------------------------------------------------------- dtypes


def test_nibabel_header_fixes_are_quiet(tmp_path):
    path = save(tmp_path / "pix0.nii", np.ones((4, 4, 4), np.float32))
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1] = 0: nibabel logs a fix on stderr
    path.write_bytes(bytes(raw))
    proc = medgen("info", path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_bool_nifti_reads_quietly_as_uint8(tmp_path):
    path = binary_nifti(tmp_path / "mask.nii")
    proc = medgen("info", path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    array, _ = load_image(path)
    assert array.dtype == np.uint8 and set(np.unique(array)) == {0, 1}
    assert array.reshape(-1, order="F")[:4].tolist() == [1, 0, 0, 1]


# ------------------------------------------------------------------- run directories


@pytest.mark.parametrize("norm, cause", [(None, "norm.json: missing: .*copy the run's norm.json back"),
                                         ("{", "norm.json: corrupt intensity references")])
def test_translator_run_without_or_with_corrupt_norm(norm, cause, cyclegan_run, tmp_path, phantom_dir):
    run = shutil.copytree(cyclegan_run, tmp_path / "run", ignore=shutil.ignore_patterns("tb", "norm.json"))
    if norm is not None:
        (run / "norm.json").write_text(norm)
    proc = medgen("translate", run, phantom_dir / "mri" / "case_000.nii.gz", tmp_path / "sct.nii.gz", "--device", "cpu")
    assert_refused(proc, run / "norm.json", cause)
    assert not (tmp_path / "sct.nii.gz").exists()


# ------------------------------------------------------------------- outputs


@pytest.mark.parametrize("where, cause", [("/proc/medgen_out/sct.nii.gz", r"not an output location \(under /proc\)"),
                                          ("/sys/medgen/sct.nii.gz", r"not an output location \(under /sys\)"),
                                          ("FILE/sct.nii.gz", "is a file, not a folder")])
def test_unwritable_output_refused_before_the_work(where, cause, tmp_path, phantom_dir):
    (tmp_path / "FILE").write_text("a regular file")
    out = where.replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(MedgenError, match=cause):
        check_output_of(phantom_dir / "mri" / "case_000.nii.gz", out, single=True)


def test_output_under_proc_through_translate(cyclegan_run, phantom_dir):
    proc = medgen("translate", cyclegan_run, phantom_dir / "mri" / "case_000.nii.gz", "/proc/medgen/sct.nii.gz")
    assert_refused(proc, "/proc/medgen/sct.nii.gz", "not an output location")


@pytest.mark.parametrize("command", ["train", "synth"])
def test_output_folder_of_train_and_synth_checked_first(command, tmp_path, phantom_dir):
    (tmp_path / "FILE").write_text("a regular file")
    out = tmp_path / "FILE" / "run"
    args = {"train": ["train", config(2), "--out", out], "synth": ["synth", tmp_path, out]}[command]
    assert_refused(medgen(*args), out, "is a file, not a folder")


def test_write_error_is_one_line(tmp_path, monkeypatch):
    from medgen.io import atomic_write

    def disk_full(tmp):
        raise OSError(28, "No space left on device")
    with pytest.raises(MedgenError, match="cannot write .*No space left on device"):
        atomic_write(tmp_path / "x.nii.gz", disk_full)
    assert list(tmp_path.iterdir()) == []


def test_pipeline_out_equal_in_refused_up_front(cyclegan_run, segmenter_run, phantom_dir, tmp_path):
    src = shutil.copytree(phantom_dir / "mri", tmp_path / "mri")
    before = snapshot(src)
    proc = medgen("pipeline", "mri-liver", "--translator", cyclegan_run, "--segmenter", segmenter_run, src, src,
                  "--device", "cpu")
    assert_refused(proc, src, "output folder is the input folder")
    assert snapshot(src) == before


def test_pipeline_foreign_summary_is_one_line(cyclegan_run, segmenter_run, phantom_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("[1, 2]")  # a bare list, not a medgen summary
    proc = medgen("pipeline", "mri-liver", "--translator", cyclegan_run, "--segmenter", segmenter_run,
                  phantom_dir / "mri", out, "--device", "cpu")
    assert_refused(proc, out / "summary.json", "not a medgen pipeline summary .*--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


# ------------------------------------------------------------------- label maps


def test_truth_on_another_grid_refused_before_the_mask(cyclegan_run, segmenter_run, phantom_dir, tmp_path):
    mri = phantom_dir / "mri" / "case_000.nii.gz"
    _, ref = load_image(mri)
    import nibabel as nib

    shifted = nib.load(phantom_dir / "labels" / "case_000.nii.gz")
    affine = shifted.affine.copy()
    affine[0, 3] += 30.0  # 30 mm off
    truth = tmp_path / "truth.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), affine), truth)
    out = tmp_path / "mask.nii.gz"
    proc = medgen("pipeline", "mri-liver", "--translator", cyclegan_run, "--segmenter", segmenter_run, mri, out,
                  "--truth", truth, "--device", "cpu")
    assert_refused(proc, truth, "grid differs from .*affines differ by up to 30")
    assert not out.exists()


def test_float_label_values_refused(tmp_path):
    from medgen.validate import check_label_values

    path = save(tmp_path / "soft.nii.gz", np.full((4, 4, 4), 0.6, np.float32))
    with pytest.raises(MedgenError, match="soft.nii.gz: not a label map: non-integer values"):
        check_label_values(load_image(path)[0], path)
    assert check_label_values(np.array([0.0, 1.0, 2.0]), path) is not None


def test_evaluate_segmentation_refuses_float_labels(tmp_path):
    for name in ("pred", "truth"):
        (tmp_path / name).mkdir()
    labels = np.zeros((8, 8, 8), np.float32)
    labels[2:6, 2:6, 2:6] = 1.0
    save(tmp_path / "pred" / "case.nii.gz", labels)
    save(tmp_path / "truth" / "case.nii.gz", labels * 1.7)  # resampled with interpolation: 0 and 1.7
    proc = medgen("evaluate", "segmentation", "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                  "--out", tmp_path / "report")
    assert_refused(proc, tmp_path / "truth" / "case.nii.gz", r"not a label map: non-integer values \(e.g. 1.7\)")
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------- datalists


@pytest.mark.parametrize("content, cause", [
    (["../../../../etc/passwd"], r"entry 0 \('../../../../etc/passwd'\) points outside the datalist's folder"),
    ({"training": [{"image": "missing.nii.gz", "label": "missing.nii.gz"}]}, r"entry 0 \('.*missing.nii.gz'\): no such"),
    ({"training": [{"image": "notes.txt", "label": "notes.txt"}]}, r"entry 0 \('.*notes.txt'\): not a volume"),
    ({"training": [5]}, "entry 0: 'image' must be a path, not 5"),
    ({"training": [{"label": "x.nii.gz"}]}, "entry 0 .* has no 'image'"),
])
def test_datalist_checked_up_front(content, cause, tmp_path):
    (tmp_path / "notes.txt").write_text("not a volume")
    path = tmp_path / "list.json"
    path.write_text(json.dumps(content))
    with pytest.raises(MedgenError, match=f"^{re.escape(str(path))}: datalist {cause}"):
        image_label_pairs(path, path)


def test_datalist_absolute_paths_outside_are_allowed(tmp_path, phantom_dir):
    path = tmp_path / "sub" / "list.json"
    path.parent.mkdir()
    path.write_text(json.dumps([str(phantom_dir / "mri" / "case_000.nii.gz")]))
    assert list_volumes(path) == [phantom_dir / "mri" / "case_000.nii.gz"]


# ------------------------------------------------------------------- configs


@pytest.mark.parametrize("override, cause", [("data.patch_size=[1,", "override 'data.patch_size=\\[1,': value is not "
                                                                        "valid YAML"),
                                             ("train.iterations=-5", "'train.iterations' must be a positive integer, "
                                                                     "not -5")])
def test_bad_config_refused_before_the_run_directory(override, cause, tmp_path, phantom_dir):
    run = tmp_path / "run"
    proc = medgen("train", config(2), "--out", run, *[a for s in tiny(phantom_dir) for a in ("--set", s)],
                  "--set", override)
    assert_refused(proc, config(2), cause)
    assert not run.exists()


def test_nan_volume_in_a_training_datalist_is_one_line(tmp_path, phantom_dir):
    import nibabel as nib

    data = tmp_path / "data"
    data.mkdir()
    for name in ("case_000", "case_001"):
        shutil.copy(phantom_dir / "mri" / f"{name}.nii.gz", data / f"{name}.nii.gz")
    img = nib.load(data / "case_001.nii.gz")
    array = np.asarray(img.dataobj, np.float32)
    array[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(array, img.affine, img.header), data / "case_001.nii.gz")
    (data / "list.json").write_text(json.dumps(["case_000.nii.gz", "case_001.nii.gz"]))
    run = tmp_path / "run"
    sets = [a for s in tiny(phantom_dir) for a in ("--set", s)]
    proc = medgen("train", config(2), "--out", run, *sets, "--set", f"data.mri={data / 'list.json'}")
    assert_refused(proc, data / "case_001.nii.gz", r"1 non-finite \(NaN/Inf\) voxels")
    assert not run.exists()


@pytest.mark.parametrize("command", ["translate", "segment"])
def test_folder_run_reports_each_bad_file_and_goes_on(command, cyclegan_run, segmenter_run, phantom_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((phantom_dir / "mri").glob("*.nii.gz"))[0]
    shutil.copy(good, folder / "a_good.nii.gz")
    hostile_nifti(folder / "b_huge.nii.gz", (20000, 20000, 20000))
    save(folder / "c_complex.nii.gz", np.ones((8, 8, 8), np.complex64))
    shutil.copy(good, folder / "d_good.nii.gz")
    before = snapshot(folder)
    out = tmp_path / "out"
    run = cyclegan_run if command == "translate" else segmenter_run
    proc = medgen(command, run, folder, out, "--device", "cpu")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 2, lines
    assert_refused(subprocess.CompletedProcess([], 2, "", lines[0]), folder / "b_huge.nii.gz", "header claims")
    assert_refused(subprocess.CompletedProcess([], 2, "", lines[1]), folder / "c_complex.nii.gz", "complex voxels")
    extra = ["index.html", "qc"] if command == "segment" else []  # segment's QC page of the good cases
    assert sorted(p.name for p in out.iterdir()) == ["a_good.nii.gz", "d_good.nii.gz", *extra]
    assert "2 cases" in proc.stdout and "2 failed" in proc.stdout
    assert snapshot(folder) == before


def test_judgement_calls_accepted_and_said(tmp_path):
    import nibabel as nib

    i64 = tmp_path / "i64.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.int64).reshape(8, 8, 8), np.eye(4), dtype=np.int64), i64)
    four = save(tmp_path / "4d.nii.gz", np.ones((8, 8, 8, 1), np.float32))
    nocode = tmp_path / "nocode.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), None), nocode)
    out = medgen("info", i64, four, nocode)
    assert out.returncode == 0, out.stderr
    assert "dtype:       int64 (accepted" in out.stdout
    assert "(stored 8 x 8 x 8 x 1: singleton axes beyond the third dropped, accepted)" in out.stdout
    assert "codes 0/0; medgen uses the pixdim (warning" in out.stdout
    assert out.stderr.strip().splitlines() == [
        f"medgen: warning: {nocode}: no qform or sform code: orientation taken from pixdim, as nibabel does"]


@pytest.mark.parametrize("command", ["translate", "segment", "pipeline"])
def test_whole_corpus_as_one_folder_run(command, corpus, cyclegan_run, segmenter_run, tmp_path):
    """Every corpus file a folder run picks up gets its own line with its cause; the good ones are written."""
    folder = next(iter(corpus.values()))[0].parent
    listed = set(list_volumes(folder))
    readable = ("thin_z", "thin_y", "zeros") if command == "segment" else ()  # only whole-volume translation refuses
    expected = {p: cause for name, (p, cause) in corpus.items() if p in listed and name not in readable}
    before = snapshot(folder)
    out = tmp_path / "out"
    args = {"translate": ["translate", cyclegan_run], "segment": ["segment", segmenter_run],
            "pipeline": ["pipeline", "mri-liver", "--translator", cyclegan_run, "--segmenter", segmenter_run]}[command]
    proc = medgen(*args, folder, out, "--device", "cpu")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == len(expected) >= 40, (len(lines), len(expected))
    for line in lines:
        path = next(p for p in expected if line.startswith(f"medgen: error: {p}: "))
        assert re.search(expected.pop(path), line), line
    written = sorted(p.name for p in out.iterdir())
    assert written == {"translate": ["good_src.nii.gz", "one_series.nii.gz"],
                       "pipeline": ["good_src.nii.gz", "index.html", "one_series.nii.gz", "qc", "summary.csv",
                                    "summary.json"],
                       "segment": ["good_src.nii.gz", "index.html", "one_series.nii.gz", "qc", "thin_y.nii.gz",
                                   "thin_z.nii.gz", "zeros.nii.gz"]}[command]
    assert snapshot(folder) == before


@pytest.mark.parametrize("command", ["train", "synth", "fit"])
def test_a_folder_output_named_like_a_file_is_refused_before_the_work(command, tmp_path, phantom_dir):
    out = tmp_path / "OUT.png"
    args = {"train": ["train", config(2), "--out", out], "synth": ["synth", tmp_path, out, "--n", "2"],
            "fit": ["fit", "mri-liver", "--mri", phantom_dir / "mri", "--out", out]}[command]
    assert_refused(medgen(*args), out, r"this output is a folder, but its name ends in \.png")
    assert not out.exists()


@pytest.mark.parametrize("pipeline", ["mri-liver", "mri-ct"])
@pytest.mark.parametrize("case", ["single_file", "one_slice", "constant", "float_labels", "truncated", "two_d"])
def test_fit_refuses_a_bad_mri_or_label_before_training(case, pipeline, tmp_path, phantom_dir):
    mri = tmp_path / "mri"
    shutil.copytree(phantom_dir / "mri", mri)
    labels = phantom_dir / "labels"
    bad = mri / "case_001.nii.gz"
    img = nib.load(bad)
    extra = []
    if case == "single_file":
        mri, cause, name = bad, "must be a folder of MRIs", bad
    elif case == "one_slice":
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :1], img.affine), bad)
        cause, name = "degenerate grid", bad
    elif case == "constant":
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), bad)
        cause, name = "constant volume", bad
    elif case == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        cause, name = "truncated", bad
    elif case == "two_d":
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), bad)
        cause, name = "not 3D|2D|degenerate", bad
    else:
        labels = tmp_path / "labels"
        shutil.copytree(phantom_dir / "labels", labels)
        lab = nib.load(labels / "case_002.nii.gz")
        data = np.asarray(lab.dataobj).astype(np.float32)
        data[data == 2] = 2.5
        nib.save(nib.Nifti1Image(data, lab.affine), labels / "case_002.nii.gz")
        cause, name = "non-integer values", labels / "case_002.nii.gz"
    if case == "float_labels" or pipeline == "mri-ct":  # fit mri-ct always learns from labelled CTs
        extra = ["--ct", phantom_dir / "ct", "--ct-labels", labels, "--label-map", "1:1"]
    before = snapshot(mri, labels)
    out = tmp_path / "model"
    assert_refused(medgen("fit", pipeline, "--mri", mri, "--out", out, *extra), name, cause)
    assert not out.exists() and snapshot(mri, labels) == before


def test_pipeline_whose_every_input_is_refused_leaves_no_folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "out"
    proc = medgen("pipeline", "mri-liver", inputs, out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("edit, cause", [
    ({"liver_index": 7}, "liver_index 7 is not a class of this segmenter"),
    ({"liver_index": "1"}, "'liver_index' must be null or a class index"),
    ({"segmenter": None}, "'segmenter' must be a name"),
    ({"segmenter": 3}, "'segmenter' must be a name"),
    ({"segmenter": "../../elsewhere"}, "points outside the model folder"),
    ({"segmenter": "/abs/run"}, "points outside the model folder"),
    ({"ct2mri": 3}, "'ct2mri' must be a name or null"),
])
def test_a_tampered_model_json_is_one_line(edit, cause, tmp_path, phantom_dir):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"route": "direct", "segmenter": "mri-liver", "translator": None,
                                                  "liver_index": 1, **edit}))
    out = tmp_path / "out.nii.gz"
    proc = medgen("pipeline", "mri-liver", "--model", model, phantom_dir / "mri" / "case_000.nii.gz", out)
    assert_refused(proc, "" if "liver_index" in edit and edit["liver_index"] == 7 else model, cause)
    assert not out.exists()


@pytest.mark.parametrize("damage, cause", [
    ("empty", "unreadable checkpoint"), ("truncated", "unreadable checkpoint"), ("garbage", "unreadable checkpoint"),
    ("pickle", "unreadable checkpoint"), ("wrong_keys", "cannot resume: the checkpoint has no"),
    ("norm_missing", "cannot resume: missing or corrupt"), ("norm_corrupt", "cannot resume: missing or corrupt"),
])
def test_a_failed_resume_leaves_the_run_byte_identical(damage, cause, cyclegan_run, tmp_path):
    import pickle

    import torch

    run = tmp_path / "run"
    shutil.copytree(cyclegan_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 4", "iterations: 6"))  # something left to train
    last = sorted((run / "checkpoints").glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[-1]
    named = last
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    elif damage == "garbage":
        last.write_bytes(os.urandom(4096))
    elif damage == "pickle":
        last.write_bytes(pickle.dumps({"G_ab": object}))
    elif damage == "wrong_keys":
        torch.save({"net": {"w": torch.zeros(2)}}, last)
    elif damage == "norm_missing":
        (run / "norm.json").unlink()
        named = run / "norm.json"
    else:
        (run / "norm.json").write_text("{not json")
        named = run / "norm.json"
    before = snapshot(run)
    assert_refused(medgen("train", "--resume", run), named, cause)
    assert snapshot(run) == before


def test_a_second_training_into_the_same_folder_is_refused(tmp_path, phantom_dir):
    out = tmp_path / "run"
    sets = [a for s in tiny(phantom_dir, iterations=400) for a in ("--set", s)]
    first = subprocess.Popen([sys.executable, "-m", "medgen", "train", str(config(2)), "--out", str(out), *sets],
                             env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not out.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        assert_refused(medgen("train", config(2), "--out", out, *sets), out,
                       "another medgen process is training|already holds a training run")
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("extra, cause", [(["--set", "amp=bogus"], "amp must be one of"),
                                          (["--preset", "EMPTY"], "not a fit preset")])
def test_fit_refuses_a_bad_preset_or_value_before_anything(extra, cause, tmp_path, phantom_dir):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    extra = [str(empty) if e == "EMPTY" else e for e in extra]
    out = tmp_path / "model"
    proc = medgen("fit", "mri-liver", "--mri", phantom_dir / "mri", "--out", out, *extra)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and re.search(cause, proc.stderr)
    assert not out.exists()


def _disk_fills_after(monkeypatch, module, name: str, calls: int) -> None:
    """``module.name`` works ``calls`` times, then fails as a full disk does (ENOSPC)."""
    real, count = getattr(module, name), [0]

    def writer(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)


def test_a_full_disk_during_synth_leaves_no_half_written_set(phantom_dir, tmp_path, monkeypatch, capsys):
    import medgen.inference.synthesize as synthesize
    from medgen.cli import main
    from medgen.engines.train import train
    from tests.test_synth import tiny_synth

    run = train(ROOT / "configs" / "vae_2d.yaml", tmp_path / "vae", tiny_synth(phantom_dir, "vae", 2))
    _disk_fills_after(monkeypatch, synthesize, "save_like", 5)  # 2 pairs and a half written, then the disk is full
    out = tmp_path / "set"
    assert main(["synth", str(run), str(out), "--n", "6", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(rf"medgen: error: {re.escape(str(out))}: cannot write .*No space left.*",
                                          err[0])
    assert not out.exists()


def test_a_full_disk_during_fit_leaves_no_model(phantom_dir, tmp_path, monkeypatch, capsys):
    """The segmenter stage trained, then the disk fills while the QC masks are written: one line, no model folder."""
    import medgen.inference.pipeline as pipeline
    from medgen.cli import main
    from tests.test_fit import _args

    _disk_fills_after(monkeypatch, pipeline, "save_mask", 1)
    model = tmp_path / "model"
    assert main(_args(phantom_dir, model)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medgen: error: ") and "No space left on device" in err[0]
    assert not model.exists()


@pytest.fixture(scope="module")
def damaged_models(segmenter_run, tmp_path_factory):
    from tests.bad_inputs import model_corpus

    d = tmp_path_factory.mktemp("models")
    marker = d / "code_ran"
    return model_corpus(d, segmenter_run, marker), marker


def test_every_damaged_model_is_one_line_and_runs_no_code(damaged_models, phantom_dir, tmp_path):
    """The hostile-model corpus through `medgen segment`: exit 2, one line naming the damaged file, nothing written,
    the model unchanged, and no pickle ever unpickled."""
    image = phantom_dir / "ct" / "case_000.nii.gz"
    _all_refused(damaged_models, {name: ("segment", "{model}", image, tmp_path / f"{abs(hash(name))}.nii.gz",
                                         "--device", "cpu") for name in damaged_models[0]})


def _all_refused(damaged_models, commands: dict[str, tuple]) -> None:
    """Each damaged model's command (``{model}`` stands for it, the last argument is its output): exit 2, one line
    naming the damaged file, no output, the model unchanged; and no damaged model ever ran code."""
    corpus, marker = damaged_models
    failures = []
    for name, command in commands.items():
        model, named, cause = corpus[name]
        before, out = snapshot(model), command[-1]
        proc = medgen(*[model if a == "{model}" else a for a in command])
        try:
            assert_refused(proc, named, cause)
            assert not Path(out).exists() and snapshot(model) == before
        except AssertionError as exc:
            failures.append(f"{command[0]} {name}: {str(exc).splitlines()[0]}")
    assert not marker.exists(), "a damaged model ran code"
    assert not failures, "\n".join(failures)


FIT_SEGMENTERS = ("run: config.yaml not YAML", "run: checkpoint a code-running pickle", "run: checkpoint of another network",
                  "TorchScript: garbage", "bundle: inference.json broken", "bundle: weights a code-running pickle",
                  "bundle: unknown network class")


def test_fit_refuses_a_damaged_segmenter_before_training(damaged_models, phantom_dir, tmp_path):
    """`fit --segmenter` (mri-liver and mri-ct) loads the user's segmenter before anything is trained or written."""
    data = ("--ct", phantom_dir / "ct", "--ct-labels", phantom_dir / "labels", "--label-map", "1:1",
            "--mri", phantom_dir / "mri")
    _all_refused(damaged_models, {name: ("fit", pipeline, *data, "--segmenter", "{model}", "--out",
                                         tmp_path / f"{abs(hash(name))}")
                                  for pipeline, name in zip(("mri-liver", "mri-ct") * 4, FIT_SEGMENTERS)})


def test_a_full_disk_during_train_is_one_line_and_leaves_no_run(phantom_dir, tmp_path, monkeypatch, capsys):
    """The disk fills when the first checkpoint is saved: one line naming the run, and no half-made run folder."""
    from medgen.cli import main

    _disk_fills_after(monkeypatch, torch, "save", 0)
    out = tmp_path / "run"
    assert main(["train", str(config(2)), "--out", str(out), *[a for s in tiny(phantom_dir) for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(rf"medgen: error: {re.escape(str(out))}: cannot write .*No space left.*", err[0])
    assert not out.exists()
