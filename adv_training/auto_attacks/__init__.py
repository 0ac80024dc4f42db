"""AutoAttack evaluation of adversarially trained checkpoints (the authors' ``auto_attacks/``).

``eval.py`` is the command line (the authors' flags, plus training run folders and resuming);
``resumable.py`` runs the AutoAttack package's own attacks batch by batch with a state file.
"""
