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

Layouts: our ``WideResNet*`` models have the keys of RobustBench's
``WideResNet(depth, widen_factor, sub_block1=False)``; ``wrn-28-10-swish`` and
``wrn-70-16-swish`` those of ``DMWideResNet(..., activation_fn=Swish)``, whose normalisation
``mean`` and ``std`` RobustBench keeps in the state dict, so the export adds them. Other
architectures are exported in this repository's own layout (``models.build_model`` loads
them) and the card says there is no RobustBench definition.
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from engine.cli import command
from engine.data import num_classes as data_num_classes
from engine.errors import UserError
from engine.file_io import atomic_save, atomic_write_text, sha256_file, writing
from engine.run_folder import RunFolder, metric_key
from models.dm_wide_resnet import DMWideResNet
from models.wide_resnet import WideResNet

from .auto_attacks.eval import build_network, run_target
from .auto_attacks.reports import matching_autoattack, threat_model


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
    run_dir: Path, weights: Path, which: str, arch: str, dataset: str, constructor: Optional[str], export: Path
) -> Dict[str, Any]:
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
        "weights": {"run_dir": str(run_dir), "which": which, "file": weights.name, "sha256": sha256_file(weights)},
        "export": {"file": export.name, "sha256": sha256_file(export)},
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


def export(run_dir: Path, which: Optional[str], out: Path) -> Dict[str, Any]:
    """Write ``out`` (the weights) and ``out`` with suffix .json (the card); return the card."""
    if out.suffix != ".pt":
        raise UserError(
            f"--out {out} must end in .pt (the model card goes beside it as {out.with_suffix('.json').name})"
        )
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder")
    target = run_target(run_dir, which)
    model = build_network(target)  # loads strictly: a damaged or foreign file stops here
    constructor, state = robustbench_layout(model, data_num_classes(target.dataset))
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, out)
    card = model_card(run_dir, target.file, target.which, target.arch, target.dataset, constructor, out)
    atomic_write_text(json.dumps(card, indent=2) + "\n", out.with_suffix(".json"))
    return card


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
    args = parser.parse_args(argv)
    card = export(args.run_dir, args.which, args.out)
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
