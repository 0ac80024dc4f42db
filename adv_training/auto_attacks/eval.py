"""AutoAttack evaluation of a checkpoint, as RobustBench runs it, with the authors' command line.

    cd adv_training/auto_attacks
    python eval.py --arch WideResNet34 --checkpoint ../pretrained_models/cifar10_a4b20t4.pt \\
        --data CIFAR10 --preprocess '01' --log_path logs/cifar10_dkl_a4b20t4.log
    python -m adv_training.auto_attacks.eval --checkpoint runs/NAME     # a training run folder
    python -m adv_training.auto_attacks.eval ... --version custom --attacks apgd-ce --n_ex 500   # quick sanity check

What it does, in RobustBench's way: the first ``--n_ex`` test images in order, the model in
eval mode and float32 behind the ``--preprocess`` normalisation, clean accuracy, then the
AutoAttack package's attacks (pyautoattack, or upstream ``autoattack`` if only that is
installed); the robust accuracy reported is the model's accuracy on the adversarial examples.

What it writes: progress and results to ``--log_path`` (appended) and stdout; the results
with checkpoint sha256, settings and package versions to the JSON file next to the log
(``logs/x.log`` -> ``logs/x.json``); the adversarial examples to ``--save_dir`` under the
reference's name (``aa_standard_1_10000_eps_0.03137.pth`` holding ``{"adv_complete": x_adv}``).

Several processes: ``torchrun --nproc_per_node=N -m adv_training.auto_attacks.eval ...`` deals each
attack's batches to the N processes (nccl on GPUs, one each; gloo on CPUs); the results, the log
lines and the adversarial examples are one process's exactly, and only rank 0 writes (`resumable`).

Resuming: progress is saved after every attacked batch to ``--state_path`` (default: next
to the log, ``logs/x.state.pt``); rerunning the same command continues where it stopped
and ends with the results of an uninterrupted run (see `resumable`). Once finished, a rerun
only reports the saved results; delete the state file to evaluate again from scratch.

``--checkpoint`` is a file (plain state dict, ``module.``-prefixed, ``{"model"|"state_dict":
...}``), read with ``weights_only=True`` by the model zoo's `load_weights`; or a run folder
of ``adv_training.train`` (holding config.yaml), whose architecture and dataset come from its
config and whose weights ``--which`` picks (`target`, which `corruptions` and the export share); or
``robustbench:ID``, a published model of RobustBench's zoo, built and loaded (downloaded into
``--robustbench_dir`` when missing) by the optional robustbench package (``pip install .[robustbench]``):
its entry for ``--data`` and ``--norm`` (or ``--threat_model``), normalising its inputs itself.
"""

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import List, Optional

if not __package__:  # run as `python eval.py` from inside adv_training/auto_attacks (the authors' way)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from adv_training.auto_attacks.resumable import (  # noqa: E402
    ATTACKS,
    SEQUENTIAL,
    VERSIONS,
    Adversary,
    predict,
    run_autoattack,
)
from adv_training.auto_attacks.target import (  # noqa: E402
    add_model_arguments,
    evaluation_model,
    resolve_target,
    robustbench_fields,
)
from engine.cli import command  # noqa: E402
from engine.data import build_test_set, first_examples  # noqa: E402
from engine.distributed import init_distributed, is_main_process, shutdown_distributed, world_size  # noqa: E402
from engine.environment import (  # noqa: E402
    capture_rng_state,
    configure_precision,
    environment_info,
    resolve_device,
    restore_rng_state,
)
from engine.errors import UserError  # noqa: E402
from engine.file_io import atomic_save, atomic_write_text, sha256_file, writing  # noqa: E402

# --- logging ---------------------------------------------------------------------------------


class EvalLog:
    """Each line to stdout and appended to the log file (append-only, like the authors' logs); under
    several processes only rank 0 writes (its lines describe the whole evaluation)."""

    def __init__(self, path: Path):
        self.path = path
        self.enabled = is_main_process()
        if self.enabled:
            with writing(path.parent):
                path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        with writing(self.path), open(self.path, "a", encoding="utf-8") as stream:
            stream.write(message + "\n")


class _ForwardToLog(logging.Handler):
    """Copies the AutoAttack package's log records (its checks' warnings) into the log, each once:
    the package runs its checks once per batch here, so a warning would otherwise repeat."""

    def __init__(self, log: EvalLog):
        super().__init__(logging.INFO)
        self.log = log
        self.seen = set()

    def emit(self, record):
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            self.log(f"[autoattack] {message}")


@contextlib.contextmanager
def autoattack_warnings_into(log: EvalLog):
    """Route the package's ``auto-attack`` logger into our log (only there) for the duration."""
    logger = logging.getLogger("auto-attack")
    handler = _ForwardToLog(log)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# --- the command line ------------------------------------------------------------------------


def _fraction(text: str) -> float:
    """A float, or a fraction such as 8/255 or 8./255. (how budgets are quoted)."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adv_training.auto_attacks.eval",
        description="AutoAttack (RobustBench's protocol) on a checkpoint or a training run folder. "
        "The flags up to --version are the authors' eval.py's.",
    )
    add = parser.add_argument
    add_model_arguments(add)
    add("--data_dir", default="./data", help="folder holding cifar-10-batches-py / cifar-100-python")
    add("--norm", choices=["Linf", "L2"], default="Linf", help="threat model")
    add("--epsilon", type=_fraction, default=8 / 255, help="perturbation budget (8/255 is accepted)")
    add("--n_ex", type=int, default=10000, help="evaluate the first N test images")
    add("--individual", action="store_true", help="run each attack alone on all points (not the standard sequence)")
    add("--save_dir", default="./adv_inputs", help="folder for the adversarial examples")
    add("--batch_size", type=int, default=200, help="images per AutoAttack batch")
    add("--log_path", default="./log.txt", help="log file (appended); the JSON results go next to it")
    add(
        "--version",
        choices=VERSIONS,
        default="standard",
        help="standard: APGD-CE, APGD-T, FAB-T, Square (the reported number); plus; rand (randomised defences); "
        "custom: --attacks",
    )
    add(
        "--attacks",
        nargs="+",
        choices=ATTACKS,
        default=None,
        metavar="ATTACK",
        help=f"attacks of --version custom, in order, from {', '.join(ATTACKS)} (default apgd-ce fab, the "
        f"authors' custom version; APGD and FAB with 2 restarts)",
    )
    add("--seed", type=int, default=0, help="seed of the attacks (the caller's RNG state is restored afterwards)")
    add(
        "--dist_timeout",
        type=float,
        default=1800.0,
        help="under torchrun: seconds a process waits for the others at an exchange before the evaluation fails",
    )
    add(
        "--state_path",
        type=Path,
        default=None,
        help="progress file to resume from; default: next to the log (logs/x.log -> logs/x.state.pt)",
    )
    add("--download", action="store_true", help="download the test set into --data_dir when it is missing")
    add(
        "--no_checksum",
        action="store_true",
        help="skip the MD5 check of the dataset files: only for CIFAR-format data you generated yourself",
    )
    args = parser.parse_args(argv)
    if args.n_ex < 1 or args.batch_size < 1:
        parser.error("--n_ex and --batch_size must be positive")
    if not args.dist_timeout > 0:
        parser.error(f"--dist_timeout must be a positive number of seconds, got {args.dist_timeout}")
    if not math.isfinite(args.epsilon) or args.epsilon <= 0:
        parser.error(f"--epsilon must be a positive number, got {args.epsilon}")
    if args.norm == "Linf" and args.epsilon > 1:
        parser.error(f"--epsilon {args.epsilon} is more than 1 for Linf (images lie in [0, 1]); write 8/255, not 8")
    return args


def load_test_images(dataset: str, args) -> tuple:
    """(x, y, size of the test set): the first --n_ex test images in order, as RobustBench takes them."""
    test_set = build_test_set(dataset, args.data_dir, download=args.download, verify_checksum=not args.no_checksum)
    images = first_examples(test_set, args.n_ex)
    x = torch.stack([images[i][0] for i in range(len(images))]).float()
    y = torch.tensor([int(images[i][1]) for i in range(len(images))])
    return x, y, len(test_set)


def results_paths(args) -> tuple:
    """(log, JSON, state) paths: the JSON and the state file sit next to the log."""
    log_path = Path(args.log_path)
    if log_path.suffix in (".json", ".pt"):
        raise UserError(f"--log_path {log_path} would collide with the results files; use e.g. a .log or .txt name")
    state_path = args.state_path if args.state_path is not None else log_path.with_suffix(".state.pt")
    return log_path, log_path.with_suffix(".json"), state_path


def adversarial_path(args, n: int) -> Path:
    """The reference's file name (aa_standard_1_10000_eps_0.03137.pth)."""
    kind = "individual_1" if args.individual else "1"
    return Path(args.save_dir) / f"aa_{args.version}_{kind}_{n}_eps_{args.epsilon:.5f}.pth"


def evaluate(args, command: str = "eval.py") -> dict:
    """The whole evaluation; returns what goes into the JSON file. ``command`` heads the log."""
    log_path, json_path, state_path = results_paths(args)
    target = resolve_target(args)
    # Under torchrun each process attacks its share of every attack's batches (`resumable`).
    device = init_distributed(resolve_device(args.device), args.dist_timeout)
    if target.robustbench_id is not None and world_size() > 1 and not target.file.is_file():
        raise UserError(
            f"{target.file} is not there yet, and {world_size()} processes would each download it: run the "
            f"command once without torchrun to download it (or place the file there), then under torchrun"
        )
    model = evaluation_model(target, device)
    net = model[1]

    x, y, test_size = load_test_images(target.dataset, args)

    log = EvalLog(log_path)
    adversary = Adversary(
        model,
        norm=args.norm,
        eps=args.epsilon,
        version=args.version,
        attacks=args.attacks,
        device=device,
        seed=args.seed,
    )
    # What identifies the evaluation for resuming (not where the files are).
    fingerprint = {
        "checkpoint_sha256": sha256_file(target.file),
        "arch": target.arch,
        **target.build_kwargs,
        "data": target.dataset,
        "n_ex": len(y),
        "preprocess": target.preprocess,
        "norm": args.norm,
        "epsilon": args.epsilon,
        "version": args.version,
        "attacks": adversary.attacks,
        "individual": args.individual,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    log(f"==== {datetime.now().isoformat(timespec='seconds')}  {command}")
    if target.robustbench_id is not None:
        log(
            f"RobustBench's {target.robustbench_id} ({target.dataset} {target.threat_model}, robustbench "
            f"{robustbench_fields(target)['robustbench_version']}): {target.file}"
        )
    if target.run_dir is not None:
        log(
            f"run folder {target.run_dir}: evaluating {target.file.name} (--which {target.which}; "
            f"swa, ema, best or last choose another)"
        )
    if target.preprocess != "01" and any(name in ("mean", "std") for name, _ in net.named_buffers(recurse=False)):
        log(f"note: {target.arch} normalises its inputs itself; --preprocess {target.preprocess} normalises them twice")
    log(
        f"{target.arch} on {target.dataset} ({len(y)} images), {args.norm} eps {args.epsilon:.5f}, "
        f"{args.version} version: {', '.join(adversary.attacks)}; {adversary.package} on {device}"
    )
    partial = [
        reason
        for reason, applies in (
            ("not the standard version", args.version != "standard"),
            (f"{len(y)} of {test_size} test images", len(y) < test_size),
        )
        if applies
    ]
    if partial:
        log(f"note: {' and '.join(partial)}: a sanity check, not a result to report")

    started = time.perf_counter()
    with autoattack_warnings_into(log):
        result = run_autoattack(
            adversary,
            model,
            x,
            y,
            batch_size=args.batch_size,
            device=device,
            individual=args.individual,
            state_path=state_path,
            fingerprint=fingerprint,
            log=log,
        )
    session_seconds = time.perf_counter() - started

    # RobustBench reports the model's accuracy on the returned adversarial examples.
    if args.individual:
        adv_acc = {
            name: (predict(model, x_adv, args.batch_size, device) == y).float().mean().item()
            for name, x_adv in result.x_adv.items()
        }
        robust_acc = result.robust_acc
    else:
        robust_acc = (predict(model, result.x_adv[SEQUENTIAL], args.batch_size, device) == y).float().mean().item()
        if abs(robust_acc - result.robust_acc) > 0.5 / len(y):
            log(
                f"warning: accuracy on the adversarial examples {robust_acc:.2%} differs from AutoAttack's "
                f"{result.robust_acc:.2%} (a non-deterministic model?)"
            )
    adv_file = adversarial_path(args, len(y))
    main = is_main_process()  # every process holds the same results; rank 0 writes them
    if main and args.individual:
        atomic_save({name: x_adv for name, x_adv in result.x_adv.items()}, adv_file)
    elif main:
        atomic_save({"adv_complete": result.x_adv[SEQUENTIAL]}, adv_file)

    def percent(value: float) -> float:
        return round(100 * value, 2)

    label = "robust accuracy by" if args.individual else "robust accuracy after"
    lines = [f"clean accuracy: {percent(result.clean_acc):.2f}%"]
    lines += [f"{label} {attack.upper()}: {percent(acc):.2f}%" for attack, acc in result.robust_after.items()]
    if args.individual:
        lines.append(f"robust against every attack (individual runs combined): {percent(robust_acc):.2f}%")
    else:
        lines.append(f"AutoAttack ({args.version}) robust accuracy: {percent(robust_acc):.2f}%")
    lines.append(
        f"attack time {result.seconds:.1f} s over {len(y)} images"
        + (f" (this session {session_seconds:.1f} s, resumed)" if result.resumed else "")
    )
    lines.append(f"results: {json_path}; adversarial examples: {adv_file}")
    for line in lines:
        log(line)

    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_file": str(target.file),
        "which": target.which,
        **robustbench_fields(target),
        **fingerprint,
        "data_dir": str(args.data_dir),
        "clean_acc": percent(result.clean_acc),
        "robust_acc": percent(robust_acc),
        ("robust_acc_by" if args.individual else "robust_acc_after"): {
            attack: percent(acc) for attack, acc in result.robust_after.items()
        },
        "attack_seconds": round(result.seconds, 1),
        "session_seconds": round(session_seconds, 1),
        "resumed": result.resumed,
        "device": str(device),
        "processes": world_size(),
        "log_path": str(log_path),
        "state_path": str(state_path),
        "adversarial_examples": str(adv_file),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "versions": {"autoattack": adversary.package, **environment_info()},
    }
    if args.individual:
        report["robust_acc_on_examples_by"] = {name: percent(acc) for name, acc in adv_acc.items()}
    if main:
        atomic_write_text(json.dumps(report, indent=2) + "\n", json_path)
    return report


@command
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # Building the model and the attacks' reseeding use torch's global RNG; the caller gets its state back.
    rng = capture_rng_state()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # True float32 on GPUs too: PyTorch runs cuDNN convolutions in TF32 unless told otherwise.
    configure_precision("fp32")
    finished = False
    try:
        evaluate(args, command=" ".join(["eval.py", *argv]))
        finished = True
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to continue from {results_paths(args)[2]}", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed(all_finished=finished)
        restore_rng_state(rng)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return 0


if __name__ == "__main__":
    sys.exit(main())
