"""Infrastructure both tasks share (config, data, run folder, checkpoints, logging, distributed).

The bottom layer: it imports no other package of this repository. Kept thin on purpose: each
task keeps its own linear epoch loop and calls these helpers.
"""

__version__ = "0.2.0"  # of the whole distribution (setup.py reads it here); CHANGELOG.md says what changed
