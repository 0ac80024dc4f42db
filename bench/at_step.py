"""Seconds per adversarial-training iteration, and the training time it projects for a paper run.

    python bench/at_step.py                                   # WRN-34-10, batch 128, on CUDA if present
    python bench/at_step.py --arch WideResNet --depth 10 --widen-factor 1 --batch-size 32   # quick CPU check
    python bench/at_step.py --precisions fp32 tf32 bf16 --compile --check-syncs   # the GPU table of the README
    python bench/at_step.py --nproc 1 2 4                     # scaling over processes (one GPU each, or CPU)

Times the real training loop (`adv_training.train.train_one_epoch`: natural logits,
PGD with the `high` budget, AWP, two forwards, backward, SGD, EMA, class prior; fused SGD on
CUDA) on random CIFAR-sized batches already on the device, for IKL-AT and TRADES, beside a
re-implementation of the authors' IKL-AT loop structure (`authors_iterations`: natural
logits recomputed at every PGD step, the pairwise [B, C, C] wMSE, torch's default SGD; fp32
and tf32 only), interleaved in this process, and projects the hours of a 200-epoch CIFAR
run (391 iterations per epoch at batch 128, per-epoch evaluation not included). bf16 runs
with channels_last; ``--compile`` adds our IKL loop with compiled forwards (compile time
apart). The rate column divides the iteration's floating-point operations (counted once by
torch's FlopCounterMode) by its time, and on CUDA compares it with a bf16 matrix product
measured here. ``--check-syncs`` lists where our loop makes the host wait for the GPU.
Prints a Markdown table; asserts nothing.

With ``--nproc N ...`` it times IKL-AT with N processes (DistributedDataParallel: nccl, one
GPU each, or gloo on the CPU with ``--threads`` each) on the same global batch, and prints
seconds per global iteration, the speed-up over one process and the scaling efficiency
(speed-up / N).
"""

import argparse
import collections
import math
import os
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adv_training.config import ATConfig  # noqa: E402
from adv_training.train import Forwards, build_training, train_one_epoch  # noqa: E402
from bench.timing import interleaved_medians, timed  # noqa: E402
from engine.distributed import init_distributed, shutdown_distributed, world_size  # noqa: E402
from engine.environment import configure_precision, resolve_device  # noqa: E402
from losses.pairwise_oracle import wmse_loss_pairwise  # noqa: E402

TRAIN_IMAGES, EPOCHS = 50_000, 200


def bench_config(args, method, precision, channels_last=None, compiled=False, fused=False) -> ATConfig:
    """The run this benchmark times: ``args``'s architecture on CIFAR-100, the recipe's IKL-AT knobs
    with AWP and the EMA acting from the first epoch; fused SGD on CUDA when ``fused``, torch's default
    kernel otherwise (the authors' loop)."""
    cfg = ATConfig(method=method, precision=precision, epochs=EPOCHS, compile=compiled)
    cfg.channels_last = args.channels_last if channels_last is None else channels_last
    cfg.data.dataset = "cifar100"
    cfg.model.arch, cfg.model.depth, cfg.model.widen_factor = args.arch, args.depth, args.widen_factor
    cfg.optim.lr, cfg.optim.implementation = 0.1, "auto" if fused else "default"
    cfg.awp.warmup = cfg.ema.start_epoch = 1
    return cfg


def setup(cfg: ATConfig, args, device):
    """What the trainer builds for ``cfg`` (`build_training`), from seed 0, and ``args.iterations``
    random CIFAR-sized batches of the global batch's share already on the device, as the
    device-resident loader delivers them (the training data's cost is apart)."""
    configure_precision(cfg.precision)
    torch.manual_seed(0)
    training = build_training(cfg, 100, device, steps_per_epoch=1)
    local_batch = args.batch_size // world_size()  # the global batch, shared by the processes
    batches = [
        (torch.rand(local_batch, 3, 32, 32).to(device), torch.randint(0, 100, (local_batch,)).to(device))
        for _ in range(args.iterations)
    ]
    return training, batches


def our_iterations(method, args, precision, device, channels_last=None, compiled=False):
    """Our training loop (`train_one_epoch`) over ``args.iterations`` batches, as a timed function:
    fused SGD on CUDA, and with ``compiled`` the compiled forwards."""
    cfg = bench_config(args, method, precision, channels_last, compiled, fused=True)
    training, batches = setup(cfg, args, device)
    forwards = Forwards.of(training, cfg, device)
    run = timed(
        device,
        args.iterations,
        lambda: train_one_epoch(cfg, training, forwards, EPOCHS, batches, device),
        precision,
    )
    run.model = training.model  # for tests/test_bench.py
    return run


def authors_iterations(args, precision, device):
    """The authors' IKL-AT iteration structure, re-implemented here from the algorithm (not their
    code): eval-mode PGD (5 steps of eps/2 from x + 0.001 N(0, 1)) whose loss recomputes
    ``model(x_natural)`` at every step, IKL with the pairwise wMSE and its [B, C, C] weight
    tensor (`losses.pairwise_oracle`), the AWP proxy step on the same loss, then the training
    step, the EMA and the class prior: the same work as ours, in their loop's structure."""
    training, batches = setup(bench_config(args, "ikl", precision, channels_last=False), args, device)
    model, optimizer, prior, ema, awp = training.model, training.optimizer, training.prior, training.ema, training.awp
    eps, step = 8 / 255, 4 / 255

    def ikl(logits_adv, logits_natural, rows, alpha, beta):
        soft_ce = -(F.softmax(logits_natural.detach(), dim=1) * F.log_softmax(logits_adv, dim=1)).sum(1).mean()
        return beta * wmse_loss_pairwise(logits_adv, logits_natural, rows) + alpha * soft_ce

    def body():
        for images, targets in batches:
            x, y = images.to(device), targets.to(device)
            rows = prior.rows(y)
            model.eval()
            x_adv = x + 0.001 * torch.randn_like(x)
            for _ in range(5):
                x_adv.requires_grad_(True)
                loss = ikl(model(x_adv), model(x), rows, 1.0, 1.0)  # natural logits recomputed every step
                grad = torch.autograd.grad(loss, [x_adv])[0]
                x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
            model.train()

            def training_loss(network):
                logits_adv, logits_natural = network(x_adv), network(x)  # in this order, as their trainer
                return F.cross_entropy(logits_natural, y) + ikl(
                    logits_adv, logits_natural, rows, 4.0, 20.0
                ), logits_natural

            perturbation = awp.compute(lambda proxy: training_loss(proxy)[0])
            with awp.perturbed(perturbation):
                loss, logits_natural = training_loss(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            ema.update(model, EPOCHS)
            prior.update(logits_natural.detach(), y)

    run = timed(device, args.iterations, body, precision)
    run.model = model
    return run


def time_iterations(method, args, precision, device):
    run = our_iterations(method, args, precision, device)
    run()  # warm-up: allocator, cuDNN autotuning
    return statistics.median(run() for _ in range(args.repeats))


def _process(rank, nproc, port, args, precision, queue):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc)
    )
    torch.set_num_threads(args.threads)
    device = init_distributed(resolve_device(args.device), 600)
    try:
        seconds = time_iterations("ikl", args, precision, device)
        if rank == 0:
            queue.put(seconds)
    finally:
        shutdown_distributed()


def time_processes(nproc, args, precision):
    """Seconds per global IKL-AT iteration with ``nproc`` processes (spawned, even for one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_process, args=(rank, nproc, port, args, precision, queue)) for rank in range(nproc)
    ]
    for process in processes:
        process.start()
    seconds = queue.get(timeout=3600)
    for process in processes:
        process.join()
    return seconds


def scaling_table(args):
    print("| precision | processes | s / global iteration | speed-up | efficiency |")
    print("|---|---:|---:|---:|---:|")
    for precision in args.precisions:
        single = None
        for nproc in args.nproc:
            if args.batch_size % nproc:
                raise SystemExit(f"--batch-size {args.batch_size} must divide by {nproc} processes")
            seconds = time_processes(nproc, args, precision)
            single = single if single is not None else (seconds if nproc == 1 else None)
            speedup = f"{single / seconds:.2f}x" if single else "—"
            efficiency = f"{100 * single / seconds / nproc:.0f}%" if single else "—"
            print(f"| {precision} | {nproc} | {seconds:.3f} | {speedup} | {efficiency} |", flush=True)


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
    parser.add_argument("--channels-last", action="store_true", help="channels_last at fp32/tf32 too (bf16 always)")
    parser.add_argument("--compile", action="store_true", help="also time our IKL loop compiled, at the last precision")
    parser.add_argument("--check-syncs", action="store_true", help="on CUDA: list where our loop waits for the GPU")
    parser.add_argument(
        "--nproc",
        type=int,
        nargs="+",
        default=None,
        help="time IKL-AT with these numbers of processes instead (list 1 first for the baseline)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on the CPU (per process with --nproc); one, so that ratios are not noise",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.arch} batch {args.batch_size} on {name}, torch {torch.__version__}; "
        f"budget high (5 PGD steps), AWP and EMA on; median of {args.repeats} x {args.iterations} iterations\n"
    )
    if args.nproc:
        scaling_table(args)
        return
    iterations_per_run = math.ceil(TRAIN_IMAGES / args.batch_size) * EPOCHS
    flops = iteration_flops(args, device)
    peak = bf16_peak_tflops(device)
    print(
        f"One IKL-AT iteration: {flops / 1e9:.1f} GFLOP (counted as it runs)"
        + (f"; bf16 matrix-product peak measured here: {peak:.0f} TFLOP/s" if peak else "")
        + "\n"
    )
    print(
        "| precision | loop | s / iteration | speed-up over the authors' loop | TFLOP/s"
        + (" (share of bf16 peak)" if peak else "")
        + " | projected hours, 200 epochs |"
    )
    print("|---|---|---:|---:|---:|---:|")
    authors = {}
    for precision in args.precisions:
        channels_last = args.channels_last or precision == "bf16"
        label = precision + (" + channels_last" if channels_last else "")
        runners = {"authors' IKL loop": authors_iterations(args, precision, device)} if precision != "bf16" else {}
        runners.update(
            {
                "our TRADES": our_iterations("trades", args, precision, device, channels_last),
                "our IKL": our_iterations("ikl", args, precision, device, channels_last),
            }
        )

        def print_rows(medians, compiling):
            reference = precision if precision in authors else ("tf32" if "tf32" in authors else "fp32")
            for name, value in medians.items():
                speedup = "—"
                if reference in authors:
                    speedup = f"{authors[reference] / value:.2f}x" + (
                        "" if reference == precision else f" (vs {reference})"
                    )
                rate = flops / value / 1e12
                share = f" ({100 * rate / peak:.0f}%)" if peak else ""
                note = f" (compiling took {compiling[name]:.0f} s)" if compiling.get(name, 0) > 0 else ""
                print(
                    f"| {label} | {name}{note} | {value:.3f} | {speedup} | {rate:.3g}{share} | "
                    f"{value * iterations_per_run / 3600:.1f} |",
                    flush=True,
                )

        medians, compiling = interleaved_medians(runners, args.repeats)
        if "authors' IKL loop" in medians:
            authors[precision] = medians["authors' IKL loop"]
        print_rows(medians, compiling)  # the eager rows, before anything compiles
        if args.compile and precision == args.precisions[-1]:
            compiled = {
                "our IKL, compiled": our_iterations("ikl", args, precision, device, channels_last, compiled=True),
                "our IKL (again, beside it)": runners["our IKL"],
            }
            print_rows(*interleaved_medians(compiled, args.repeats))
        if args.check_syncs and device.type == "cuda":
            print(
                f"\n{label}: where our IKL loop waits for the GPU in {args.iterations} iterations (the progress "
                f"read and the epoch's totals are meant): {host_syncs(runners['our IKL'])}\n",
                flush=True,
            )
        del runners
        if device.type == "cuda":
            torch.cuda.empty_cache()


class _FlopCount(TorchDispatchMode):
    """Sums the floating-point operations of every operator torch's flop counter has a formula
    for (convolutions, matrix products: all but a sliver of a network's). FlopCounterMode itself
    cannot watch an attack: its module tracker refuses ``autograd.grad`` with respect to inputs."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def iteration_flops(args, device) -> float:
    """Floating-point operations of one of our IKL-AT iterations (forwards, backwards, the attack's
    input gradients, AWP), counted as they run: the same at every precision."""
    one = argparse.Namespace(**{**vars(args), "iterations": 1})
    run = our_iterations("ikl", one, "fp32", device)
    with _FlopCount() as counter:
        run()
    return float(counter.total)


def bf16_peak_tflops(device, seconds: float = 1.0) -> float:
    """TFLOP/s of 8192^3 bf16 matrix products on ``device`` over at least ``seconds`` of work
    (None on the CPU): the ceiling to compare with. Ten products take 10 ms on an H100, too
    short for the clocks to settle, so products are timed until ``seconds`` have passed."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    products, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            a @ b
        products += 20
        torch.cuda.synchronize()
    return 2 * 8192**3 * products / (time.perf_counter() - start) / 1e12


def host_syncs(run) -> str:
    """The source lines at which one ``run()`` made the host wait for the GPU, with counts
    (torch's sync debug mode warns at every synchronising call)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places = collections.Counter(
        f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    )
    return ", ".join(f"{place} x{count}" for place, count in places.most_common()) or "none"


if __name__ == "__main__":
    main()
