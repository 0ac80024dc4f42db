#!/usr/bin/env bash
# Baseline: TRADES (beta 6) + AWP on CIFAR-100, WRN-34-10, same schedule as the IKL-AT rows.
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help). Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_trades_awp.yaml "$@"
