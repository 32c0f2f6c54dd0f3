"""What training and inference share, per task: config dataclasses, network builders, run artifacts
(``norm.json``, ``synth.json``), run-directory loading and the one task registry (:data:`registry.TASKS`).

``medgen.engines`` (training), ``medgen.inference`` and ``medgen.evaluation`` consume this package; it
imports none of them.
"""
