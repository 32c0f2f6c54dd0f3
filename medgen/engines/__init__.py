"""Training only: step factories and setups per task (CycleGAN, segmenter, synthesizers) and the shared
Ignite trainer with its handlers. Configs and networks come from :mod:`medgen.models`."""
