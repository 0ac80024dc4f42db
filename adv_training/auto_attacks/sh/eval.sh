#!/usr/bin/env bash
# AutoAttack (standard version, RobustBench's protocol, all 10,000 test images) on the IKL-AT
# models the authors release: the job of their DKLv1 and DKLv2 auto_attacks/sh/eval.sh together.
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
# An interrupted run continues where it stopped when the script is run again, with any NPROC.
# NPROC=4 bash sh/eval.sh: each model over 4 processes (torchrun, one GPU each), the result of one.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$HERE/../../sh/_venv.sh"
dkl_python
MODELS="$(realpath -m "${PRETRAINED_DIR:-$HERE/../pretrained_models}")"
DATA_DIR="$(realpath -m "${DATA_DIR:-$DKL_ROOT/data}")"
cd "$HERE"  # as the authors' script: logs/ and adv_inputs/ here; relative paths in arguments start here

# file | --arch | --data | log name | published clean / AutoAttack | where that number is published | model | link
# Files 1-5 are the names of the authors' DKLv1 auto_attacks/sh/eval.sh (their logs are in
# DKLv1/Adv-training-dkl/auto_attacks/logs/), 6-7 those of their DKLv2 eval.sh; 8 and 9 are
# linked from their READMEs but named by no script (the names are ours).
RELEASED=(
  "cifar100_a3_b20_t4.pt|WideResNet34|CIFAR100|cifar100_dkl_a3_b20_T4|66.51 / 31.43|DKLv1 log cifar100_dkl_a3_b20_T4.log and README|IKL-AT WRN-34-10, CIFAR-100 (alpha 3, beta 20, T 4)|https://drive.google.com/file/d/1NaWPX5w32xTiny91kJ6SJxSejCzsD1dy/view"
  "cifar100_a4_b20_t2.pt|WideResNet34|CIFAR100|cifar100_dkl_a4_b20_T2|64.08 / 31.65|DKLv1 log cifar100_dkl_a4_b20_T2.log (their README listed this link with 64.08 / 31.65, later 63.40 / 31.92)|IKL-AT WRN-34-10, CIFAR-100 (alpha 4, beta 20, T 2)|https://drive.google.com/file/d/1pEcMipxf9z_-o6iH56jzt9oPL4x0R5fC/view"
  "cifar10_a3_b20_t4.pt|WideResNet34|CIFAR10|cifar10_dkl_a3_b20_T4|85.31 / 57.09|DKLv1 log cifar10_dkl_a3_b20_T4.log (their README: 85.31 / 57.13)|IKL-AT WRN-34-10, CIFAR-10 (alpha 3, beta 20, T 4)|https://drive.google.com/file/d/1SFdNdKE6ezI6OsINWX-h74dGo2-9u3Ac/view"
  "cifar100_a5_b12_t4_50m.pt|wrn-28-10-swish|CIFAR100|cifar100_dkl_a5_b12_T4_50m|73.85 / 39.18|DKLv1 log cifar100_dkl_a5_b12_T4_50m.log and README|IKL-AT WRN-28-10, CIFAR-100 + 50M generated images|https://drive.google.com/file/d/1Leec2X9kGBnBSuTiYytdb4_wR50ibTE8/view"
  "cifar10_a3_b10_t4_20m.pt|wrn-28-10-swish|CIFAR10|cifar10_dkl_a3_b10_T4_20m|92.16 / 67.73|DKLv1 log cifar10_dkl_a3_b10_T4_20m.log (their README: 92.16 / 67.75)|IKL-AT WRN-28-10, CIFAR-10 + 20M generated images|https://drive.google.com/file/d/1gEodZ4ushbRPaaVfS_vjJyldH3wJg4zV/view"
  "cifar100_a4b20t4.pt|WideResNet34|CIFAR100|cifar100_dkl_a4b20t4|65.76 / 31.91|DKLv1 and DKLv2 READMEs (no log)|IKL/GKL-AT WRN-34-10, CIFAR-100|https://drive.google.com/file/d/1lgFnfmsCw4UxguAOWSLsg6xUDfGG-HRy/view"
  "cifar10_a4b20t4.pt|WideResNet34|CIFAR10|cifar10_dkl_a4b20t4|85.31 / 57.13|DKLv2 README (the same link as cifar10_a3_b20_t4.pt)|IKL/GKL-AT WRN-34-10, CIFAR-10|https://drive.google.com/file/d/1SFdNdKE6ezI6OsINWX-h74dGo2-9u3Ac/view"
  "cifar100_autoaug.pt|WideResNet34|CIFAR100|cifar100_dkl_autoaug|65.93 / 32.52|DKLv1 and DKLv2 READMEs (no log)|IKL-AT WRN-34-10, CIFAR-100, AutoAugment|https://drive.google.com/file/d/1kQQpVVtlS9uBC4oZ3ei9OHly1yriU1UU/view"
  "cifar100_gkl_50m.pt|wrn-28-10-swish|CIFAR100|cifar100_gkl_50m|73.65 / 39.37|DKLv2 README (since April 2025)|GKL-AT WRN-28-10, CIFAR-100 + 50M generated images|https://drive.google.com/file/d/1H86QPlAnYZe6IVdGOhAQ73VsEBJ6VPom/view"
)

# NPROC=N: each evaluation over N processes on this node (torchrun; one GPU each), one process's result.
launcher=()
if [[ "${NPROC:-1}" != 1 ]]; then
    launcher=(-m torch.distributed.run --standalone --nproc_per_node="$NPROC")
fi
evaluated=0
missing=()
for entry in "${RELEASED[@]}"; do
    IFS='|' read -r file arch data log expected source model link <<< "$entry"
    if [[ ! -f "$MODELS/$file" ]]; then
        missing+=("$entry")
        continue
    fi
    echo "== $model ($MODELS/$file): published $expected ($source)"
    "$DKL_PY" "${launcher[@]}" eval.py --arch "$arch" --checkpoint "$MODELS/$file" --data "$data" --preprocess '01' \
        --data_dir "$DATA_DIR" --download --log_path "logs/$log.log" "$@"
    evaluated=$((evaluated + 1))
done

if (( ${#missing[@]} )); then
    echo
    echo "Not found in $MODELS:"
    for entry in "${missing[@]}"; do
        IFS='|' read -r file arch data log expected source model link <<< "$entry"
        echo "  $file  ($model; published $expected, $source)"
        echo "      download $link"
    done
    echo "Save each under that name, e.g.: pip install gdown && gdown --fuzzy LINK -O $MODELS/FILE"
fi
echo "$evaluated of ${#RELEASED[@]} released models evaluated; results in $HERE/logs/"
(( evaluated > 0 ))
