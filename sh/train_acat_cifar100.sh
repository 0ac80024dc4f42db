#!/usr/bin/env bash
# Baseline: ACAT (Addepalli et al. 2022) on CIFAR-100, WRN-34-10, as val-iisc/DAJAT's train_DAJAT.py
# trains it with --num_auto 0 --epochs 110 --train_budget low: TRADES with the ascending eps (8/255 *
# epoch / 110) and 2 attack steps, AWP 0.005 from epoch 10, EMA 0.9996 from epoch 82 (the published
# model), the first 10 training images of each class held out; the recipe and its sources are in
# configs/adv_training/cifar100_acat.yaml. Evaluate the EMA, as published:
# python -m adv_training.auto_attacks.eval --checkpoint runs/cifar100_acat --which ema
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_acat.yaml "$@"
