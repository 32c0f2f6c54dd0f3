"""Evaluation over runs and folders (segmentation, translation beside its identity baseline, synthesis,
the augmentation experiment) and reports. The metrics themselves are in :mod:`medgen.metrics`."""

from medgen.evaluation import augmentation, segmentation, synthesis, translation

__all__ = ["augmentation", "segmentation", "synthesis", "translation"]
