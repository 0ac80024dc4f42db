#!/usr/bin/env bash
# Paper: IKL-AT on CIFAR-100, WRN-34-10, basic augmentation (both runs of the authors' launcher).
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help). Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar100_ikl.yaml "$@"
run_adv_training cifar100_ikl_gamma.yaml "$@"
