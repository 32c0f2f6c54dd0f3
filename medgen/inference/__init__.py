"""Whole-volume inference: translation, segmentation backends, the MRI liver pipeline."""
