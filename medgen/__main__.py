"""`python -m medgen ...` (also what `torchrun -m medgen train ...` runs)."""

from __future__ import annotations

from medgen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
