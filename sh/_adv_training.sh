# Sourced by the adversarial-training launchers: train one config, then average its epochs.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

# run_adv_training CONFIG [key=value ...]
#   trains (or, with resume=true, continues) the run of CONFIG, then writes the reference's
#   post-hoc epoch average (tau 0.9 from epoch 1 to the last epoch) into the run folder.
#   With --print-config among the arguments it only prints the resolved config (a dry run).
run_adv_training() {
    local config="$DKL_ROOT/configs/adv_training/$1"
    shift
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "--print-config" ]]; then
            echo "# ---- $config"
            "$DKL_PY" -m adv_training.train --config "$config" "$@"
            return
        fi
    done
    "$DKL_PY" -m adv_training.train --config "$config" "$@"
    local run_dir epochs
    run_dir="$("$DKL_PY" -m adv_training.train --config "$config" --get run_dir "$@")"
    epochs="$("$DKL_PY" -m adv_training.train --config "$config" --get epochs "$@")"
    "$DKL_PY" -m adv_training.swa "$run_dir" 0.9 1 "$epochs"
}
