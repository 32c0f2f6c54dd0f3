"""The QC page of a folder run: every case's picture decodes, flagged cases first, Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from medgen.cli import main
from medgen.io import load_image, ref_from_affine
from medgen.qcpage import case_picture, write_index


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.rows = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "tr":
            self.rows.append(a.get("class"))


def _decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def test_case_picture_draws_the_contour_and_the_errors():
    ref = ref_from_affine(np.diag([1.5, 1.5, 6.0, 1.0]), (40, 40, 10))
    image = np.random.default_rng(0).normal(100, 5, (40, 40, 10)).astype(np.float32)
    mask = np.zeros((40, 40, 10), np.uint8)
    mask[10:30, 10:30, 2:8] = 1
    truth = np.zeros_like(mask)
    truth[15:35, 10:30, 2:8] = 1
    rgb = case_picture(image, mask, ref, truth)
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert (40, 220, 60) in colours  # the contour
    red = np.all(np.abs(rgb.astype(int) - [165, 70, 70]) < 60, axis=-1).any()  # false positives, blended
    assert red and rgb.shape[0] > 100 and rgb.shape[1] > 300


def test_pipeline_folder_writes_a_page_whose_images_decode(phantom_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["pipeline", "mri-liver", str(phantom_dir / "mri"), str(out), "--truth",
                 str(phantom_dir / "labels")]) == 0
    page = _Page()
    page.feed((out / "index.html").read_text())
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (phantom_dir / "mri").glob("*.nii.gz"))
    assert len(page.images) == len(cases)
    for src in page.images:
        assert min(_decode(src).size) > 50
    assert all((out / link).exists() for link in page.links)  # relative links to the mask and the MRI
    classes = [c for c in page.rows[1:]]  # the header row first
    assert classes == sorted(classes, key=lambda c: c is None)  # flagged cases first
    assert re.search(rf"{len(cases)} cases, <b>\d+ flagged</b>, <b>0 failed</b>, mean Dice", (out / "index.html").read_text())


def test_the_page_renders_in_chromium(phantom_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian's chromium package): the page was parsed, not rendered")
    out = tmp_path / "out"
    assert main(["pipeline", "mri-liver", str(phantom_dir / "mri"), str(out)]) == 0
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,900", (out / "index.html").as_uri()], capture_output=True, timeout=120)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert (np.abs(picture.astype(int) - [40, 220, 60]).sum(-1) < 40).sum() > 20  # the thumbnails' contours show


def test_failed_cases_come_first_with_their_error(tmp_path):
    rows = [{"case": "a", "status": "ok", "flags": "", "liver_ml": 1500.0},
            {"case": "b", "status": "failed", "error": "b.nii.gz: truncated"}]
    page = _Page()
    page.feed(write_index(tmp_path, rows).read_text())
    assert page.rows[1] == "bad" and "truncated" in (tmp_path / "index.html").read_text()


def test_qc_picture_of_a_real_mri(real_dir):
    image, ref = load_image(real_dir / "example_mr_sm.nii.gz")
    truth = load_image(real_dir / "example_seg_mr.nii.gz")[0] == 5
    rgb = case_picture(image, truth, ref)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and (rgb == [40, 220, 60]).all(-1).sum() > 50


def test_a_rerun_keeps_complete_masks_whose_summary_was_lost(phantom_dir, tmp_path):
    import json

    first = tmp_path / "first"
    assert main(["pipeline", "mri-liver", str(phantom_dir / "mri"), str(first), "--no-qc-page"]) == 0
    assert not (first / "index.html").exists()
    second = tmp_path / "second"
    second.mkdir()
    for mask in first.glob("*.nii.gz"):  # as if another run wrote the masks and its summary was lost
        shutil.copy(mask, second / mask.name)
    before = {p.name: p.read_bytes() for p in second.glob("*.nii.gz")}
    assert main(["pipeline", "mri-liver", str(phantom_dir / "mri"), str(second)]) == 0
    rows = json.loads((second / "summary.json").read_text())["cases"]
    assert all(r["status"] == "ok" and "kept" in r["note"] for r in rows) and len(rows) == len(before)
    assert {p.name: p.read_bytes() for p in second.glob("*.nii.gz")} == before


def test_the_page_of_the_ten_development_mris_renders_in_chromium(tmp_path):
    from tests.conftest import ROOT

    dev = ROOT / ".." / "shared" / "data" / "real" / "abdomen_uda_dev" / "mri"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not dev.is_dir() or browser is None:
        pytest.skip("needs the development MRIs (../shared) and Debian's chromium")
    out = tmp_path / "out"
    assert main(["pipeline", "mri-liver", str(dev / "images"), str(out), "--truth", str(dev / "labels")]) == 0
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert len(page.images) == 10
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1400,2400", (out / "index.html").as_uri()], capture_output=True, timeout=180)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert (np.abs(picture.astype(int) - [40, 220, 60]).sum(-1) < 40).sum() > 100  # the thumbnails' contours
