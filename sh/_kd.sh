# Sourced by the distillation launchers sh/kd_cifar100.sh and sh/kd_imagenet.sh: one method on
# teacher/student pairs. A pair's own file (configs/knowledge_distillation/DATASET/PAIR.yaml) runs
# the logit methods (method=METHOD); a recipe with a folder of its own (a feature distiller, DIST,
# MLKD, CTKD, the logit-standardization rows kd_ls ...) runs its RECIPE/PAIR.yaml, which extends it.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

KD_LOGIT_METHODS="vanilla kd dkd ikl"

# kd_split_arguments ARG ...: the names among the arguments into KD_PAIRS, key=value overrides and
#   --flags into KD_OVERRIDES (the pair launchers sh/kd_cifar100_ikl.sh and sh/kd_cifar100_gkl.sh).
kd_split_arguments() {
    KD_PAIRS=()
    KD_OVERRIDES=()
    local arg
    for arg in "$@"; do
        if [[ "$arg" == *=* || "$arg" == --* ]]; then
            KD_OVERRIDES+=("$arg")
        else
            KD_PAIRS+=("$arg")
        fi
    done
}

# kd_train_each CONFIGS SUFFIX PAIR ...: trains CONFIGS/PAIR${SUFFIX}.yaml for each pair in turn with
#   KD_OVERRIDES (under --print-config, a "# ---- PAIR" line heads each resolved config).
kd_train_each() {
    local configs="$1" suffix="$2" pair
    shift 2
    for pair in "$@"; do
        [[ " ${KD_OVERRIDES[*]-} " == *" --print-config "* ]] && echo "# ---- $pair"
        dkl_run knowledge_distillation.train --config "$configs/$pair$suffix.yaml" ${KD_OVERRIDES[@]+"${KD_OVERRIDES[@]}"}
    done
}

# kd_train_listed CONFIGS SUFFIX "PAIR ..." ARG ...: trains CONFIGS/PAIR${SUFFIX}.yaml for the pairs named
#   among ARG (all the listed pairs, in their order, when none is), with the key=value and --flag arguments;
#   a pair that is not listed prints the valid names and exits 2 (the GKL launchers).
kd_train_listed() {
    local configs="$1" suffix="$2" listed="$3" pair
    shift 3
    kd_split_arguments "$@"
    [[ ${#KD_PAIRS[@]} -eq 0 ]] && read -r -a KD_PAIRS <<< "$listed"
    for pair in "${KD_PAIRS[@]}"; do
        if [[ " $listed " != *" $pair "* ]]; then
            echo "error: no pair '$pair'; choose from: $listed" >&2
            exit 2
        fi
    done
    dkl_python
    kd_train_each "$configs" "$suffix" "${KD_PAIRS[@]}"
}

# kd_launch DATASET all|one METHOD [PAIR ...] [key=value ...] [--print-config]
#   trains METHOD on each PAIR in turn; without a PAIR on every pair ("all") or refuses ("one").
#   A wrong method or pair prints the usage line with the valid names and exits 2.
kd_launch() {
    local dataset="$1" without_pair="$2"
    shift 2
    local configs="$DKL_ROOT/configs/knowledge_distillation/$dataset" launcher="sh/kd_$dataset.sh"
    local known_pairs=() recipes=() method="" pairs=() overrides=() arg file name
    for file in "$configs"/*.yaml; do
        name="$(basename "$file" .yaml)"
        [[ "$name" == base || "$name" == *_gkl ]] || known_pairs+=("$name")  # PAIR_gkl: a setting of PAIR
    done
    for file in "$configs"/*/; do
        name="$(basename "$file")"
        compgen -G "$file*.yaml" >/dev/null && recipes+=("$name")
    done
    _kd_usage() {
        echo "usage: bash $launcher METHOD $([[ "$without_pair" == all ]] && echo "[PAIR ...]" || echo "PAIR ...") [key=value ...] [--print-config]"
        echo "  METHOD: ${recipes[*]} (files of their own) or $KD_LOGIT_METHODS (the pair's file)"
        echo "  PAIR: ${known_pairs[*]}"
    }
    for arg in "$@"; do
        if [[ "$arg" == -h || "$arg" == --help ]]; then
            _kd_usage
            exit 0
        elif [[ "$arg" == *=* || "$arg" == --* ]]; then
            overrides+=("$arg")
        elif [[ -z "$method" ]]; then
            method="$arg"
        else
            pairs+=("$arg")
        fi
    done
    local methods=" ${recipes[*]} $KD_LOGIT_METHODS " pair_names=" ${known_pairs[*]} "
    if [[ -z "$method" ]]; then
        { echo "error: name a method"; _kd_usage; } >&2
        exit 2
    fi
    if [[ "$methods" != *" $method "* ]]; then
        { echo "error: no method '$method'"; _kd_usage; } >&2
        exit 2
    fi
    # A recipe with a folder of its own (a feature distiller, DIST, ...) runs its RECIPE/PAIR.yaml; any other
    # method runs the pair's own config with method=METHOD.
    local own_configs=0
    [[ -d "$configs/$method" ]] && own_configs=1
    if [[ ${#pairs[@]} -eq 0 ]]; then
        if [[ "$without_pair" != all ]]; then
            { echo "error: name a pair"; _kd_usage; } >&2
            exit 2
        fi
        pairs=("${known_pairs[@]}")
        if [[ $own_configs == 1 ]]; then  # the pairs the recipe has a file for, in the pairs' order
            pairs=()
            for arg in "${known_pairs[@]}"; do
                [[ -f "$configs/$method/$arg.yaml" ]] && pairs+=("$arg")
            done
        fi
    fi
    for arg in "${pairs[@]}"; do
        if [[ "$pair_names" != *" $arg "* ]]; then
            { echo "error: no pair '$arg'"; _kd_usage; } >&2
            exit 2
        fi
    done
    for arg in "${pairs[@]}"; do
        file="$configs/$method/$arg.yaml"
        if [[ $own_configs == 1 && ! -f "$file" ]]; then
            echo "error: $method has no config for $arg ($file); its pairs: $(cd "$configs/$method" && ls -- *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
            [[ " $KD_LOGIT_METHODS " == *" $method "* ]] || echo "  (a logit method on another pair: python -m knowledge_distillation.train --config $configs/$arg.yaml method=$method)" >&2
            exit 2
        fi
    done
    dkl_python
    for arg in "${pairs[@]}"; do
        [[ " ${overrides[*]-} " == *" --print-config "* ]] && echo "# ---- $method $arg"
        if [[ $own_configs == 1 ]]; then
            dkl_run knowledge_distillation.train --config "$configs/$method/$arg.yaml" ${overrides[@]+"${overrides[@]}"}
        else
            dkl_run knowledge_distillation.train --config "$configs/$arg.yaml" "method=$method" ${overrides[@]+"${overrides[@]}"}
        fi
    done
}
