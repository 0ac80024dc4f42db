#!/usr/bin/env bash
# The main job on a small real dataset that needs no download: IKL adversarial training on
# scikit-learn's 8x8 digits, then the standard AutoAttack on its 450 test images, then a
# table of clean / PGD-20 / AutoAttack accuracy and wall time. Every number is of the run's
# epoch average (ours-model-epoch-SWA*.pt): the weights that stand for the run
# (engine.run_folder.RunFolder.weights), which eval.py, adv_training.export and
# experiments.report --which swa take.
#
#   bash sh/quickstart.sh                        # IKL-AT + AutoAttack (a few minutes on 2 CPU cores)
#   bash sh/quickstart.sh --compare              # also standard training and TRADES, one row each
#   bash sh/quickstart.sh --compare --seeds 3    # each method with seeds 0, 1, 2 (python -m experiments.sweep),
#                                                # then python -m experiments.report: mean ± std over the seeds
#   bash sh/quickstart.sh --smoke                # 1 epoch and a cheap attack list: checks the wiring only
#
# Creates (or reuses) the same virtual environment as sh/test.sh. Outputs: runs/quickstart/<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"

compare=0
smoke=0
seeds=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --compare) compare=1 ;;
        --smoke) smoke=1 ;;
        --seeds)
            if [[ ! "${2:-}" =~ ^[1-9][0-9]*$ ]]; then
                echo "error: --seeds needs a number of seeds, e.g. --seeds 3" >&2
                exit 2
            fi
            seeds="$2"
            shift ;;
        *) echo "error: unknown argument '$1'; use --compare, --seeds N and/or --smoke" >&2; exit 2 ;;
    esac
    shift
done
dkl_python

out="runs/quickstart/$(date +%Y%m%d-%H%M%S)"
methods=(ikl)
[[ $compare -eq 1 ]] && methods=(standard trades ikl)
train_overrides=("out_dir=$out")
attack_args=(--version standard)
if [[ $smoke -eq 1 ]]; then
    train_overrides+=("epochs=1")
    attack_args=(--version custom --attacks apgd-ce --n_ex 100)
fi

if [[ $seeds -gt 0 ]]; then
    started=$SECONDS
    for method in "${methods[@]}"; do
        echo "== training digits_$method with seeds 0..$((seeds - 1))"
        "$DKL_PY" -m experiments.sweep --config "$DKL_ROOT/configs/adv_training/digits_$method.yaml" \
            --seeds $(seq 0 $((seeds - 1))) "${train_overrides[@]}"
        for run_dir in "$out/digits_$method"/seed=*; do
            echo "== AutoAttack on $run_dir"
            "$DKL_PY" -m adv_training.auto_attacks.eval --checkpoint "$run_dir" \
                --epsilon 0.2 --batch_size 450 --seed 0 --log_path "$run_dir/autoattack.log" \
                --save_dir "$run_dir/adv_inputs" "${attack_args[@]}"
        done
    done
    echo
    echo "Digits (8x8 images), Linf eps 0.2; clean and PGD-20 on the 450 test images; $seeds seeds per method."
    "$DKL_PY" -m experiments.report "$out" --which swa --csv "$out/report.csv" --plot "$out/report.png"
    echo "Wall time: $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s for $((${#methods[@]} * seeds)) runs"
    exit 0
fi

for method in "${methods[@]}"; do
    config="$DKL_ROOT/configs/adv_training/digits_$method.yaml"
    started=$SECONDS
    echo "== training digits_$method"
    "$DKL_PY" -m adv_training.train --config "$config" "${train_overrides[@]}"
    run_dir="$out/digits_$method"
    echo "== AutoAttack on $run_dir"
    "$DKL_PY" -m adv_training.auto_attacks.eval --checkpoint "$run_dir" \
        --epsilon 0.2 --batch_size 450 --seed 0 --log_path "$run_dir/autoattack.log" \
        --save_dir "$run_dir/adv_inputs" "${attack_args[@]}"
    echo $((SECONDS - started)) > "$run_dir/quickstart_seconds.txt"
done

"$DKL_PY" - "$out" "${methods[@]}" <<'EOF'
import json
import sys
from pathlib import Path

from engine.run_folder import RunFolder, metric_key

out, methods = Path(sys.argv[1]), sys.argv[2:]
names = {"ikl": "IKL-AT", "trades": "TRADES", "standard": "standard training"}
# AutoAttack evaluated the weights that stand for each run (RunFolder.weights); the monitor's clean and
# PGD-20 numbers of the same weights carry their prefix (the epoch average's swa_test_clean_acc, ...).
owners = {"swa": "swa", "ema": "ema", "best": "model", "last": "model"}
weights = {"swa": "epoch average", "ema": "EMA", "best": "best epoch", "last": "last epoch"}
print(f"\nDigits (8x8 images), Linf eps 0.2; clean and PGD-20 on the 450 test images. Run folders under {out}/")
print(f"{'method':<18} {'clean':>7} {'PGD-20':>7} {'AutoAttack':>11} {'(images)':>9} {'wall time':>10}")
evaluated = set()
for method in methods:
    run = RunFolder(out / f"digits_{method}")
    attack = json.loads((run.path / "autoattack.json").read_text())
    owner = owners[attack["which"]]  # the digits configs keep the epoch average
    final = run.final_metrics()
    if attack["which"] == "best":  # the monitor's numbers of the epoch best.pt holds
        best_epoch = run.read_results()["best_epoch"]
        final = next(record for record in run.read_metrics() if record["epoch"] == best_epoch)
    evaluated.add(f"{weights[attack['which']]} ({Path(attack['checkpoint_file']).name})")
    seconds = float((run.path / "quickstart_seconds.txt").read_text())
    print(f"{names[method]:<18} {final[metric_key('clean_acc', owner=owner)]:>6.1f}% "
          f"{final[metric_key('robust_acc', owner=owner)]:>6.1f}% "
          f"{attack['robust_acc']:>10.1f}% {attack['n_ex']:>9} {seconds / 60:>8.1f} min")
print(f"Weights: each run's {', '.join(sorted(evaluated))}, as adv_training.export publishes it.")
print(f"\nCurves: {out}/digits_<method>/curves.png   AutoAttack logs: {out}/digits_<method>/autoattack.log")
EOF
