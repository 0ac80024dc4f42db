# Sourced by the adversarial-training launchers: one Python start per run.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

# run_adv_training CONFIG [key=value ...]
#   trains (or, with resume=true, continues) the run of configs/adv_training/CONFIG. Training
#   ends with the reference's epoch average (swa.py RUN 0.9 1 200) when the config asks for it
#   (epoch_average.enabled), written as ours-model-epoch-SWA0.91200.pt in the run folder.
#   With --print-config among the arguments it only prints the resolved config (a dry run).
#   NPROC, NNODES, NODE_RANK and MASTER start it under torchrun (see dkl_run in _venv.sh).
run_adv_training() {
    local config="$DKL_ROOT/configs/adv_training/$1"
    shift
    local arg
    for arg in "$@"; do
        [[ "$arg" == "--print-config" ]] && echo "# ---- $config"
    done
    dkl_run adv_training.train --config "$config" "$@"
}

# run_generated_row DATASET "SIZE ..." SIZE [key=value ...]
#   trains configs/adv_training/DATASET_ikl_SIZE.yaml, one of the generated-data rows; SIZE must
#   be one of the listed sizes.
run_generated_row() {
    local dataset="$1" sizes="$2" size="${3:-}"
    if [[ -z "$size" || " $sizes " != *" $size "* ]]; then
        echo "usage: bash sh/train_dkl_${dataset}_generated.sh {${sizes// /|}} [key=value ...] (the amount of generated data)" >&2
        exit 2
    fi
    shift 3
    run_adv_training "${dataset}_ikl_${size}.yaml" "$@"
}
