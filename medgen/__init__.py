"""medgen: MRI <-> CT translation and synthetic augmentation on MONAI and PyTorch-Ignite.

Layer order: a module may import modules of its own layer entry or of an earlier one, never a later
one; two different entries of one layer do not import each other. ``tests/test_layers.py`` parses the
package with ``ast`` and fails on any import against this order and on any import cycle.

0. ``errors``, ``keys``: the exception and the dict keys
1. ``headers``: what a file claims, checked before reading; then ``io``: volumes in and out with their geometry
2. ``validate``, ``transforms``, ``runtime``, ``phantoms``, ``info``: checks, modality presets, device /
   precision / seeding, the embedded phantoms, ``medgen info``
3. ``metrics``, ``config``: metrics on arrays and paired files; YAML -> dataclass machinery and the
   sections every task shares
4. ``data``, ``networks``: datalists, caching, patches, augmentation; pure ``nn.Module`` s
5. ``models``: per task, what training and inference share (configs, builders, run artifacts, the task registry)
6. ``inference``: translator and segmenter backends, whole-volume inference, the MRI liver pipeline
7. ``engines``: training (steps, setups, the Ignite trainer); validation and translator-cycled augmentation
   run through ``inference``, hence after it
8. ``evaluation``: metrics over runs and folders, the augmentation experiment, reports
9. ``demo``; 10. ``cli``; 11. ``__main__``

Function-local imports of medgen modules are kept for a measured import cost only (the CLI loads torch
and MONAI, 3.5 s, only for the commands that need them), each with its reason on the line.
"""

from __future__ import annotations

__version__ = "0.1.0"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "keys"),
    ("headers",),
    ("io",),
    ("validate", "transforms", "runtime", "phantoms", "info", "dicomseg"),
    ("metrics", "config", "qcpage"),
    ("data", "networks"),
    ("models",),
    ("inference",),
    ("engines",),
    ("evaluation",),
    ("demo",),
    ("cliparser",),
    ("cli",),
    ("__main__",),
)
