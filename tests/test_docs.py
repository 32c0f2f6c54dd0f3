"""The user docs: the README's size and form, and docs/results.md in sync with the result records."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results_doc():
    spec = importlib.util.spec_from_file_location("results_doc", ROOT / "benchmarks" / "results_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_has_no_development_paths():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    prose = re.sub(r"```.*?```", "", text, flags=re.S).splitlines()
    assert [line for line in prose if len(line) > 200] == []
    assert "../shared" not in text
    assert "make demo" in text and "make test" in text


def test_results_doc_is_generated_from_the_records():
    doc = _results_doc()
    records = doc.load_records()
    assert records, "no result records in docs/results/"
    assert (ROOT / "docs" / "results.md").read_text() == doc.render(records)
    readme = (ROOT / "README.md").read_text()
    assert readme == doc.readme_with_summary(readme, records)  # the README's table too
    for name, record in records.items():
        assert record["command"] and record["table"]["rows"], name
        assert "ct_count_for_training" in record["data"] or "ct_count" in record["data"], name


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
