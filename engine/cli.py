"""The command line every entry point shares: `command` (one line and exit status 2 for a
`UserError`) and `config_main`, the training entry points' config handling.

    python -m <task>.train --config FILE [key=value ...]
    python -m <task>.train --config FILE --print-config     # the resolved config, every knob explained
    python -m <task>.train --config FILE --get optim.lr     # one resolved value (or run_dir), for scripts

A `UserError` (bad config, missing data or checkpoint, NaN loss) ends in one line on
stderr and exit status 2; an interruption says how to resume.
"""

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Type

from .config import get_value, load_config, to_yaml
from .distributed import shutdown_distributed
from .errors import UserError


def error_exit(error: BaseException) -> int:
    """The end of every command that met bad input: ``error: ...`` on stderr, exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def command(main: Optional[Callable] = None, *, also: Tuple[Type[BaseException], ...] = ()) -> Callable:
    """Decorator of a command's ``main(argv) -> int``: a `UserError` (or an exception of ``also``,
    e.g. OSError for a command that reads files it was given) ends in `error_exit`.

        @command
        def main(argv=None) -> int: ...
    """
    if main is None:
        return functools.partial(command, also=also)

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (UserError, *also) as error:
            return error_exit(error)

    return wrapped


def nondeterminism_reason(error: RuntimeError) -> Optional[str]:
    """What torch.use_deterministic_algorithms(True) refused, in a few words (None for other errors)."""
    text = str(error)
    match = re.search(r"(\S+) does not have a deterministic implementation", text)
    if match:
        return f"{match.group(1)} (an operation of this run) has no deterministic implementation in torch"
    if "CUBLAS_WORKSPACE_CONFIG" in text:
        value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if value in (":4096:8", ":16:8"):
            return (
                f"CUBLAS_WORKSPACE_CONFIG={value} was set after this process's first CUDA matrix product, "
                f"which torch reads it at (start the run in a fresh process, or export it before)"
            )
        return f"CUBLAS_WORKSPACE_CONFIG is set to {value!r}, which is not deterministic (unset it, or set :4096:8)"
    return None


def config_main(
    schema: Type,
    run: Callable,
    *,
    prog: str,
    description: str,
    argv: Optional[List[str]] = None,
    check: Optional[Callable] = None,
) -> int:
    """Parse the command line, load the config (and ``check`` it: the task's registry lookup, which
    raises the config error of an unknown method), then ``run(cfg)``; errors end in one line."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file (see configs/); without it, the schema's defaults")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config with every knob's meaning, then exit"
    )
    parser.add_argument(
        "--get", metavar="KEY", help="print one resolved value (a dotted config key, or run_dir), then exit"
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=0.1")
    args = parser.parse_args(argv)
    finished = False
    try:
        cfg = load_config(schema, args.config, args.overrides)
        if check is not None:
            check(cfg)
        if args.print_config:
            print(to_yaml(cfg, with_help=True), end="")
            return 0
        if args.get:
            print(Path(cfg.out_dir) / cfg.run_name() if args.get == "run_dir" else get_value(cfg, args.get))
            return 0
        run(cfg)
        finished = True
    except UserError as error:
        return error_exit(error)
    except RuntimeError as error:
        reason = nondeterminism_reason(error)
        if reason is None:
            raise
        print(
            f"error: deterministic=true, but {reason}; run with deterministic=false (the run is then reproducible "
            f"only up to the order of floating-point sums)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command with resume=true to continue from last.pt", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed(all_finished=finished)
    return 0
