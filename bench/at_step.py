"""Seconds per adversarial-training iteration, and the training time it projects for a paper run.

    python bench/at_step.py                                   # WRN-34-10, batch 128, on CUDA if present
    python bench/at_step.py --arch WideResNet --depth 10 --widen-factor 1 --batch-size 32   # quick CPU check
    python bench/at_step.py --precisions fp32 bf16 --channels-last
    python bench/at_step.py --nproc 1 2 4                     # scaling over processes (one GPU each, or CPU)

Times the real training loop (`adv_training.train.train_one_epoch`: natural logits,
PGD with the `high` budget, AWP, two forwards, backward, SGD, EMA, class prior) on
random CIFAR-sized batches, for IKL-AT and TRADES, beside a re-implementation of the
authors' IKL-AT loop structure (`authors_iterations`: natural logits recomputed at every
PGD step, the pairwise [B, C, C] wMSE; fp32 and tf32 only), interleaved in this process,
and projects the hours of a 200-epoch CIFAR run (391 iterations per epoch at batch 128,
per-epoch evaluation not included). Prints a Markdown table; asserts nothing.

With ``--nproc N ...`` it times IKL-AT with N processes (DistributedDataParallel: nccl, one
GPU each, or gloo on the CPU with ``--threads`` each) on the same global batch, and prints
seconds per global iteration, the speed-up over one process and the scaling efficiency
(speed-up / N).
"""
import argparse
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adv_training.awp import AdversarialWeightPerturbation  # noqa: E402
from adv_training.config import ATConfig  # noqa: E402
from adv_training.methods import build_method  # noqa: E402
from adv_training.train import train_one_epoch  # noqa: E402
from engine.distributed import init_distributed, shutdown_distributed, world_size, wrap_model  # noqa: E402
from engine.ema import ModelEMA  # noqa: E402
from engine.runtime import configure_precision, resolve_device  # noqa: E402
from losses import ClassPrior  # noqa: E402
from losses.pairwise_oracle import wmse_loss_pairwise  # noqa: E402
from models import build_model  # noqa: E402

TRAIN_IMAGES, EPOCHS = 50_000, 200


def _setup(args, precision, device):
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
    local_batch = args.batch_size // world_size()  # the global batch, shared by the processes
    batches = [(torch.rand(local_batch, 3, 32, 32), torch.randint(0, 100, (local_batch,)))
               for _ in range(args.iterations)]
    return model, optimizer, prior, ema, awp, batches


def _timed(device, iterations, body):
    """A function that runs ``body()`` and returns seconds per iteration."""
    def run():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        body()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / iterations

    return run


def our_iterations(method, args, precision, device):
    """Our training loop (`train_one_epoch`) over ``args.iterations`` batches, as a timed function."""
    cfg = ATConfig(method=method, precision=precision, channels_last=args.channels_last, epochs=EPOCHS)
    cfg.data.dataset = "cifar100"
    cfg.awp.warmup = 1
    cfg.ema.start_epoch = 1
    model, optimizer, prior, ema, awp, batches = _setup(args, precision, device)
    network = wrap_model(model, device)
    run = _timed(device, args.iterations, lambda: train_one_epoch(
        cfg, build_method(cfg), EPOCHS, network, batches, optimizer, prior, ema, awp, device))
    run.model = model  # for tests/test_bench.py
    return run


def authors_iterations(args, precision, device):
    """The authors' IKL-AT iteration structure, re-implemented here from the algorithm (not their
    code): eval-mode PGD (5 steps of eps/2 from x + 0.001 N(0, 1)) whose loss recomputes
    ``model(x_natural)`` at every step, IKL with the pairwise wMSE and its [B, C, C] weight
    tensor (`losses.pairwise_oracle`), the AWP proxy step on the same loss, then the training
    step, the EMA and the class prior: the same work as ours, in their loop's structure."""
    model, optimizer, prior, ema, awp, batches = _setup(args, precision, device)
    eps, step = 8 / 255, 4 / 255

    def ikl(logits_adv, logits_nat, rows, alpha, beta):
        soft_ce = -(F.softmax(logits_nat.detach(), dim=1) * F.log_softmax(logits_adv, dim=1)).sum(1).mean()
        return beta * wmse_loss_pairwise(logits_adv, logits_nat, rows) + alpha * soft_ce

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
                logits_adv, logits_nat = network(x_adv), network(x)  # in this order, as their trainer
                return F.cross_entropy(logits_nat, y) + ikl(logits_adv, logits_nat, rows, 4.0, 20.0), logits_nat

            perturbation = awp.compute(lambda proxy: training_loss(proxy)[0])
            with awp.perturbed(perturbation):
                loss, logits_nat = training_loss(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            ema.update(model, EPOCHS)
            prior.update(logits_nat.detach(), y)

    run = _timed(device, args.iterations, body)
    run.model = model
    return run


def time_iterations(method, args, precision, device):
    run = our_iterations(method, args, precision, device)
    run()  # warm-up: allocator, cuDNN autotuning
    return statistics.median(run() for _ in range(args.repeats))


def _process(rank, nproc, port, args, precision, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nproc))
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
    processes = [context.Process(target=_process, args=(rank, nproc, port, args, precision, queue))
                 for rank in range(nproc)]
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
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--nproc", type=int, nargs="+", default=None,
                        help="time IKL-AT with these numbers of processes instead (list 1 first for the baseline)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (per process with --nproc); one, so that ratios are not noise")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch} batch {args.batch_size} on {name}, torch {torch.__version__}; "
          f"budget high (5 PGD steps), AWP and EMA on; median of {args.repeats} x {args.iterations} iterations\n")
    if args.nproc:
        scaling_table(args)
        return
    iterations_per_run = math.ceil(TRAIN_IMAGES / args.batch_size) * EPOCHS
    print("| precision | loop | s / iteration | speed-up over the authors' loop | projected hours, 200 epochs |")
    print("|---|---|---:|---:|---:|")
    for precision in args.precisions:
        runners = {"authors' IKL loop": authors_iterations(args, precision, device)} if precision != "bf16" else {}
        runners.update({"our TRADES": our_iterations("trades", args, precision, device),
                        "our IKL": our_iterations("ikl", args, precision, device)})
        times = {name: [] for name in runners}
        for run in runners.values():
            run()  # warm-up: allocator, cuDNN autotuning
        for _ in range(args.repeats):  # interleaved: A, B, C, A, B, C, ...
            for name, run in runners.items():
                times[name].append(run())
        authors = statistics.median(times["authors' IKL loop"]) if "authors' IKL loop" in times else None
        for name, values in times.items():
            value = statistics.median(values)
            speedup = f"{authors / value:.2f}x" if authors else "—"
            print(f"| {precision} | {name} | {value:.3f} | {speedup} | {value * iterations_per_run / 3600:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
