#!/usr/bin/env bash
# IKL-AT on CIFAR-10 plus generated images (the paper's WRN-28-10 rows), with Wang et al. 2023's
# recipe (configs/adv_training/wang_generated_base.yaml):
#   bash sh/train_dkl_cifar10_generated.sh 1m [key=value ...]     # 1M generated images: cifar10_ikl_1m.yaml
#   bash sh/train_dkl_cifar10_generated.sh 20m [key=value ...]    # 20M: cifar10_ikl_20m.yaml
# Prepare the data first (README, "Generated data"): python -m adv_training.prepare_generated
# --dataset cifar10 --out data/generated/cifar10_SIZE PART.npz ...; generated.path=... points elsewhere.
# NPROC=8 trains on 8 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README);
# --print-config prints the resolved config instead. The TRADES baselines of the same setting:
# python -m adv_training.train --config configs/adv_training/cifar10_trades_SIZE.yaml
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_generated_row cifar10 "1m 20m" "$@"
