"""Deprecated alias: the report is ``python -m experiments.report`` (this alias goes in the next release).

It starts the new command in this process's place, so that `engine` imports no package above it.
"""

import os
import sys

if __name__ == "__main__":
    print(
        "note: python -m engine.report is now python -m experiments.report (this alias goes in the next release)",
        file=sys.stderr,
        flush=True,
    )
    os.execv(sys.executable, [sys.executable, "-m", "experiments.report", *sys.argv[1:]])
