#!/usr/bin/env bash
# The authors' DKLv2: GKL-KD on CIFAR-100, every teacher/student pair of their DKLv2/KD-dkl/sh/cifar100_gkl.sh
# (in its order), or only the pairs named as arguments (files: configs/knowledge_distillation/cifar100/PAIR_gkl.yaml):
#   bash sh/kd_cifar100_gkl.sh                                  # all 11 pairs, one after another
#   bash sh/kd_cifar100_gkl.sh res32x4_res8x4 vgg13_mv2 epochs=2  # two pairs, with an override
#   SEEDS="0 1 2" bash sh/kd_cifar100_gkl.sh res56_res20        # one pair, once per seed
# key=value arguments are config overrides for every run; --print-config prints the resolved configs instead
# of training; NPROC=N (and NNODES, NODE_RANK, MASTER) run each pair under torchrun. Each file has a fixed run
# name: use SEEDS for other seeds (or seed=N with name=...). No published CIFAR-100 number (DKLv2's KD README
# is ImageNet only). Teachers: mdistiller's cifar_teachers.tar extracted into ./download_ckpts (see the README).
# A wrong pair prints the valid names and exits 2. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
GKL_PAIRS=(res32x4_res8x4 res32x4_shuv1 res32x4_shuv2 res50_mv2 res56_res20 vgg13_mv2 vgg13_vgg8
    wrn40_2_shuv1 wrn40_2_wrn16_2 wrn40_2_wrn40_1 res110_res32)
kd_train_listed "$DKL_ROOT/configs/knowledge_distillation/cifar100" _gkl "${GKL_PAIRS[*]}" "$@"
