#!/usr/bin/env bash
# ImageNet distillation, one method on the named teacher/student pairs (r34_r18: ResNet34 -> ResNet18,
# r50_mv1: ResNet50 -> MobileNetV1; torchvision's teacher weights):
#   bash sh/kd_imagenet.sh reviewkd r34_r18                     # mdistiller's ReviewKD recipe for the pair
#   bash sh/kd_imagenet.sh ofd r50_mv1 data.root=/datasets/imagenet
#   bash sh/kd_imagenet.sh dkd r34_r18                          # a logit method
# METHOD: a feature distiller with mdistiller's ImageNet settings (at crd ofd reviewkd; their files are
# configs/knowledge_distillation/imagenet/METHOD/PAIR.yaml), a logit recipe with files of its own (dist
# mlkd ctkd: their authors' ImageNet settings) or a logit method (vanilla kd dkd ikl: the pair's file with
# method=METHOD; `ikl r34_r18` is sh/kd_imagenet_r34_r18_ikl.sh). Expects
# data/imagenet/{train,val}/<class folders> (or data.root=...). key=value arguments are config overrides;
# --print-config prints the resolved config instead of training; NPROC=8 (and NNODES, NODE_RANK, MASTER
# for several nodes) runs under torchrun. A wrong method or pair prints the valid names. Runs from any
# directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
kd_launch imagenet one "$@"
