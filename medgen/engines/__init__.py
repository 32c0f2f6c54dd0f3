"""Step factories (CycleGAN, segmenter, synthesizers) and the shared Ignite trainer with its handlers."""
