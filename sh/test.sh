#!/usr/bin/env bash
# Runs the whole test suite on the CPU, creating the virtual environment first if needed, and
# prints its 20 slowest tests. Extra arguments go to pytest, e.g.
#   bash sh/test.sh -m "not slow"        # the fast tier (under 3 minutes): run it before every commit
#   bash sh/test.sh tests/losses -k wmse
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$DKL_ROOT"

status=0
"$VENV/bin/python" -m pytest --durations=20 "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests; a test suite that runs nothing does not pass" >&2
    exit 1
fi
exit $status
