#!/usr/bin/env bash
# CIFAR-100 distillation, one method on every teacher/student pair of the paper's tables, or on the
# pairs named as arguments (names of configs/knowledge_distillation/cifar100/*.yaml but *_gkl.yaml):
#   bash sh/kd_cifar100.sh reviewkd                             # all 11 pairs, one after another
#   bash sh/kd_cifar100.sh crd res32x4_res8x4 vgg13_mv2 seed=1  # two pairs, with an override
#   bash sh/kd_cifar100.sh dkd res32x4_res8x4                   # a logit method on one pair
# METHOD: a feature distiller (fitnet at nst pkt kdsvd ofd rkd vid sp crd reviewkd; their files are
# configs/knowledge_distillation/cifar100/METHOD/PAIR.yaml, mdistiller's settings) or a logit method
# (vanilla kd dkd ikl: the pair's file with method=METHOD; ikl is what sh/kd_cifar100_ikl.sh runs), or a logit
# recipe with files of its own (dist mlkd ctkd; kd_ls dkd_ls mlkd_ls ctkd_ls ikl_ls gkl_ls: + logit standardization).
# key=value arguments are config overrides for every run; --print-config prints the resolved configs
# instead of training; NPROC=N (and NNODES, NODE_RANK, MASTER) run each pair under torchrun; SEEDS="0 1 2"
# runs each once per seed. Teachers: mdistiller's cifar_teachers.tar extracted into ./download_ckpts
# (see the README). A wrong method or pair prints the valid names. Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
kd_launch cifar100 all "$@"
