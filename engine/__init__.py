"""Infrastructure both tasks share (config, data, checkpoints, logging, distributed).

Kept thin on purpose: each task keeps its own linear epoch loop and calls these helpers.
"""
