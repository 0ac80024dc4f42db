#!/usr/bin/env bash
# Reruns the quickstart (--compare, a few minutes on 2 CPU cores) and exits non-zero when the
# table it prints differs from the one the docs show (method, clean, PGD-20, AutoAttack).
#   bash sh/check_docs.sh                     # run and compare
#   bash sh/check_docs.sh --output FILE       # compare a saved quickstart output
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
dkl_python
# the quickstart itself uses the same interpreter
export DKL_PYTHON="$DKL_PY"
exec "$DKL_PY" "$DKL_ROOT/docs/check_docs.py" "$@"
