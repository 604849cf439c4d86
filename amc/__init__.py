"""amc: AMC-style reinforcement-learning pruning search for YOLOv7 detectors."""

__version__ = "0.1.0"
