"""`python -m medgen ...` (also what `torchrun -m medgen train ...` runs)."""

from __future__ import annotations

from medgen.cli import main

raise SystemExit(main())
