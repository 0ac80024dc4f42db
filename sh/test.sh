#!/usr/bin/env bash
# Runs the whole test suite on the CPU (two pytest-xdist workers), creating the virtual environment
# first if needed: the fast tier (-m "not slow"), then the slow tier (-m slow), each printing its
# 20 slowest tests. With arguments it runs pytest once with them instead, e.g.
#   bash sh/test.sh -m "not slow"        # the fast tier (under 3 minutes): run it before every commit
#   bash sh/test.sh tests/losses -k wmse
# Every test has a time limit (DKL_TEST_TIMEOUT seconds, default 600, pytest-timeout): a test that
# hangs fails with its name and its stack instead of stalling the run until CI kills it unnamed.
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
# The heaviest tests take about 70 s on two CPU cores (their module fixtures included, which count
# towards the first test that uses them); 600 s leaves room for a slower or busier machine and
# still names a hang within ten minutes. A --timeout among the arguments overrides it.
timeout=(--timeout "${DKL_TEST_TIMEOUT:-600}")

# run_pytest LABEL ARGS...: one pytest run; its status, with "no test collected" (5) a failure.
run_pytest() {
    local label="$1" status=0
    shift
    "$VENV/bin/python" -m pytest "${workers[@]}" "${timeout[@]}" --durations=20 "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        echo "error: pytest collected no tests${label:+ in $label}; a test suite that runs nothing does not pass" >&2
        return 1
    fi
    return $status
}

if [[ $# -gt 0 ]]; then
    status=0
    run_pytest "" "$@" || status=$?
    exit $status
fi

# The whole suite, as CI runs it: both tiers even when the first fails, so that one run shows
# every failure; the exit status is the first failing tier's.
status=0
for tier in "not slow" "slow"; do
    echo "== the ${tier/not slow/fast} tier (-m \"$tier\")"
    tier_status=0
    run_pytest "the ${tier/not slow/fast} tier" -m "$tier" || tier_status=$?
    if [[ $tier_status -ne 0 ]]; then
        echo "error: the ${tier/not slow/fast} tier failed (pytest exit status $tier_status)" >&2
        [[ $status -eq 0 ]] && status=$tier_status
    fi
done
exit $status
