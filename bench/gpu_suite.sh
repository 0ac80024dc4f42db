#!/usr/bin/env bash
# Every GPU measurement of the README's speed table, in one run of a few minutes:
#
#   bash bench/gpu_suite.sh [OUT_DIR]            # on a CUDA machine (default OUT_DIR: gpu_results)
#   DKL_SUITE_QUICK=1 bash bench/gpu_suite.sh    # a minutes-long dry run with tiny sizes (CPU too)
#
# 1. bench/at_step.py: WRN-34-10 CIFAR-100 IKL-AT, batch 128: the authors' loop against ours at
#    TF32, ours at bf16 + channels_last, eager and compiled, the rate against a measured bf16
#    matrix-product peak, and where our loop waits for the GPU.
# 2. One real epoch of IKL-AT through the trainer (python -m adv_training.train) on 50,000
#    CIFAR-sized random images written in CIFAR-100's format: WRN-34-10, AWP and EMA on, bf16,
#    channels_last, compiled, the training set resident on the GPU. Prints the epoch's seconds,
#    compile time apart, from its metrics.jsonl.
# 3. bench/kd_step.py: ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNetV1, batch 512 at 224,
#    the mdistiller-style loop against ours (TF32, bf16), and the ImageNet loader's data time.
#
# 4. bench/cifar_loader.py: torchvision's CIFAR pipeline in a DataLoader (4 workers, the configs'
#    default) against the device-resident loader, images per second.
#
# About 10 minutes on one H200. Each part has its own time limit and its log in OUT_DIR; one failing part does not stop the rest.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-gpu_results}}"
mkdir -p "$OUT_DIR"
PYTHON="${DKL_PYTHON:-python3}"
export PYTHONUNBUFFERED=1
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [[ -n "${DKL_SUITE_QUICK:-}" ]]; then
    AT_MODEL=(--arch WideResNet --depth 10 --widen-factor 1 --batch-size 16 --iterations 1 --repeats 1)
    KD_SIZE=(--batch-size 4 --image-size 64 --iterations 1 --repeats 1 --workers 2 --data-images 16 --data-batches 2)
    LOADER=(--images 2000 --workers 0 --repeats 1)
    TRAIN_IMAGES=600
    EPOCH_MODEL="model.arch=WideResNet model.depth=10 model.widen_factor=1 data.batch_size=64 data.num_workers=0"
    LIMITS=(600 600 600 600)
else
    AT_MODEL=(--iterations 3 --repeats 2)
    KD_SIZE=(--iterations 3 --repeats 2 --workers 16 --data-images 1024 --data-batches 24)
    LOADER=(--repeats 2)
    TRAIN_IMAGES=50000
    EPOCH_MODEL=""
    LIMITS=(240 180 110 50)
fi

run_part() {  # name, seconds, command...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s) =="
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v -E "^(W|I)[0-9]{4} |DEBUG" | tee "$OUT_DIR/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - started)) s =="
}

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true
} | tee "$OUT_DIR/environment.txt"

run_part at_step "${LIMITS[0]}" "$PYTHON" bench/at_step.py "${AT_MODEL[@]}" --precisions tf32 bf16 --compile --check-syncs

epoch_run() {
    "$PYTHON" - "$WORK/data" "$TRAIN_IMAGES" <<'EOF' || return 1
import sys
sys.path.insert(0, "tests")
from conftest import write_cifar  # the official on-disk format, random class-coloured images
write_cifar(sys.argv[1], "cifar100", num_train=int(sys.argv[2]), num_test=512)
EOF
    "$PYTHON" -m adv_training.train --config configs/adv_training/cifar100_ikl_a4b20t4.yaml \
        data.root="$WORK/data" data.verify_checksum=false out_dir="$WORK/runs" name=epoch \
        epochs=200 stop_after=1 awp.warmup=1 ema.start_epoch=1 precision=bf16 channels_last=true compile=true \
        data.loader=auto eval.num_examples=512 data.test_batch_size=512 $EPOCH_MODEL || return 1
    cp "$WORK/runs/epoch/metrics.jsonl" "$OUT_DIR/epoch_metrics.jsonl"
    "$PYTHON" - "$WORK/runs/epoch/metrics.jsonl" <<'EOF'
import json, sys
record = json.loads(open(sys.argv[1]).readline())
compile_seconds = record.get("compile_seconds", 0.0)
print(f"one IKL-AT epoch ({record['train_loss']:.4f} loss): {record['train_seconds']:.1f} s training, of which "
      f"{compile_seconds:.1f} s compiling -> {record['train_seconds'] - compile_seconds:.1f} s once compiled; "
      f"{record['epoch_seconds']:.1f} s with the evaluation")
EOF
}
export -f epoch_run
export WORK TRAIN_IMAGES EPOCH_MODEL PYTHON OUT_DIR
run_part epoch "${LIMITS[1]}" bash -c epoch_run

run_part kd_step "${LIMITS[2]}" "$PYTHON" bench/kd_step.py "${KD_SIZE[@]}" --precisions tf32 bf16

run_part cifar_loader "${LIMITS[3]}" "$PYTHON" bench/cifar_loader.py "${LOADER[@]}"
