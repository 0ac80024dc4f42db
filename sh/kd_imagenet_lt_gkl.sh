#!/usr/bin/env bash
# The authors' DKLv2: GKL-KD on ImageNet-LT (DKLv2/Imbalanced_KD-dkl/sh/Distill/ImageNetLT_train_X101R{18,50}_
# distill_dkl.sh: --gamma 0.3 --T2 1.0 --GI), on the named pairs or both (configs/knowledge_distillation/
# imagenet_lt/PAIR_gkl.yaml):
#   bash sh/kd_imagenet_lt_gkl.sh x101_r18      # 45.40 published; the teacher: sh/kd_imagenet_lt.sh vanilla x101_baseline
# key=value arguments are config overrides for every run; --print-config prints the resolved configs instead of
# training; NPROC=4 runs each under torchrun. A wrong pair prints the valid names and exits 2. Runs from any
# directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
kd_train_listed "$DKL_ROOT/configs/knowledge_distillation/imagenet_lt" _gkl "x101_r18 x101_r50" "$@"
