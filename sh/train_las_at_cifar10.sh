#!/usr/bin/env bash
# Baseline: LAS-AT (Jia et al. 2022) on CIFAR-10, WRN-34-10, its LAS-AWP recipe as jiaxiaojunQAQ/LAS-AT's README
# runs LAS_AWP_train_cifar10.py: a strategy network picks each sample's attack (epsilon, steps, step size)
# and learns by REINFORCE; the model trains with PGD-AT's loss on those examples (clipped to 8/255) and AWP
# 0.01, lr 0.1 x0.1 at epochs 100 and 150; best.pt is the best whole-test-set PGD-20 epoch, as their
# model_best.pth. The recipe and its sources are in configs/adv_training/cifar10_las_at.yaml. Evaluate with
# python -m adv_training.auto_attacks.eval --checkpoint runs/cifar10_las_at --which best
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_las_at.yaml "$@"
