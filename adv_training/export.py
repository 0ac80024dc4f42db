"""A trained model as a plain state dict that RobustBench's model definitions load, with a model card.

    python -m adv_training.export runs/cifar100_ikl_a4b20t4 --which swa --out exports/cifar100_ikl.pt

Writes FILE.pt, the weights of the run folder's epoch average (``swa``), EMA (``ema``), best
(``best``) or last epoch (``last``; the default is AutoAttack's eval.py default: the epoch
average, else the EMA, else best.pt), and FILE.json, the model card: architecture with the
RobustBench constructor that loads the file strictly, dataset, the input normalisation the weights
expect (``preprocess``: the run's model.preprocess, 01 = none), threat model and epsilon, clean
and AutoAttack accuracy with the files they come from (the newest AutoAttack report in the
run folder for exactly these weights, matched by sha256; else the last epoch's monitored
numbers, said so), the resolved config, the seed and the git commit of the run.

With ``--robustbench`` it also writes the submission kit of RobustBench's leaderboards:
FILE.robustbench_Linf.json (or _L2), the model-info entry in the schema of RobustBench's
``model_info/<dataset>/<threat>/*.json`` files, from the run's own standard AutoAttack report on
the whole test set; FILE.robustbench_corruptions.json from its corruption evaluation
(`adv_training.auto_attacks.corruptions`), when there is one for these weights; and
FILE.robustbench_issue.md, their "New Model(s)" issue template filled in. What the run cannot
know (paper title, URL, authors, venue, the paper's reported number, a footnote, where the
checkpoint is published) comes from flags; what is not given stays empty (null) and is listed,
never guessed.

Layouts: our ``WideResNet*`` models have the keys of RobustBench's
``WideResNet(depth, widen_factor, sub_block1=False)``; ``wrn-28-10-swish`` and
``wrn-70-16-swish`` those of ``DMWideResNet(..., activation_fn=Swish)``, whose normalisation
``mean`` and ``std`` RobustBench keeps in the state dict, so the export adds them. Other
architectures are exported in this repository's own layout (``models.build_model`` loads
them) and the card says there is no RobustBench definition.
"""

import argparse
import hashlib
import io
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from engine.cli import command
from engine.data import num_classes as data_num_classes
from engine.data.datasets import DIGITS_TEST_SIZE
from engine.errors import UserError
from engine.file_io import atomic_write_text, sha256_file, write_atomically, writing
from engine.run_folder import RunFolder, metric_key
from models.dm_wide_resnet import DMWideResNet
from models.wide_resnet import WideResNet

from .auto_attacks.reports import matching_autoattack, matching_corruptions, threat_model
from .auto_attacks.target import build_network, run_target

# flag -> what it is: what a run cannot know about its paper
PAPER_FLAGS = {
    "paper_title": "the paper's title",
    "paper_url": "the paper's URL",
    "authors": "the authors",
    "venue": "the venue, e.g. 'NeurIPS 2024'",
    "reported": "the robust accuracy the paper reports",
}
# The size of each dataset's test set: an entry's accuracies must cover all of it (digits: the quickstart's).
TEST_SET_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": DIGITS_TEST_SIZE}


def robustbench_layout(model: torch.nn.Module, num_classes: int) -> Tuple[Optional[str], Dict[str, torch.Tensor]]:
    """(the RobustBench constructor call that loads the export, the state dict in its layout)."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if isinstance(model, WideResNet):
        depth, width = 6 * len(model.block1.layer) + 4, model.block1.layer[0].conv1.out_channels // 16
        return f"WideResNet(depth={depth}, widen_factor={width}, num_classes={num_classes})", state
    if isinstance(model, DMWideResNet):
        depth, width = 6 * len(model.layer[0].block) + 4, model.layer[0].block[0].conv_0.out_channels // 16
        state["mean"], state["std"] = model.mean.detach().clone(), model.std.detach().clone()
        mean, std = (tuple(round(v, 4) for v in t.flatten().tolist()) for t in (model.mean, model.std))
        return (
            f"DMWideResNet(num_classes={num_classes}, depth={depth}, width={width}, activation_fn=Swish, "
            f"mean={mean}, std={std})"
        ), state
    return None, state


def model_card(
    run_dir: Path, weights: Path, which: str, arch: str, dataset: str, constructor: Optional[str]
) -> Dict[str, Any]:
    """The card of ``weights`` (without its ``export`` entry, which `export` adds once the file is written),
    every number read from the run's reports checked first (`reports.check_autoattack_report`)."""
    folder = RunFolder(run_dir)
    config = folder.read_config_or_empty()
    evaluation = config.get("eval") or {}
    norm, epsilon = threat_model(config)
    environment = folder.read_environment()
    card: Dict[str, Any] = {
        "architecture": arch,
        "robustbench_model": constructor,
        "dataset": dataset,
        # model.preprocess: meanstd weights expect (x - mean) / std (models.MEAN_STD) in front of the network
        "preprocess": (config.get("model") or {}).get("preprocess", "01"),
        "threat_model": {"linf": "Linf", "l2": "L2"}.get(norm, norm),
        "eps": epsilon,
        "eps_over_255": round(epsilon * 255, 4) if isinstance(epsilon, (int, float)) else None,
        "weights": {
            "run_dir": str(run_dir),
            "which": which,
            "file": weights.name,
            "path": str(weights),
            "sha256": sha256_file(weights),
        },
    }
    found = matching_autoattack(run_dir, weights, norm, epsilon)
    if found is not None:
        path, report = found
        card["clean_acc"] = {"value": report["clean_acc"], "n_ex": report.get("n_ex"), "source": str(path)}
        card["autoattack_acc"] = {
            "value": report["robust_acc"],
            "n_ex": report.get("n_ex"),
            "version": report.get("version"),
            "epsilon": report.get("epsilon"),
            "source": str(path),
        }
    else:
        # The last epoch's monitor measured the model, the EMA and (at its last epoch) the epoch
        # average as they ended; best.pt holds another epoch's weights, so it gets no number.
        owner = {"ema": "ema", "swa": "swa", "last": "model"}.get(which)
        clean = folder.final_metrics().get(metric_key("clean_acc", owner=owner)) if owner is not None else None
        card["clean_acc"] = (
            None
            if clean is None
            else {
                "value": clean,
                "n_ex": evaluation.get("num_examples"),
                "source": f"{folder.results} (the last epoch's monitor)",
            }
        )
        card["autoattack_acc"] = None
        card["note"] = (
            f"no standard AutoAttack report at this threat model in {run_dir} for these weights; run "
            f"python -m adv_training.auto_attacks.eval --checkpoint {run_dir} --which {which}, then "
            f"export again"
        )
    card.update(
        {
            "config": config,
            "seed": config.get("seed"),
            "commit": environment.get("git_commit"),
            "torch": environment.get("torch"),
            "exported": datetime.now().isoformat(timespec="seconds"),
        }
    )
    return card


def robustbench_architecture(constructor: Optional[str], arch: str) -> str:
    """RobustBench's name of the architecture ("WideResNet-34-10"), else the zoo's name."""
    match = re.search(r"depth=(\d+), (?:widen_factor|width)=(\d+)", constructor or "")
    return f"WideResNet-{match.group(1)}-{match.group(2)}" if match else arch


def eps_text(epsilon: float) -> str:
    """RobustBench writes budgets as "8/255"."""
    steps = epsilon * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{epsilon:g}"


def robustbench_kit(card: Dict[str, Any], run_dir: Path, weights: Path, paper: Dict[str, Any]) -> Dict[str, Any]:
    """The model-info entries (adversarial, and corruptions when evaluated) and the issue text, with
    the list of what is missing and why. The entries' fields, in order, are those of RobustBench's
    model_info/cifar10/Linf/Cui2023Decoupled_WRN-34-10.json and
    model_info/cifar10/corruptions/Addepalli2022Efficient_WRN_34_10.json (the test keeps both lists)."""
    missing = [f"--{flag} ({what})" for flag, what in PAPER_FLAGS.items() if paper.get(flag) in (None, "")]
    common = {
        "link": paper.get("paper_url"),
        "name": paper.get("paper_title"),
        "authors": paper.get("authors"),
        "additional_data": bool(paper.get("additional_data")),
        "number_forward_passes": 1,  # a deterministic model: one forward pass per prediction
        "dataset": card["dataset"],
        "venue": paper.get("venue"),
        "architecture": robustbench_architecture(card["robustbench_model"], card["architecture"]),
    }
    reported = None if paper.get("reported") is None else f"{float(paper['reported']):.2f}"
    attack = card.get("autoattack_acc")
    test_set_size = TEST_SET_SIZES.get(card["dataset"])
    full = attack is not None and attack.get("n_ex") == test_set_size
    if attack is None:
        missing.append("autoattack_acc: no standard AutoAttack report for these weights in the run folder")
    elif not full:
        missing.append(
            f"autoattack_acc: the AutoAttack report covers {attack.get('n_ex')} images, not all {test_set_size}"
        )
    adversarial = {
        **common,
        "eps": eps_text(card["eps"]) if isinstance(card["eps"], (int, float)) else None,
        "clean_acc": f"{card['clean_acc']['value']:.2f}" if full else None,
        "reported": reported,
        "autoattack_acc": f"{attack['value']:.2f}" if full else None,
        "unreliable": False,
    }
    if paper.get("footnote"):
        adversarial["footnote"] = paper["footnote"]
    kit: Dict[str, Any] = {"threat": card["threat_model"], "adversarial": adversarial, "corruptions": None}
    found = matching_corruptions(run_dir, weights)
    if found is not None:
        path, report = found
        if report.get("n_ex_per_severity") != test_set_size:
            missing.append(f"corruptions_acc: {path} covers {report.get('n_ex_per_severity')} images per severity")
        else:
            kit["corruptions"] = {
                **common,
                "eps": None,
                "clean_acc": adversarial["clean_acc"],
                "reported": None,
                "corruptions_acc": f"{report['corruptions_acc']:.2f}",
                "source": str(path),
            }
    kit["missing"] = missing
    kit["issue"] = robustbench_issue(kit, card, paper)
    return kit


def robustbench_issue(kit: Dict[str, Any], card: Dict[str, Any], paper: Dict[str, Any]) -> str:
    """RobustBench's "New Model(s)" issue template (.github/ISSUE_TEMPLATE/new-model.md), filled in."""

    def given(value, flag: str) -> str:
        return str(value) if value not in (None, "") else f"(not given: pass --{flag})"

    def percent(value: Optional[str], why: str) -> str:
        return f"{value}%" if value is not None else f"(none: {why})"

    attack = card.get("autoattack_acc") or {}
    lines = [
        f"[New Model] {given(paper.get('paper_title'), 'paper_title')}",
        "",
        "# Paper Information",
        "",
        f"- **Paper Title**: {given(paper.get('paper_title'), 'paper_title')}",
        f"- **Paper URL**: {given(paper.get('paper_url'), 'paper_url')}",
        f"- **Paper authors**: {given(paper.get('authors'), 'authors')}",
        "",
        "# Leaderboard Claim(s)",
    ]
    models = [(kit["threat"], kit["adversarial"])]
    if kit["corruptions"] is not None:
        models.append(("Common Corruptions", kit["corruptions"]))
    for number, (threat, entry) in enumerate(models, 1):
        robust = entry.get("autoattack_acc", entry.get("corruptions_acc"))
        method = (
            f"AutoAttack, {attack.get('version')} version, on the {attack.get('n_ex')} test images "
            f"(adv_training.auto_attacks.eval; {attack.get('source')})"
            if threat != "Common Corruptions"
            else f"the 15 corruptions x 5 severities of {card['dataset'].upper()}-C (adv_training.auto_attacks.corruptions; "
            f"{entry.get('source')})"
        )
        lines += [
            "",
            f"## Model {number}",
            "",
            f"- **Architecture**: {entry['architecture']}",
            f"- **Threat Model**: {threat}",
            f"- **eps**: {entry['eps'] if entry['eps'] is not None else 'N/A'}",
            f"- **Clean accuracy**: {percent(entry['clean_acc'], 'no full-test-set AutoAttack report')}",
            f"- **Robust accuracy**: {percent(robust, 'no full-test-set evaluation')}",
            f"- **Additional data**: {'true' if entry['additional_data'] else 'false'}",
            f"- **Evaluation method**: {method}",
            f"- **Checkpoint and code**: {given(paper.get('checkpoint_url'), 'checkpoint_url')} "
            f"(weights sha256 {card['export']['sha256']})",
        ]
    lines += [
        "",
        "# Model Zoo:",
        "",
        "- [ ] I want to add my models to the Model Zoo (check if true)",
        f"- [{' ' if card['robustbench_model'] else 'x'}] I use an architecture that is **not** included among "
        "RobustBench's model_zoo/architectures (check if true)",
        "- [ ] I agree to release my model(s) under MIT license (check if true) **OR**",
        "- [ ] I want my models to be released under a custom license, located here: (custom license URL here)",
    ]
    return "\n".join(lines) + "\n"


def kit_files(out: Path, kit: Dict[str, Any]) -> Dict[Path, str]:
    """The RobustBench kit's files beside ``out`` and their text."""
    stem = out.with_suffix("")
    files = {stem.with_name(f"{stem.name}.robustbench_{kit['threat']}.json"): json.dumps(kit["adversarial"], indent=2)}
    if kit["corruptions"] is not None:
        entry = {k: v for k, v in kit["corruptions"].items() if k != "source"}
        files[stem.with_name(f"{stem.name}.robustbench_corruptions.json")] = json.dumps(entry, indent=2)
    files[stem.with_name(f"{stem.name}.robustbench_issue.md")] = kit["issue"].rstrip("\n")
    return files


def export(
    run_dir: Path, which: Optional[str], out: Path, paper: Optional[Dict[str, Any]] = None
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Write ``out`` (the weights), ``out`` with suffix .json (the card) and, given ``paper`` (the
    RobustBench flags), the RobustBench kit beside them, as one set: everything that reads the run
    folder (and may refuse a damaged report) happens before the first file is written, and a failure
    while writing removes what was written. Returns (card, kit or None)."""
    if out.suffix != ".pt":
        raise UserError(
            f"--out {out} must end in .pt (the model card goes beside it as {out.with_suffix('.json').name})"
        )
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder")
    target = run_target(run_dir, which)
    model = build_network(target)  # loads strictly: a damaged or foreign file stops here
    constructor, state = robustbench_layout(model, data_num_classes(target.dataset))
    card = model_card(run_dir, target.file, target.which, target.arch, target.dataset, constructor)
    serialized = io.BytesIO()
    torch.save(state, serialized)  # the exported file's bytes: their sha256 goes into the card and the kit
    weights = serialized.getvalue()
    card["export"] = {"file": out.name, "sha256": hashlib.sha256(weights).hexdigest()}
    kit = robustbench_kit(card, run_dir, target.file, paper) if paper is not None else None
    written: List[Path] = []
    try:
        with writing(out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_atomically(out, "wb", lambda stream: stream.write(weights)))
        written.append(atomic_write_text(json.dumps(card, indent=2) + "\n", out.with_suffix(".json")))
        for path, text in (kit_files(out, kit) if kit is not None else {}).items():
            written.append(atomic_write_text(text + "\n", path))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    if kit is not None:
        kit["files"] = written[2:]
    return card, kit


@command
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adv_training.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run folder written by adv_training.train")
    parser.add_argument(
        "--which",
        choices=["swa", "ema", "best", "last"],
        default=None,
        help="whose weights (default: the epoch average, else the EMA, else best.pt)",
    )
    parser.add_argument("--out", type=Path, required=True, help="FILE.pt; the card is written as FILE.json")
    parser.add_argument(
        "--robustbench", action="store_true", help="also write RobustBench's model-info entries and issue text"
    )
    for flag, what in PAPER_FLAGS.items():
        parser.add_argument(f"--{flag}", type=float if flag == "reported" else str, default=None, help=what)
    parser.add_argument("--footnote", default=None, help="RobustBench's footnote, e.g. on generated training data")
    parser.add_argument("--additional_data", action="store_true", help="trained with additional (real) data")
    parser.add_argument("--checkpoint_url", default=None, help="where the exported checkpoint is published")
    args = parser.parse_args(argv)
    paper = None
    if args.robustbench:
        paper = {key: getattr(args, key) for key in (*PAPER_FLAGS, "footnote", "additional_data", "checkpoint_url")}
    card, kit = export(args.run_dir, args.which, args.out, paper)
    if kit is not None:
        print("RobustBench kit: " + ", ".join(str(path) for path in kit["files"]))
        for item in kit["missing"]:
            print(f"  not filled in: {item}")
    accuracy = card["autoattack_acc"]
    print(
        f"wrote {args.out} ({card['architecture']}, {card['weights']['which']} weights of {args.run_dir}; "
        f"{'RobustBench: ' + card['robustbench_model'] if card['robustbench_model'] else 'no RobustBench definition'})"
        f" and {args.out.with_suffix('.json')}"
        + (f"; AutoAttack {accuracy['value']}% on {accuracy['n_ex']} images" if accuracy else "; no AutoAttack yet")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
