#!/usr/bin/env bash
# Runs the whole test suite on the CPU (two pytest-xdist workers), creating the virtual environment
# first if needed, and prints its 20 slowest tests. Extra arguments go to pytest, e.g.
#   bash sh/test.sh -m "not slow"        # the fast tier (under 3 minutes): run it before every commit
#   bash sh/test.sh tests/losses -k wmse
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv
cd "$DKL_ROOT"

# Two workers, one per core, each torch on one thread (two threads per worker on two cores would
# oversubscribe them); the tests of one file share a worker, so module fixtures are built once.
# DKL_TEST_WORKERS=0 runs everything in this process (for a debugger or -s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
workers=(-n "${DKL_TEST_WORKERS:-2}")
[[ "${DKL_TEST_WORKERS:-2}" != 0 ]] && workers+=(--dist loadfile)
status=0
"$VENV/bin/python" -m pytest "${workers[@]}" --durations=20 "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests; a test suite that runs nothing does not pass" >&2
    exit 1
fi
exit $status
