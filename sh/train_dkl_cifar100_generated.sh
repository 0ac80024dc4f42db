#!/usr/bin/env bash
# IKL-AT on CIFAR-100 plus generated images (the paper's WRN-28-10 rows), with Wang et al. 2023's
# recipe (configs/adv_training/wang_generated_base.yaml):
#   bash sh/train_dkl_cifar100_generated.sh 1m [key=value ...]     # 1M generated images: cifar100_ikl_1m.yaml
#   bash sh/train_dkl_cifar100_generated.sh 50m [key=value ...]    # 50M: cifar100_ikl_50m.yaml
# Prepare the data first (README, "Generated data"): python -m adv_training.prepare_generated
# --dataset cifar100 --out data/generated/cifar100_SIZE PART.npz ...; generated.path=... points elsewhere.
# NPROC=8 trains on 8 GPUs (NNODES, NODE_RANK, MASTER=host:port for several nodes; README);
# --print-config prints the resolved config instead. The TRADES baselines of the same setting:
# python -m adv_training.train --config configs/adv_training/cifar100_trades_SIZE.yaml
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_adv_training.sh"
dkl_python
run_generated_row cifar100 "1m 50m" "$@"
