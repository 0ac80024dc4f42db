"""Seconds per adversarial-training iteration, and the training time it projects for a paper run.

    python bench/at_step.py                                   # WRN-34-10, batch 128, on CUDA if present
    python bench/at_step.py --arch WideResNet --depth 10 --widen-factor 1 --batch-size 32   # quick CPU check
    python bench/at_step.py --precisions fp32 bf16 --channels-last

Times the real training loop (`adv_training.train.train_one_epoch`: natural logits,
PGD with the `high` budget, AWP, two forwards, backward, SGD, EMA, class prior) on
random CIFAR-sized batches, for IKL-AT and TRADES side by side in this process, and
projects the hours of a 200-epoch CIFAR run (391 iterations per epoch at batch 128,
per-epoch evaluation not included). Prints a Markdown table; asserts nothing.
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adv_training.awp import AdversarialWeightPerturbation  # noqa: E402
from adv_training.config import ATConfig  # noqa: E402
from adv_training.methods import build_method  # noqa: E402
from adv_training.train import train_one_epoch  # noqa: E402
from engine.ema import ModelEMA  # noqa: E402
from engine.runtime import configure_precision, resolve_device  # noqa: E402
from losses import ClassPrior  # noqa: E402
from models import build_model  # noqa: E402

TRAIN_IMAGES, EPOCHS = 50_000, 200


def time_iterations(method, args, precision, device):
    cfg = ATConfig(method=method, precision=precision, channels_last=args.channels_last, epochs=EPOCHS)
    cfg.data.dataset = "cifar100"
    cfg.awp.warmup = 1
    cfg.ema.start_epoch = 1
    configure_precision(precision)
    torch.manual_seed(0)
    kwargs = {k: v for k, v in (("depth", args.depth), ("widen_factor", args.widen_factor)) if v is not None}
    model = build_model(args.arch, 100, dataset="cifar100", **kwargs).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    prior = ClassPrior(100, temperature=4.0).to(device)
    ema = ModelEMA(model, tau=0.9996, start_epoch=1)
    awp = AdversarialWeightPerturbation(model, gamma=0.005)
    batches = [(torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 100, (args.batch_size,)))
               for _ in range(args.iterations)]

    def run():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(cfg, build_method(cfg), EPOCHS, model, batches, optimizer, prior, ema, awp, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.iterations

    run()  # warm-up: allocator, cuDNN autotuning
    return statistics.median(run() for _ in range(args.repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="WideResNet34_10")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--widen-factor", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=5, help="iterations per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch} batch {args.batch_size} on {name}, torch {torch.__version__}; "
          f"budget high (5 PGD steps), AWP and EMA on; median of {args.repeats} x {args.iterations} iterations\n")
    iterations_per_run = math.ceil(TRAIN_IMAGES / args.batch_size) * EPOCHS
    print("| precision | method | s / iteration | vs TRADES | projected hours, 200 epochs |")
    print("|---|---|---:|---:|---:|")
    for precision in args.precisions:
        seconds = {method: time_iterations(method, args, precision, device) for method in ("trades", "ikl")}
        for method, value in seconds.items():
            print(f"| {precision} | {method} | {value:.3f} | {value / seconds['trades']:.2f}x "
                  f"| {value * iterations_per_run / 3600:.1f} |", flush=True)


if __name__ == "__main__":
    main()
