#!/usr/bin/env python
"""Liver masks on MRI through a synthetic CT: a thin script over ``medgen.inference.pipeline``.

    python pipelines/mri_liver_via_ct.py --translator runs/cyclegan --segmenter runs/segmenter mri/ out/

Same behaviour, options and outputs as ``medgen pipeline mri-liver`` (it is that command).
"""

from __future__ import annotations

import sys

from medgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", "mri-liver", *sys.argv[1:]]))
