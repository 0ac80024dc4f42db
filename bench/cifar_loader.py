"""Images per second of the two CIFAR training loaders: torchvision's per-image pipeline in a
DataLoader against the device-resident loader that crops and flips whole batches.

    python bench/cifar_loader.py                       # on CUDA if present, 50,000 images, batch 128
    python bench/cifar_loader.py --device cpu --images 10000 --workers 0

Both deliver the same thing to the training step: a batch of RandomCrop(32, padding=4) +
RandomHorizontalFlip images as float32 in [0, 1] on the device. The DataLoader runs
`engine.data.build_train_set`'s transforms on random CIFAR-100-format images written here
(the real torchvision CIFAR class reads them), ``--workers`` worker processes, pinned memory
on CUDA; the device-resident loader is `engine.data.DeviceBatches`. Each pass is one
epoch, after one warm-up epoch of each, interleaved (A, B, A, B, ...), median of
``--repeats``; one torch thread in this process. Prints a Markdown table; asserts nothing.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_cifar  # noqa: E402  (CIFAR's on-disk format)

from engine import data as data_lib  # noqa: E402
from engine.data import DeviceBatches, as_float_images  # noqa: E402
from engine.environment import resolve_device  # noqa: E402


def epoch_seconds(loader, device, epoch: int) -> float:
    data_lib.set_epoch(loader, epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images, labels in loader:
        images = as_float_images(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (the configs' default: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        write_cifar(root, "cifar100", num_train=args.images, num_test=100)
        train_set = data_lib.build_train_set("cifar100", root, augment="basic", verify_checksum=False)
        loaders = {
            f"torchvision transforms, DataLoader ({args.workers} workers)": data_lib.make_loader(
                train_set,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                seed=0,
                pin_memory=device.type == "cuda",
            ),
            "device-resident, whole-batch crop and flip": DeviceBatches(
                train_set.data, train_set.targets, batch_size=args.batch_size, device=device, seed=0
            ),
        }
        times = {name: [] for name in loaders}
        for loader in loaders.values():  # a warm-up epoch: worker start-up, page cache, the device's allocator
            epoch_seconds(loader, device, 0)
        for epoch in range(1, args.repeats + 1):  # interleaved
            for name, loader in loaders.items():
                times[name].append(epoch_seconds(loader, device, epoch))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, one thread in this process"
    print(
        f"{args.images} CIFAR images, batch {args.batch_size}, on {name}, torch {torch.__version__}; "
        f"median of {args.repeats} epochs\n"
    )
    print("| loader | s / epoch | images / s | speed-up |")
    print("|---|---:|---:|---:|")
    baseline = statistics.median(next(iter(times.values())))
    for loader_name, values in times.items():
        value = statistics.median(values)
        print(f"| {loader_name} | {value:.2f} | {args.images / value:,.0f} | {baseline / value:.1f}x |")


if __name__ == "__main__":
    main()
