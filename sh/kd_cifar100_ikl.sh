#!/usr/bin/env bash
# Paper: IKL-KD on CIFAR-100, every teacher/student pair of the paper's tables, or only the
# pairs named as arguments (names of configs/knowledge_distillation/cifar100/*.yaml but *_gkl.yaml):
#   bash sh/kd_cifar100_ikl.sh                                  # all 11 pairs, one after another
#   bash sh/kd_cifar100_ikl.sh res32x4_res8x4 vgg13_mv2 seed=1  # two pairs, with an override
#   bash sh/kd_cifar100_ikl.sh res32x4_res8x4 method=dkd     # the same pair with DKD
# key=value arguments are config overrides for every run; --print-config prints the resolved
# configs instead of training; NPROC=N (and NNODES, NODE_RANK, MASTER) run each pair under torchrun. Teachers: mdistiller's cifar_teachers.tar extracted into
# ./download_ckpts (see the README). Runs from any directory; outputs go to ./runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_kd.sh"
dkl_python
CONFIGS="$DKL_ROOT/configs/knowledge_distillation/cifar100"

kd_split_arguments "$@"
if [[ ${#KD_PAIRS[@]} -eq 0 ]]; then
    for file in "$CONFIGS"/*.yaml; do
        name="$(basename "$file" .yaml)"
        [[ "$name" == base || "$name" == *_gkl ]] || KD_PAIRS+=("$name")  # PAIR_gkl: sh/kd_cifar100_gkl.sh
    done
fi
for pair in "${KD_PAIRS[@]}"; do
    if [[ ! -f "$CONFIGS/$pair.yaml" || "$pair" == base || "$pair" == *_gkl ]]; then
        echo "error: no pair '$pair'; choose from: $(cd "$CONFIGS" && ls *.yaml | sed 's/\.yaml$//' | grep -v -e '^base$' -e '_gkl$' | tr '\n' ' ')" >&2
        exit 2
    fi
done
kd_train_each "$CONFIGS" "" "${KD_PAIRS[@]}"
