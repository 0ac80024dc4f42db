"""Deprecated alias: the sweep is ``python -m experiments.sweep`` (this alias goes in the next release).

It starts the new command in this process's place, so that `engine` imports no package above it.
"""

import os
import sys

if __name__ == "__main__":
    print(
        "note: python -m engine.sweep is now python -m experiments.sweep (this alias goes in the next release)",
        file=sys.stderr,
        flush=True,
    )
    os.execv(sys.executable, [sys.executable, "-m", "experiments.sweep", *sys.argv[1:]])
