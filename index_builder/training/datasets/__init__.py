"""Sketch/photo data sets: every loader returns a ``SketchPhotoSet``."""
