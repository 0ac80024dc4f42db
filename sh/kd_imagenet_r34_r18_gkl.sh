#!/usr/bin/env bash
# The authors' DKLv2: GKL-KD on ImageNet, ResNet34 -> ResNet18 (100 epochs, batch 512; torchvision's teacher weights),
# their DKLv2/KD-dkl/imagenet_config_gkl/r34_r18_gkl_kd.yaml (configs/knowledge_distillation/imagenet/r34_r18_gkl.yaml).
# Expects data/imagenet/{train,val}/<class folders> (or data.root=...). Extra arguments are
# config overrides, e.g. data.root=/datasets/imagenet; --print-config prints
# the resolved config instead of training; NPROC=8 (and NNODES, NODE_RANK, MASTER for several
# nodes) runs under torchrun. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
dkl_python
dkl_run knowledge_distillation.train --config "$DKL_ROOT/configs/knowledge_distillation/imagenet/r34_r18_gkl.yaml" "$@"
