#!/usr/bin/env bash
# What to run on a CUDA GPU, in four parts that run alone, each within about four minutes on one
# H100 and printing its rows as they come (eager rows before anything compiles):
#
#   bash bench/gpu_suite.sh probe     # 1. first: every fault only a GPU can show (bench/gpu_probe.py)
#   bash bench/gpu_suite.sh trainer   # 2. a short real IKL-AT run on the device-resident loader, bf16 +
#                                     #    channels_last + compile, stopped after epoch 1 and resumed
#   bash bench/gpu_suite.sh steps     # 3. the step benchmarks: bench/at_step.py (WRN-34-10, the authors'
#                                     #    loop against ours, TF32 and bf16, then compiled), bench/kd_step.py
#                                     #    (ImageNet pairs), bench/cifar_loader.py, bench/batchnorm_groups.py
#   bash bench/gpu_suite.sh epoch     # 4. one real epoch of WRN-34-10 IKL-AT on 50,000 CIFAR-sized images
#
#   OUT_DIR=folder bash bench/gpu_suite.sh PART   # logs go there (default: gpu_results)
#   DKL_SUITE_QUICK=1 bash bench/gpu_suite.sh PART   # a dry run with tiny sizes (CPU too)
#
# Each command inside a part has its own time limit, so that one that hangs, or a compile that
# runs long, leaves the rows printed before it; a part's limits add up to under four minutes.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PART="${1:-}"
OUT_DIR="${OUT_DIR:-${OUT:-gpu_results}}"
PYTHON="${DKL_PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
case "$PART" in
    probe|trainer|steps|epoch) ;;
    *) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
cd "$ROOT"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

QUICK="${DKL_SUITE_QUICK:-}"
STATUS=0  # the script's exit status: 1 when any command of the part failed or ran out of time
run_part() {  # name, seconds, command...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s) =="
    local started=$SECONDS code
    timeout "$limit" "$@" 2>&1 | grep -v -E "^(W|I)[0-9]{4} |DEBUG" | tee "$OUT_DIR/$name.log"
    code=${PIPESTATUS[0]}
    echo "== $name: exit $code, $((SECONDS - started)) s =="
    [[ $code -eq 0 ]] || STATUS=1
}

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true
} | tee "$OUT_DIR/environment_$PART.txt"

write_cifar100() {  # folder, training images
    "$PYTHON" - "$1" "$2" <<'EOF'
import sys
sys.path.insert(0, "tests")
from conftest import write_cifar  # the official on-disk format, random class-coloured images
write_cifar(sys.argv[1], "cifar100", num_train=int(sys.argv[2]), num_test=512)
EOF
}

first_epochs() {  # metrics.jsonl: one line per epoch, in words
    "$PYTHON" - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    compiling = r.get("compile_seconds", 0.0)
    print(f"epoch {r['epoch']} ({r.get('precision', '?')}, loss {r['train_loss']:.4f}): {r['train_seconds']:.1f} s "
          f"training, of which {compiling:.1f} s compiling -> {r['train_seconds'] - compiling:.1f} s once compiled; "
          f"{r['epoch_seconds']:.1f} s with the evaluation")
EOF
}
export -f write_cifar100 first_epochs
export WORK PYTHON OUT_DIR QUICK ROOT

case "$PART" in
probe)
    run_part probe 230 "$PYTHON" bench/gpu_probe.py $([[ -n "$QUICK" ]] && echo --device cpu)
    ;;
trainer)
    trainer_run() {
        local model="model.arch=WideResNet model.depth=16 model.widen_factor=4" images=4096
        [[ -n "$QUICK" ]] && model="model.arch=WideResNet model.depth=10 model.widen_factor=1 data.num_workers=0" && images=600
        write_cifar100 "$WORK/data" "$images" || return 1
        # shellcheck disable=SC2086  # $model is a list of overrides
        local common=(--config configs/adv_training/cifar100_ikl_a4b20t4.yaml data.root="$WORK/data"
                      data.verify_checksum=false out_dir="$WORK/runs" name=trainer epochs=2 awp.warmup=1
                      ema.start_epoch=1 precision=bf16 channels_last=true compile=true data.loader=auto
                      eval.num_examples=512 data.test_batch_size=512 $model)
        "$PYTHON" -m adv_training.train "${common[@]}" stop_after=1 || return 1
        "$PYTHON" -m adv_training.train "${common[@]}" resume=true || return 1
        first_epochs "$WORK/runs/trainer/metrics.jsonl"
        cp "$WORK/runs/trainer/metrics.jsonl" "$OUT_DIR/trainer_metrics.jsonl"
    }
    export -f trainer_run
    run_part trainer 230 bash -c trainer_run
    ;;
steps)
    if [[ -n "$QUICK" ]]; then
        AT=(--arch WideResNet --depth 10 --widen-factor 1 --batch-size 16 --iterations 1 --repeats 1)
        KD=(--batch-size 4 --image-size 64 --iterations 1 --repeats 1 --workers 2 --data-images 16 --data-batches 2)
        LOADER=(--images 2000 --workers 0 --repeats 1)
        BN=(--arch WideResNet --depth 10 --widen-factor 1 --batch-size 16 --iterations 1 --repeats 1)
    else
        AT=(--iterations 3 --repeats 2)
        KD=(--iterations 3 --repeats 2 --workers 16 --data-images 1024 --data-batches 24)
        LOADER=(--repeats 2)
        BN=(--iterations 3 --repeats 5)
    fi
    run_part at_step 140 "$PYTHON" bench/at_step.py "${AT[@]}" --precisions tf32 bf16 --compile --check-syncs
    run_part kd_step 60 "$PYTHON" bench/kd_step.py "${KD[@]}" --precisions tf32 bf16
    run_part cifar_loader 30 "$PYTHON" bench/cifar_loader.py "${LOADER[@]}"
    run_part batchnorm_groups 30 "$PYTHON" bench/batchnorm_groups.py "${BN[@]}"
    ;;
epoch)
    epoch_run() {
        local images=50000 model=""
        [[ -n "$QUICK" ]] && images=600 && model="model.arch=WideResNet model.depth=10 model.widen_factor=1 data.batch_size=64 data.num_workers=0"
        write_cifar100 "$WORK/data" "$images" || return 1
        # bf16_min_eps=0: the first of 200 epochs has eps_t = 0.04/255 and would train in TF32; this
        # measures the bf16 epochs (176 of the 200 at the default bf16_min_eps).
        # shellcheck disable=SC2086
        "$PYTHON" -m adv_training.train --config configs/adv_training/cifar100_ikl_a4b20t4.yaml \
            data.root="$WORK/data" data.verify_checksum=false out_dir="$WORK/runs" name=epoch \
            epochs=200 stop_after=1 awp.warmup=1 ema.start_epoch=1 precision=bf16 bf16_min_eps=0 \
            channels_last=true compile=true data.loader=auto eval.num_examples=512 data.test_batch_size=512 \
            $model || return 1
        first_epochs "$WORK/runs/epoch/metrics.jsonl"
        cp "$WORK/runs/epoch/metrics.jsonl" "$OUT_DIR/epoch_metrics.jsonl"
    }
    export -f epoch_run
    run_part epoch 230 bash -c epoch_run
    ;;
esac
exit $STATUS
