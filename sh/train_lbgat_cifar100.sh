#!/usr/bin/env bash
# Baseline: LBGAT (beta 6) on CIFAR-100, WRN-34-10 with a natural ResNet18_cifar, as jiequancui/LBGAT's
# train_lbgat_cifar100.py runs it (configs/adv_training/cifar100_lbgat.yaml says how and what differs).
# Extra arguments are config overrides, e.g. data.root=/datasets device=cuda:1 lbgat.beta=0;
# --print-config prints the resolved config instead; NPROC=N trains under torchrun.
# Runs from any directory; outputs go to ./runs. AutoAttack: adv_training/auto_attacks/eval.py on best.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_lbgat.yaml "$@"
