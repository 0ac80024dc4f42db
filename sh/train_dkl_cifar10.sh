#!/usr/bin/env bash
# DKLv1 (NeurIPS IKL-AT): the authors' sh/train_dkl_cifar10.sh, CIFAR-10, WRN-34-10, basic
# augmentation, alpha 4 / beta 20 / prior T 4 (the attack uses the soft-label CE term only).
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help); --print-config prints the resolved configs instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Each run ends with the epoch average ours-model-epoch-SWA0.91200.pt (the reference's
# swa.py RUN 0.9 1 200), the weights the published numbers come from; AutoAttack's eval.py
# evaluates it by default. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_ikl_a4b20t4.yaml "$@"
