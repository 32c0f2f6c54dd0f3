"""Acceptance floors on the full demo (slow: about 15 minutes on 2 CPU cores). Run with `make test-slow`."""

from __future__ import annotations

import json

import pytest

from medgen.demo import run_demo


@pytest.mark.slow
def test_demo_meets_the_floors(tmp_path):
    figures = run_demo(tmp_path / "demo")
    assert figures["translation"]["mae"] <= 60.0  # held-out MRI -> CT inside the body, HU
    assert figures["translation"]["mae"] < figures["translation"]["identity_mae"]
    assert figures["pipeline_dice"] >= 0.85  # MRI liver pipeline on the 6 held-out phantoms
    assert figures["pipeline_dice"] > figures["baseline_dice"]
    assert figures["synthesis"]["class_1"]["plausible_fraction"] >= 0.9
    assert json.loads((tmp_path / "demo" / "figures.json").read_text())["pipeline_dice"] == figures["pipeline_dice"]
    assert (tmp_path / "demo" / "report.html").stat().st_size > 2000
