#!/usr/bin/env bash
# Baseline: AT-AWP on CIFAR-100, WRN-34-10, as csdongxian/AWP runs it
# (AT_AWP/train_cifar100.py --model WideResNet): PGD-10 AT in train mode with AWP gamma 0.01,
# inputs normalised inside the model (CIFAR-100 mean/std), crops + flips + RandomRotation(15),
# lr 0.1 stepped at epochs 100 and 150; best.pt is the best whole-test-set PGD-20 epoch, as its
# model_best.pth. Published: 60.38 / 28.86 (auto_attacks/README.md; the DKL READMEs' "AWP" row).
# Evaluate with python -m adv_training.auto_attacks.eval --checkpoint runs/cifar100_at_awp --which best
# (the run folder's model.preprocess meanstd is applied; a copied best.pt needs --preprocess meanstd).
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_at_awp.yaml "$@"
