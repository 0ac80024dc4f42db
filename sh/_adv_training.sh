# Sourced by the adversarial-training launchers: one Python start per run.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

# run_adv_training CONFIG [key=value ...]
#   trains (or, with resume=true, continues) the run of configs/adv_training/CONFIG. Training
#   ends with the reference's epoch average (swa.py RUN 0.9 1 200) when the config asks for it
#   (swa.enabled), written as ours-model-epoch-SWA0.91200.pt in the run folder.
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
