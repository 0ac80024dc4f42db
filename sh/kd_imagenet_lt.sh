#!/usr/bin/env bash
# ImageNet-LT distillation as the DKL authors run it (jiequancui/DKL DKLv1/Imbalanced_KD-dkl/sh/Distill/*.sh):
# one method on the named run of configs/knowledge_distillation/imagenet_lt/, in the order their README trains:
#   bash sh/kd_imagenet_lt.sh vanilla x101_baseline   # ImageNetLT_train_X101_baseline.sh (also r18_, r50_baseline):
#                                                     # the teachers, written to runs/imagenet_lt_x101_baseline/best.pt
#   bash sh/kd_imagenet_lt.sh kd x101_r18             # ImageNetLT_train_X101R18_distill.sh (KL-KD, distill_w 4)
#   bash sh/kd_imagenet_lt.sh ikl x101_r18            # ImageNetLT_train_X101R18_distill_dkl.sh (IKL-KD)
# PAIRS: x101_r18 x101_r50 r18_r18 r50_r50 (self-distillation: the r18/r50 baselines teach); GKL-KD (DKLv2):
# sh/kd_imagenet_lt_gkl.sh. Expects the ImageNet folder data/imagenet (train/, val/) and the OLTR authors'
# ImageNet_LT_{train,val,test}.txt in data/ImageNet_LT (or data.root=..., data.lists=...; docs/distillation.md).
# key=value arguments are config overrides; --print-config prints the resolved config instead of training;
# NPROC=4 (their 4 GPUs) runs under torchrun. A wrong method or name prints the valid names. Runs from any
# directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
kd_launch imagenet_lt one "$@"
