"""Seconds per IKL-KD iteration on ImageNet-sized batches, compute and data apart, beside the
authors' mdistiller-based loop and beside DKD and ReviewKD run by the same loop.

    python bench/kd_step.py                                  # both pairs, batch 512, 224x224, on CUDA if present
    python bench/kd_step.py --pairs r34_r18 --batch-size 8 --image-size 64 --data-batches 4   # quick CPU check
    python bench/kd_step.py --precisions tf32 bf16 --compile
    python bench/kd_step.py --methods ikl reviewkd           # the methods our loop times (default: all of METHODS)

**Compute.** For each pair (``r34_r18``: ResNet-34 -> ResNet-18, ``r50_mv1``: ResNet-50 ->
MobileNetV1, with the settings of configs/knowledge_distillation/imagenet/) it times, on
random batches already on the device and interleaved in this process:

* the authors' loop (`mdistiller_iterations`), re-implemented from what their
  mdistiller-based trainer does, not from its text: fp32 (or TF32), the teacher's and the
  student's forwards, the IKL loss with the pairwise wMSE that materialises [B, C, C]
  tensors (C = 1000: 2 GB each at batch 512), the class prior accumulated by a
  [C, B] x [B, C] product every batch, and the host reads of every iteration (the loss
  through ``.cpu()``, top-1 and top-5 printed);
* our loop (`knowledge_distillation.train.train_one_epoch`) at each precision asked for:
  the closed-form wMSE, sums kept on the device, fused SGD on CUDA, bf16 with channels_last,
  and with ``--compile`` the compiled forwards (compile time printed apart).

**Data.** The real training loader (ImageFolder, JPEG decoding, RandomResizedCrop(224),
flip, normalisation, ``--workers`` worker processes) over a folder of JPEG files written
here (``--data-images`` files of 500 x 375 pixels, about ImageNet's mean size, smooth
content that compresses as photographs do), read repeatedly so that every worker stays
busy; the files sit in the page cache, so this is decoding and augmentation, not a disk.
In training the loader runs ahead of the GPU: an iteration costs the larger of the two.

**Methods.** Our loop runs each of ``--methods`` on the same pair, batch, images and precision,
interleaved with the rest: IKL-KD, DKD, DIST and CTKD (logits only; DIST and CTKD with their own ImageNet
configs), MLKD (two views of every image, each through both networks: a batch of B is 2B forwards, its own
config), and ReviewKD (the features of both networks, its fusion modules trained with the student, with the settings
of mdistiller's ImageNet ReviewKD config for the pair). The last column is each method's time over our
IKL-KD's at that precision.

The paper states 0.197 s/iter for ResNet-34 -> ResNet-18 and 0.252 s/iter for ResNet-50 ->
MobileNetV1 on 4 RTX 3090s at batch 512, and ReviewKD's 0.319 and 0.526 s/iter beside them;
the table prints them beside ours.
Prints Markdown tables; asserts nothing.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.timing import interleaved_medians, timed  # noqa: E402
from engine import data as data_lib  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.environment import compile_model, configure_precision, resolve_device  # noqa: E402
from knowledge_distillation.config import KDConfig  # noqa: E402
from knowledge_distillation.train import (  # noqa: E402
    StudentForward,
    TeacherForward,
    build_distillation,
    train_one_epoch,
)
from losses.pairwise_oracle import wmse_loss_pairwise  # noqa: E402
from models import build_model, freeze  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"r34_r18": "r34_r18.yaml", "r50_mv1": "r50_mv1.yaml"}
PAPER_SECONDS = {"r34_r18": 0.197, "r50_mv1": 0.252}  # s/iter on 4 RTX 3090s, batch 512, as the paper states
PAPER_REVIEWKD_SECONDS = {"r34_r18": 0.319, "r50_mv1": 0.526}  # ReviewKD's, in the same table of the paper
METHODS = ("ikl", "dkd", "dist", "mlkd", "ctkd", "reviewkd")
CLASSES = 1000
EPOCH = 2  # after the one-epoch warm-up of the IKL term: the full loss


def pair_config(pair: str, precision: str, channels_last: bool, compiled: bool, method: str = "ikl") -> KDConfig:
    """The pair's config (a method's own ImageNet config where there is one, e.g. ReviewKD's), at
    ``precision``."""
    imagenet = ROOT / "configs" / "knowledge_distillation" / "imagenet"
    own = [path for path in (imagenet / method / f"{pair}.yaml", imagenet / pair / f"{method}.yaml") if path.is_file()]
    path = own[0] if own else imagenet / PAIRS[pair]
    return load_config(
        KDConfig,
        path,
        [
            f"method={method}",
            f"precision={precision}",
            f"channels_last={channels_last}",
            f"compile={compiled}",
            "device=cpu",
            "batchnorm_groups=1",  # one process's BatchNorm, as the authors' loop beside it (and one GPU)
        ],
    )


def setup(cfg: KDConfig, args, device):
    """From seed 0: a teacher with random weights, frozen, and what the trainer builds around it for
    ``cfg`` (`build_distillation`) at ``args.image_size``; ``args.iterations`` random batches on the device."""
    configure_precision(cfg.precision)
    torch.manual_seed(0)
    teacher = freeze(build_model(cfg.teacher.arch, CLASSES, dataset="imagenet").to(device))
    kd = build_distillation(cfg, CLASSES, device, teacher, input_size=(3, args.image_size, args.image_size))
    generator = torch.Generator().manual_seed(1)

    def images():
        return torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)

    batches = [
        (
            images() if kd.distiller.training_views == 1 else [images() for _ in range(kd.distiller.training_views)],
            torch.randint(0, CLASSES, (args.batch_size,), generator=generator).to(device),
        )
        for _ in range(args.iterations)
    ]
    return kd, batches


def our_iterations(cfg: KDConfig, args, device):
    """Our distillation loop over ``args.iterations`` batches, as a timed function."""
    kd, batches = setup(cfg, args, device)
    student_forward = compile_model(StudentForward(kd.student, kd.distiller), cfg.compile)
    teacher_forward = compile_model(TeacherForward(kd.teacher, kd.distiller.needs_features), cfg.compile)
    run = timed(
        device,
        args.iterations,
        lambda: train_one_epoch(
            cfg, kd.distiller, EPOCH, student_forward, teacher_forward, batches, kd.optimizer, kd.prior, device
        ),
        cfg.precision,
    )
    run.student = kd.student  # for tests/test_bench.py
    return run


def mdistiller_iterations(cfg: KDConfig, args, device):
    """The authors' IKL-KD iteration, re-implemented from the algorithm their mdistiller-based
    trainer runs: fp32 forwards, CE + alpha soft CE + beta pairwise wMSE weighted by the class
    prior rows (``one_hot(y) @ prior``), plain SGD, the prior accumulated every batch, and the
    loss and top-1/top-5 read on the host every iteration."""
    kd, batches = setup(cfg, args, device)
    teacher, student, s = kd.teacher, kd.student, cfg.ikl
    optimizer = torch.optim.SGD(
        student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    prior = torch.full((CLASSES, CLASSES), 1.0 / CLASSES, device=device)  # the first epoch's uniform prior
    accumulated = torch.zeros(CLASSES, CLASSES, device=device)
    ramp = min(EPOCH / s.warmup, 1.0)

    def body():
        nonlocal accumulated
        for images, targets in batches:
            with torch.no_grad():
                logits_teacher = teacher(images)
            logits_student = student(images)
            one_hot = F.one_hot(targets, CLASSES).float()
            rows = one_hot @ prior
            soft_ce = (
                -(
                    F.softmax(logits_teacher / s.temperature, dim=1)
                    * F.log_softmax(logits_student / s.temperature, dim=1)
                )
                .sum(1)
                .mean()
            )
            distill = s.beta * wmse_loss_pairwise(logits_student, logits_teacher, rows) + s.alpha * soft_ce
            loss = s.ce_weight * F.cross_entropy(logits_student, targets) + ramp * distill
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            accumulated = accumulated + one_hot.t() @ F.softmax(logits_teacher / s.prior_temperature, dim=1)
            # The trainer's meters: the loss through the host, top-1/top-5 formatted each iteration.
            loss.cpu().detach().numpy().mean()
            top5 = logits_student.topk(5, dim=1).indices == targets[:, None]
            f"{top5[:, 0].float().mean().item():.3f} {top5.any(dim=1).float().mean().item():.3f}"

    run = timed(device, args.iterations, body, cfg.precision)
    run.student = student
    return run


def write_jpeg_folder(root: Path, count: int, classes: int = 10) -> None:
    """``count`` JPEG files of 500 x 375 pixels under root/train/<class>/ (and one per class in val/)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, number in (("train", count), ("val", classes)):
        for index in range(number):
            folder = root / split / f"n{index % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # smooth content: upsampled noise
            Image.fromarray(coarse).resize((500, 375), Image.BILINEAR).save(folder / f"{index}.JPEG", quality=90)


def data_seconds(args, device) -> float:
    """Seconds per batch of the real ImageNet training loader with ``args.workers`` workers."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_jpeg_folder(root, args.data_images)
        images = data_lib.build_train_set("imagenet", root, augment="basic", normalize=True)
        repeats = -(-args.batch_size * (args.data_batches + max(args.workers, 1)) // len(images))
        loader = data_lib.make_loader(
            torch.utils.data.ConcatDataset([images] * repeats),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
        )
        batches = iter(loader)
        for _ in range(max(args.workers, 1)):  # the workers' first batches: start-up, not throughput
            next(batches)
        start = time.perf_counter()
        for _ in range(args.data_batches):
            images_batch, _ = next(batches)
            images_batch.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.data_batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=5, help="iterations per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also time our loop with compiled forwards (bf16)")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="the methods our loop times"
    )
    parser.add_argument("--workers", type=int, default=16, help="DataLoader workers of the data measurement")
    parser.add_argument("--data-images", type=int, default=1024, help="JPEG files written for the data measurement")
    parser.add_argument("--data-batches", type=int, default=32, help="batches timed by the data measurement; 0 = none")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads on the CPU; one, so that ratios are not noise"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"batch {args.batch_size} at {args.image_size}x{args.image_size} on {name}, torch {torch.__version__}; "
        f"median of {args.repeats} x {args.iterations} iterations\n"
    )
    print("| pair | loop | precision | compute s / iteration | speed-up over the authors' loop | over our IKL-KD |")
    print("|---|---|---|---:|---:|---:|")
    for pair in args.pairs:
        runners = {}
        for precision in args.precisions:
            if precision != "bf16":
                runners[f"authors' (mdistiller) loop|{precision}"] = mdistiller_iterations(
                    pair_config(pair, precision, False, False), args, device
                )
            channels_last = precision == "bf16"
            label = "bf16 + channels_last" if channels_last else precision
            for method in args.methods:
                loop = "ours" if method == "ikl" else f"ours, {method}"
                runners[f"{loop}|{label}"] = our_iterations(
                    pair_config(pair, precision, channels_last, False, method), args, device
                )
        baselines, ours_ikl = {}, {}

        def print_rows(medians, compiling):
            baselines.update({key.split("|")[1]: value for key, value in medians.items() if key.startswith("authors'")})
            ours_ikl.update({key.split("|")[1]: value for key, value in medians.items() if key.startswith("ours|")})
            for key, value in medians.items():
                loop, precision = key.split("|")
                # bf16 rows: against the authors' TF32 (their code has no bf16), else their fp32
                reference = precision if precision in baselines else ("tf32" if "tf32" in baselines else "fp32")
                speedup = "—"
                if reference in baselines and loop in ("ours", "authors' (mdistiller) loop"):
                    speedup = f"{baselines[reference] / value:.2f}x" + (
                        "" if reference == precision else f" (vs {reference})"
                    )
                method_row = loop.startswith("ours, ") and not loop.startswith("ours, compiled")
                relative = f"{value / ours_ikl[precision]:.2f}x" if method_row and precision in ours_ikl else "—"
                note = f" (compiling took {compiling[key]:.0f} s)" if compiling.get(key, 0) > 0 else ""
                print(f"| {pair} | {loop}{note} | {precision} | {value:.4f} | {speedup} | {relative} |", flush=True)

        print_rows(*interleaved_medians(runners, args.repeats))  # the eager rows, before anything compiles
        if args.compile:
            eager_bf16 = "ours|bf16 + channels_last"
            compiled = {
                "ours, compiled|bf16 + channels_last": our_iterations(
                    pair_config(pair, "bf16", True, True), args, device
                )
            }
            if eager_bf16 in runners:
                compiled["ours (again, beside it)|bf16 + channels_last"] = runners[eager_bf16]
            print_rows(*interleaved_medians(compiled, args.repeats))
        paper_ratio = PAPER_REVIEWKD_SECONDS[pair] / PAPER_SECONDS[pair]
        print(f"| {pair} | the paper's IKL-KD (4 RTX 3090s) | — | {PAPER_SECONDS[pair]:.3f} | — | — |", flush=True)
        print(
            f"| {pair} | the paper's ReviewKD (4 RTX 3090s) | — | {PAPER_REVIEWKD_SECONDS[pair]:.3f} | — "
            f"| {paper_ratio:.2f}x |",
            flush=True,
        )
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.data_batches:
        seconds = data_seconds(args, device)
        print(
            f"\nData: the ImageNet training loader ({args.workers} workers, JPEG decoding, RandomResizedCrop, flip, "
            f"normalisation) delivers a batch of {args.batch_size} every {seconds:.4f} s "
            f"({args.batch_size / seconds:.0f} images/s)."
        )


if __name__ == "__main__":
    main()
