"""What the QC page costs: ``medgen pipeline mri-liver`` on a folder of phantom MRIs with and without
``--qc-page``, in the same run (the plain reference is the run without it).

    python benchmarks/qc_page.py [--cases 100] [--work DIR]

Prints both wall times and the extra fraction (the floor: at most 10 %). The phantoms are 96 x 96 x 48 at 4 mm
(``medgen phantoms``); the segmenter is the shipped ``mri-liver``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from real_liver import medgen
from results_doc import write_record

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "qc_page"))
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    phantoms = work / "phantoms"
    if not (phantoms / "dataset.json").is_file():
        medgen("phantoms", str(phantoms), "--cases", str(args.cases), "--shape", "96", "96", "48",
               "--spacing", "4", "4", "4", log=log)
    times = {}
    for name, flag in (("without", "--no-qc-page"), ("with", "--qc-page"), ("without again", "--no-qc-page")):
        out = work / f"out_{name.replace(' ', '_')}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.time()
        medgen("pipeline", "mri-liver", str(phantoms / "mri"), str(out), flag, log=log)
        times[name] = time.time() - start
    plain = min(times["without"], times["without again"])
    extra = times["with"] / plain - 1
    print(f"{args.cases} cases: without the page {plain:.1f} s (best of 2), with it {times['with']:.1f} s: "
          f"{extra:+.1%}")
    write_record("qc_page", {
        "title": "What the QC page costs", "summary": [[f"QC page of a {args.cases}-case folder run", f"{extra:+.1%} time"]], "command": f"python benchmarks/qc_page.py --cases {args.cases}",
        "data": {"ct_count": 0, "cases": f"{args.cases} phantom MRIs, 96 x 96 x 48 at 4 mm"},
        "table": {"columns": ["run", "wall time (s)"],
                  "rows": [[k, round(v, 1)] for k, v in times.items()] + [["extra for the page", f"{extra:+.1%}"]]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
