# Sourced by the launchers in sh/: creates, or reuses, the project's virtual environment.
#
#   DKL_VENV    where the environment lives (default: .venv in the repository root)
#   PYTHON      the interpreter that creates it (default: python3; 3.10 or newer)
#   DKL_PYTHON  use this interpreter as it is instead (your own environment with the
#               requirements installed); the launchers then skip the virtual environment
#
# The environment is rebuilt from requirements.txt and setup.py whenever either changes,
# so a pulled dependency change never runs against a stale environment.

DKL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DKL_VENV:-$DKL_ROOT/.venv}"

ensure_venv() {
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: '$python' not found; install Python 3.10+ or set PYTHON=/path/to/python3" >&2
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "error: Python 3.10+ is needed, '$python' is $("$python" --version 2>&1)" >&2
        return 1
    fi
    local stamp="$VENV/.requirements.sha256"
    local wanted
    wanted="$(cat "$DKL_ROOT/requirements.txt" "$DKL_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
        return 0
    fi
    echo "Setting up the virtual environment in $VENV (a few minutes the first time) ..."
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$python" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$DKL_ROOT/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$DKL_ROOT"
    echo "$wanted" > "$stamp"
    echo "Virtual environment ready: $VENV"
}

# The interpreter the launchers run: DKL_PYTHON if set, else the project's environment.
# The repository goes on PYTHONPATH so that its packages import from any directory.
dkl_python() {
    if [[ -n "${DKL_PYTHON:-}" ]]; then
        DKL_PY="$DKL_PYTHON"
    else
        ensure_venv
        DKL_PY="$VENV/bin/python"
    fi
    export PYTHONPATH="$DKL_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

# dkl_run MODULE [ARGS ...]
#   python -m MODULE ARGS in one process, or under torchrun when NPROC (processes per node) or
#   NNODES asks for more. Several nodes also need NODE_RANK (0 .. NNODES-1) and MASTER=host:port,
#   the address of node 0. --print-config and --get never start more than one process.
#   SEEDS="0 1 2" runs the config once per seed through python -m experiments.sweep (one folder per
#   seed under out_dir/<run name>/, finished runs skipped, interrupted ones resumed; with --print
#   it prints the commands instead).
dkl_run() {
    local module="$1"
    shift
    local nproc="${NPROC:-1}" nnodes="${NNODES:-1}" arg
    for arg in "$@"; do
        if [[ "$arg" == "--print-config" || "$arg" == "--get" ]]; then
            "$DKL_PY" -m "$module" "$@"
            return
        fi
    done
    if [[ -n "${SEEDS:-}" ]]; then
        # shellcheck disable=SC2086  # SEEDS is a list of numbers
        "$DKL_PY" -m experiments.sweep --task "${module%%.*}" --seeds $SEEDS "$@"
        return
    fi
    if [[ "$nproc" == 1 && "$nnodes" == 1 ]]; then
        "$DKL_PY" -m "$module" "$@"
        return
    fi
    local nodes=(--standalone)
    if [[ "$nnodes" != 1 ]]; then
        if [[ -z "${MASTER:-}" || -z "${NODE_RANK:-}" || "$MASTER" != *:* ]]; then
            echo "error: NNODES=$nnodes needs NODE_RANK (0..$((nnodes - 1))) and MASTER=host:port (node 0's address)" >&2
            return 2
        fi
        nodes=(--nnodes="$nnodes" --node_rank="$NODE_RANK" --master_addr="${MASTER%:*}" --master_port="${MASTER##*:}")
    fi
    "$DKL_PY" -m torch.distributed.run --nproc_per_node="$nproc" "${nodes[@]}" -m "$module" "$@"
}
