"""Pruning engine: the pruning space of a YOLOv7 model, policies, criteria, physical and masked pruning."""
