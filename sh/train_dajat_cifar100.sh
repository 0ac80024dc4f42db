#!/usr/bin/env bash
# Baseline: DAJAT (Addepalli et al. 2022) on CIFAR-100, WRN-34-10, 110 epochs and 2 attack steps per
# view ("2+4": the paper's row), as val-iisc/DAJAT's train_DAJAT.py trains it: TRADES on the basic view and two AutoAugment views (their own BatchNorms), averaged, + a Jensen-Shannon
# term over the views' clean predictions; AWP on the basic view; the EMA is the published model. The recipe and
# its sources are in configs/adv_training/cifar100_dajat.yaml. Evaluate the EMA, as published:
# python -m adv_training.auto_attacks.eval --checkpoint runs/cifar100_dajat --which ema
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_dajat.yaml "$@"
