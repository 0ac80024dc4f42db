#!/usr/bin/env bash
# Baseline: TRADES-AWP on CIFAR-10, WRN-34-10, as csdongxian/AWP runs it
# (trades_AWP/train_trades_cifar.py --data CIFAR10): TRADES beta 6 with AWP gamma 0.005 from epoch
# 10, no input normalisation, lr 0.1 x0.1 at epoch 100 and x0.01 at epoch 150. Which epoch was
# published is not stated: the last one (last.pt). Published: 85.36 / 56.17 (auto_attacks/README.md;
# the DKL READMEs' CIFAR-10 "AWP" row). Evaluate with
# python -m adv_training.auto_attacks.eval --checkpoint runs/cifar10_trades_awp --which last
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 (see
# python -m adv_training.train --help); --print-config prints the resolved config instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_trades_awp.yaml "$@"
