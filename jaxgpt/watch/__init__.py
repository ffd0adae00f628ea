"""Watching and guarding a run: what it reports (metrics.py: console, metrics.jsonl,
TensorBoard, W&B), its curves (plot.py), and its faults (faults.py: stop signals,
non-finite steps, fault-injection hooks for the tests).
"""
