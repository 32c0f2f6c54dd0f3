"""Metrics (SynthRAD image similarity, Dice/HD95/ASSD), baselines and reports."""
