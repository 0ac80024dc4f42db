#!/usr/bin/env bash
# Baseline: AT-AWP on CIFAR-10, WRN-34-10, as csdongxian/AWP runs it
# (AT_AWP/train_cifar10.py --model WideResNet): PGD-10 AT in train mode with AWP gamma 0.01,
# inputs normalised inside the model (CIFAR-10 mean/std), reflect-padded crops, lr 0.1 stepped at
# epochs 100 and 150; best.pt is the best whole-test-set PGD-20 epoch, as its model_best.pth.
# Published: 85.36 / 53.97 (auto_attacks/README.md). Evaluate with
# python -m adv_training.auto_attacks.eval --checkpoint runs/cifar10_at_awp --which best
# (the run folder's model.preprocess meanstd is applied; a copied best.pt needs --preprocess meanstd).
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_at_awp.yaml "$@"
