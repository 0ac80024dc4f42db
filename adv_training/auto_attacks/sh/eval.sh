#!/usr/bin/env bash
# AutoAttack (standard version, RobustBench's protocol, all 10,000 test images) on the IKL-AT
# models the authors release, the same job as their auto_attacks/sh/eval.sh.
#
#   cd adv_training/auto_attacks && bash sh/eval.sh        # or, from the repository root:
#   bash adv_training/auto_attacks/sh/eval.sh [eval.py arguments for every model]
#
# Put the downloaded files in adv_training/pretrained_models/ (or PRETRAINED_DIR=...) under the
# names below; every model found there is evaluated, and for each missing one the script says
# where to get it. Extra arguments go to every eval.py call, e.g. --data_dir /datasets, or the
# quick sanity check (not a result): --version custom --attacks apgd-ce --n_ex 500.
# Logs and JSON results: adv_training/auto_attacks/logs/. CIFAR is downloaded into DATA_DIR
# (default: the repository's data/, shared with training) when it is missing.
# An interrupted run continues where it stopped when the script is run again.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$HERE/../../sh/_venv.sh"
dkl_python
MODELS="$(realpath -m "${PRETRAINED_DIR:-$HERE/../pretrained_models}")"
DATA_DIR="$(realpath -m "${DATA_DIR:-$DKL_ROOT/data}")"
cd "$HERE"  # as the authors' script: logs/ and adv_inputs/ here; relative paths in arguments start here

# file | --arch | --data | log name | the authors' published clean / AutoAttack accuracy | model | link
# File names are those of the authors' eval.sh (cifar100_autoaug.pt has none there).
RELEASED=(
  "cifar10_a4b20t4.pt|WideResNet34|CIFAR10|cifar10_dkl_a4b20t4|85.31 / 57.13|WRN-34-10, CIFAR-10|https://drive.google.com/file/d/1SFdNdKE6ezI6OsINWX-h74dGo2-9u3Ac/view"
  "cifar100_a4b20t4.pt|WideResNet34|CIFAR100|cifar100_dkl_a4b20t4|65.76 / 31.91|WRN-34-10, CIFAR-100|https://drive.google.com/file/d/1lgFnfmsCw4UxguAOWSLsg6xUDfGG-HRy/view"
  "cifar100_autoaug.pt|WideResNet34|CIFAR100|cifar100_dkl_autoaug|65.93 / 32.52|WRN-34-10, CIFAR-100, AutoAugment|https://drive.google.com/file/d/1kQQpVVtlS9uBC4oZ3ei9OHly1yriU1UU/view"
  "cifar10_a3_b10_t4_20m.pt|wrn-28-10-swish|CIFAR10|cifar10_dkl_a3_b10_T4_20m|92.16 / 67.75|WRN-28-10, CIFAR-10 + 20M generated images|https://drive.google.com/file/d/1gEodZ4ushbRPaaVfS_vjJyldH3wJg4zV/view"
  "cifar100_a5_b12_t4_50m.pt|wrn-28-10-swish|CIFAR100|cifar100_dkl_a5_b12_T4_50m|73.85 / 39.18|WRN-28-10, CIFAR-100 + 50M generated images|https://drive.google.com/file/d/1Leec2X9kGBnBSuTiYytdb4_wR50ibTE8/view"
)

evaluated=0
missing=()
for entry in "${RELEASED[@]}"; do
    IFS='|' read -r file arch data log expected model link <<< "$entry"
    if [[ ! -f "$MODELS/$file" ]]; then
        missing+=("$entry")
        continue
    fi
    echo "== $model ($MODELS/$file): the authors report $expected"
    "$DKL_PY" eval.py --arch "$arch" --checkpoint "$MODELS/$file" --data "$data" --preprocess '01' \
        --data_dir "$DATA_DIR" --download --log_path "logs/$log.log" "$@"
    evaluated=$((evaluated + 1))
done

if (( ${#missing[@]} )); then
    echo
    echo "Not found in $MODELS:"
    for entry in "${missing[@]}"; do
        IFS='|' read -r file arch data log expected model link <<< "$entry"
        echo "  $file  ($model; the authors report $expected)"
        echo "      download $link"
    done
    echo "Save each under that name, e.g.: pip install gdown && gdown --fuzzy LINK -O $MODELS/FILE"
fi
echo "$evaluated of ${#RELEASED[@]} released models evaluated; results in $HERE/logs/"
(( evaluated > 0 ))
