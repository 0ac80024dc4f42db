#!/usr/bin/env bash
# DKLv2 (the later GKL paper): the authors' DKLv2 sh/train_dkl_cifar100_autoaug.sh, CIFAR-100,
# WRN-34-10, basic + AutoAugment views, alpha 4 / beta 20 / prior T 4 / gamma 1, augmented view weighted 0.5.
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help); --print-config prints the resolved configs instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Each run ends with the epoch average ours-model-epoch-SWA0.91200.pt (the reference's
# swa.py RUN 0.9 1 200), the weights the published numbers come from; AutoAttack's eval.py
# evaluates it by default. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_gkl_autoaug_augw05.yaml "$@"
