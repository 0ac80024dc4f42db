"""Images per second and peak memory of the generated-data loader, for 1M and 20M generated images.

    python bench/generated_loader.py                          # 1M against 20M, batch 512, fraction 0.7
    python bench/generated_loader.py --sizes 1000000 50000000 --batch-size 2048 --fraction 0.8
    python bench/generated_loader.py --rotate-degrees 15         # the CIFAR-100 configs' rotation too

Each size runs in its own child process, interleaved (1M, 20M, 1M, 20M, ...), so that the
peak resident memory (ru_maxrss) is that size's alone and a busy moment of the machine
hits both. The generated images live in a sparse memory-mapped ``images.npy`` made here
(an N x 32 x 32 x 3 uint8 file that takes no disk: unwritten pages read as zeros, so this
measures the loader, page faults included, not a disk), beside random real images in
memory (50,000, as CIFAR). Every batch goes through the training path: the mixing sampler,
the gather from the memory map, crop and flip of the whole uint8 batch. One torch thread,
the DataLoader in the main process (``--workers`` adds worker processes). Prints a
Markdown table; asserts nothing.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adv_training.generated import GeneratedSet, make_mixed_loader, memory_map_images  # noqa: E402
from adv_training.generated.store import IMAGE_SHAPE  # noqa: E402
from engine.data import set_epoch  # noqa: E402

REAL_IMAGES = 50_000


def make_sparse_set(folder: Path, count: int) -> GeneratedSet:
    """A generated set of ``count`` images whose image file is sparse (no disk used)."""
    images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(count, *IMAGE_SHAPE))
    del images  # only the header is written; the rest stays a hole
    labels = np.tile(np.arange(10, dtype=np.uint8), count // 10 + 1)[:count]  # one byte per image, as prepared
    return GeneratedSet(folder, memory_map_images(folder / "images.npy"), labels, manifest={})


def child(args) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        generated = make_sparse_set(Path(folder), args.child)
        rng = np.random.default_rng(0)
        real_images = rng.integers(0, 256, (REAL_IMAGES, *IMAGE_SHAPE), dtype=np.uint8)
        real_labels = rng.integers(0, 10, REAL_IMAGES)
        loader = make_mixed_loader(
            real_images,
            real_labels,
            generated,
            batch_size=args.batch_size,
            unsup_fraction=args.fraction,
            seed=0,
            num_workers=args.workers,
            rotate_degrees=args.rotate_degrees,
        )
        set_epoch(loader, 1)
        iterator, images = iter(loader), 0
        for _ in range(2):  # warm-up (workers start, first page faults of the code)
            next(iterator)
        before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        for _, (batch, _) in zip(range(args.batches), iterator):
            images += len(batch)
        seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "images_per_second": images / seconds,
                "peak_rss_mib": peak_kib / 1024,
                "growth_mib": (peak_kib - before_kib) / 1024,
            }
        )
    )


def run_child(args, size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(size),
        "--batch-size",
        str(args.batch_size),
        "--fraction",
        str(args.fraction),
        "--batches",
        str(args.batches),
        "--workers",
        str(args.workers),
        "--rotate-degrees",
        str(args.rotate_degrees),
    ]
    if args.dir:
        command += ["--dir", args.dir]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per size (median reported)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rotate-degrees", type=float, default=0.0, help="also rotate, as the CIFAR-100 configs (15)")
    parser.add_argument("--dir", default=None, help="where the sparse files go (default: the temp folder)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return

    runs = {size: [] for size in args.sizes}
    for _ in range(args.repeats):
        for size in args.sizes:
            runs[size].append(run_child(args, size))
    print(
        f"Generated-data loader, batch {args.batch_size}, fraction {args.fraction}, {args.workers} worker(s), "
        f"rotation {args.rotate_degrees:g} degrees, "
        f"one torch thread, median of {args.repeats} interleaved runs of {args.batches} batches; torch "
        f"{torch.__version__}"
    )
    print()
    print(
        "| generated images | images/s | peak RSS (MiB) | peak growth while timed (MiB) | images/s vs first | "
        "RSS vs first |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    base = None
    for size in args.sizes:
        speed = statistics.median(r["images_per_second"] for r in runs[size])
        rss = statistics.median(r["peak_rss_mib"] for r in runs[size])
        growth = statistics.median(r["growth_mib"] for r in runs[size])
        base = base or (speed, rss)
        print(
            f"| {size:,} | {speed:,.0f} | {rss:,.0f} | {growth:,.0f} | {speed / base[0]:.2f}x | {rss / base[1]:.2f}x |"
        )


if __name__ == "__main__":
    main()
