#!/usr/bin/env bash
# DKLv2 (the later GKL paper): the authors' DKLv2 sh/train_dkl_cifar10.sh, CIFAR-10, WRN-34-10,
# two runs: alpha 4 / beta 20 / prior T 4 (gamma 1), then prior T 1 with gamma 0.2. Their
# script loses the second run's --T 1.0 to a missing line continuation (it ran T 4); this one
# runs T 1 as written; add ikl.prior_temperature=4 to repeat what theirs ran.
# Extra arguments are config overrides for every run, e.g. data.root=/datasets device=cuda:1
# (see python -m adv_training.train --help); --print-config prints the resolved configs instead;
# NPROC=4 trains on 4 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README).
# Each run ends with the epoch average ours-model-epoch-SWA0.91200.pt (the reference's
# swa.py RUN 0.9 1 200), the weights the published numbers come from; AutoAttack's eval.py
# evaluates it by default. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_adv_training cifar10_gkl_a4b20t4.yaml "$@"
run_adv_training cifar10_gkl_t1g02.yaml "$@"
