#!/usr/bin/env bash
# Baseline: the authors' sh/train_trades_cifar100.sh, TRADES (beta 9) + AWP on CIFAR-100, WRN-34-10,
# with that script's own cosine schedule and drop_last.
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help); --print-config prints the resolved configs instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# The run ends with the epoch average ours-model-epoch-SWA0.91200.pt (the reference's
# swa.py RUN 0.9 1 200, which their TRADES launcher runs too); AutoAttack's eval.py
# evaluates it by default. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_trades_awp.yaml "$@"
