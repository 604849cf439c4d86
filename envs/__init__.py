"""Gymnasium environment of the pruning search (arrives with the search, issue 9).

The environment walks the prunable layers of a YOLOv7 model one by one; it stays empty until then so that
the package layout (model -> pruning space -> env -> agent -> evaluator -> export) is in place from the start.
"""
