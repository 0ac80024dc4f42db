#!/usr/bin/env bash
# DKLv1 (NeurIPS IKL-AT): the authors' sh/train_dkl_cifar100.sh, CIFAR-100, WRN-34-10, basic
# augmentation, two runs: alpha 4 / beta 20 / prior T 4, then alpha 5 / beta 20 / prior T 4.
# (Their first swa.py call lacks its END argument and fails; both runs are averaged here.)
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help); --print-config prints the resolved configs instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Each run ends with the epoch average ours-model-epoch-SWA0.91200.pt (the reference's
# swa.py RUN 0.9 1 200), the weights the published numbers come from; AutoAttack's eval.py
# evaluates it by default. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_ikl_a4b20t4.yaml "$@"
run_adv_training cifar100_ikl_a5b20t4.yaml "$@"
