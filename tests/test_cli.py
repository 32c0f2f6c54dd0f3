from __future__ import annotations

import subprocess
import sys

import pytest

from medgen.cli import main


def test_help_lists_subcommands_with_examples():
    proc = subprocess.run([sys.executable, "-m", "medgen", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("info", "phantoms", "train", "translate", "segment", "pipeline", "synth", "evaluate", "demo"):
        assert f"    {name} " in proc.stdout
        assert f"medgen {name} " in proc.stdout


@pytest.mark.parametrize(
    "name,expect",
    [
        ("example_ct.nii.gz", ["122 x 101 x 112", "3 x 3 x 3 mm", "RAS", "CT (HU-like"]),
        ("example_mr_sm.nii.gz", ["117 x 91 x 20", "LPS", "codes 0/2; medgen uses the sform", "MRI"]),
        ("example_seg_mr.nii.gz", ["117 x 91 x 20", "label map"]),
        ("example_ct_dicom", ["512 x 512 x 20", "0.9766 x 0.9766 x 2 mm", "LPS", "DICOM Modality tag CT"]),
        ("example_seg_dicom.nii.gz", ["512 x 512 x 20", "LAS", "label map"]),
    ],
)
def test_info_on_real_examples(real_dir, capsys, name, expect):
    assert main(["info", str(real_dir / name)]) == 0
    out = capsys.readouterr().out
    for text in expect:
        assert text in out, (text, out)


def test_phantoms_command(tmp_path, capsys):
    assert main(["phantoms", str(tmp_path / "p"), "--cases", "2", "--shape", "48", "48", "24",
                 "--spacing", "8", "8", "8"]) == 0
    assert sorted(p.name for p in (tmp_path / "p" / "ct").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    assert main(["phantoms", str(tmp_path / "p"), "--cases", "2"]) == 2
    assert "already holds a dataset.json" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["x:y", "6:", "6:1:2"])
def test_a_usage_error_is_one_line_in_the_house_style(tmp_path, value):
    proc = subprocess.run([sys.executable, "-m", "medgen", "fit", "mri-liver", "--label-map", value, "--mri",
                           str(tmp_path), "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"medgen: error: --label-map: label map {value!r} is not of the form SRC:CLASS[,SRC:CLASS...]"]
    assert not (tmp_path / "m").exists()


def test_outputs_keep_the_umask(tmp_path):
    import os

    from medgen.io import atomic_write

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        path = atomic_write(tmp_path / "b.txt", lambda tmp: tmp.write_text("x"))
        assert (path.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
