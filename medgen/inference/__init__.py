"""Whole-volume inference: translator and segmenter backends behind protocols (with registries),
synthesizer sampling, the MRI liver pipeline."""
