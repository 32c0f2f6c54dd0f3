#!/usr/bin/env python
"""Translate a folder of MRIs to synthetic CTs (HU, input headers): ``medgen translate`` as a script.

    python pipelines/translate_folder.py runs/cyclegan mri/ synthetic_ct/ [--direction mri2ct]
"""

from __future__ import annotations

import sys

from medgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["translate", *sys.argv[1:]]))
