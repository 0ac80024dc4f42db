#!/usr/bin/env bash
# Baseline: LBGAT0 (beta 0) on CIFAR-10, WRN-34-20 with a natural ResNet18_cifar: LBGAT's CIFAR-100
# recipe on CIFAR-10 (its repository has no CIFAR-10 script; configs/adv_training/cifar10_lbgat.yaml).
# Extra arguments are config overrides; --print-config prints the resolved config instead; NPROC=N
# trains under torchrun. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_lbgat.yaml "$@"
