"""What batchnorm_groups costs: a train-mode forward and backward with G BatchNorm groups beside plain BatchNorm.

    python bench/batchnorm_groups.py                          # WRN-34-10, batch 128, groups 1 and 4, on CUDA if present
    python bench/batchnorm_groups.py --arch WideResNet --depth 16 --widen-factor 2 --threads 1   # the CPU table

Only the training forwards (and AWP's proxy forward) normalise in groups; attacks and evaluation
run in eval mode, untouched. So the table times what changes, a train-mode forward + backward
of random CIFAR-sized batches, for each G interleaved in this process (A, B, A, B), and prints
seconds and the ratio to G = 1. Asserts nothing.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import interleaved_medians, timed  # noqa: E402
from engine.batchnorm_groups import group_batch_norm  # noqa: E402
from models import build_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="WideResNet34_10")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--widen-factor", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iterations", type=int, default=3, help="forward+backward passes per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 for a fair CPU comparison)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kwargs = {k: v for k, v in (("depth", args.depth), ("widen_factor", args.widen_factor)) if v is not None}
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, 100, (args.batch_size,), device=device)

    runners = {}
    for groups in args.groups:
        torch.manual_seed(0)
        model = group_batch_norm(build_model(args.arch, 100, dataset="cifar100", **kwargs).to(device).train(), groups)

        def body(model=model):
            for _ in range(args.iterations):
                model.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(images), targets).backward()

        runners[groups] = timed(device, args.iterations, body, "fp32")
    medians, _ = interleaved_medians(runners, args.repeats)
    name = args.arch + "".join(f" {k}={v}" for k, v in kwargs.items())
    print(
        f"{name}, batch {args.batch_size}, {device}, {torch.get_num_threads()} thread(s), fp32; median of {args.repeats}"
    )
    print("| batchnorm_groups | s per forward+backward | over 1 group |")
    print("|---|---|---|")
    for groups in args.groups:
        print(f"| {groups} | {medians[groups]:.4f} | {medians[groups] / medians[args.groups[0]]:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
