"""Datalists from folders or JSON, cached preprocessed volumes, and 2D/3D patch sampling."""
