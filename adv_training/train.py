"""Adversarial training: IKL-AT, TRADES, PGD-AT, MART (+AWP, +EMA) on CIFAR, and standard training.

    python -m adv_training.train --config configs/adv_training/cifar100_ikl_a4b20t4.yaml [key=value ...]
    python -m adv_training.train --config ... --print-config      # resolved config with every knob

One step, asking the method (`methods.build_method`) what differs: class-prior rows for
the batch (IKL); natural logits once in eval mode (IKL, TRADES); PGD on the method's
objective; AWP on the method's loss; two forwards in train mode; natural + robust loss;
SGD step; EMA update; class-prior update. Each epoch ends
with the prior step, the epoch average (the reference's swa.py, kept as the run goes),
clean and PGD-20 accuracy of the model and its EMA, one line of metrics.jsonl, and an
atomically written last.pt from which ``resume=true`` continues. The last epoch of the
average writes ours-model-epoch-SWA{tau}{start}{end}.pt, the weights the reported numbers
of the reference come from.
"""
import contextlib
import sys
from copy import deepcopy
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from engine import data as data_lib
from engine.errors import UserError
from engine.file_io import atomic_save
from engine.cli import config_main
from engine.config import to_yaml
from engine.distributed import (
    broadcast_buffers_,
    global_batch_share,
    is_main_process,
    log,
    rank,
    unwrap,
    world_size,
    wrap_model,
)
from engine.ema import EpochAverage, ModelEMA
from engine.metrics import RunningSums
from engine.run import (
    RunLogger,
    capture_every_rng_state,
    prepare_run_dir,
    raise_if_not_finite,
    resume_training_state,
    training_state,
)
from engine.augment import as_float_images
from engine.device_data import DeviceBatches
from engine.runtime import (
    autocast,
    compile_model,
    compile_seconds,
    eager,
    environment_info,
    prepare_runtime,
    sync_batch_norm,
)
from engine.optim import sgd, use_kernel, weight_decay_groups
from engine.schedule import learning_rate, momentum
from losses import ClassPrior
from models import build_model

from .attacks import natural_logits, pgd
from .awp import AdversarialWeightPerturbation
from .config import ATConfig, AttackConfig
from .methods import Method, build_method
from .generated_data import make_mixed_loader, open_generated
from .pgd_monitor import clean_and_pgd_accuracy
from .swa import output_path as swa_output_path

PROGRESS_EVERY = 20  # batches between progress-bar updates (each one synchronises with the GPU)


def attack_budget(attack: AttackConfig, epoch: int, epochs: int) -> Tuple[float, float, int]:
    """(eps_t, step size, steps) of the training attack at ``epoch`` (1-based).

    ``high`` is what the reference code runs: its 2/3/4/5-step ``if`` chain overwrites
    itself, so every epoch gets 5 steps of eps_t / 2. ``high_piecewise`` is the schedule
    that chain was meant to be (2 steps of eps_t up to epoch 50, 3 of 2 eps_t / 3 up to 100,
    4 of eps_t / 2 up to 150, then 5 of eps_t / 2; epochs scaled to a 200-epoch run).
    """
    eps_t = attack.epsilon * epoch / epochs if attack.eps_ramp else attack.epsilon
    if attack.budget == "low":
        return eps_t, eps_t, 2
    if attack.budget == "high":
        return eps_t, eps_t / 2, 5
    if attack.budget == "high_piecewise":
        scale = epochs / 200.0
        if epoch <= int(50 * scale):
            return eps_t, eps_t, 2
        if epoch <= int(100 * scale):
            return eps_t, 2 * eps_t / 3, 3
        if epoch <= int(150 * scale):
            return eps_t, eps_t / 2, 4
        return eps_t, eps_t / 2, 5
    return eps_t, attack.step_size, attack.steps


def epoch_precision(precision: str, eps_t: float, bf16_min_eps: float, attacks: bool) -> str:
    """The precision an epoch trains and attacks in: ``precision``, except that a bf16 run
    trains in TF32 while its attack budget is below ``bf16_min_eps`` (bf16's rounding of the
    activations then hides most of the perturbation: README, "Precision")."""
    if precision == "bf16" and attacks and eps_t < bf16_min_eps * (1 - 1e-9):  # 8/255 * 25/200 is 1/255
        return "tf32"
    return precision


def _to_device(batch, device, channels_last: bool):
    """Images (one view, or the two views concatenated) and labels on the device.

    The views are copied one by one from the loader's pinned memory and joined on the device:
    joined on the host, they would be a new tensor in pageable memory, whose copy blocks."""
    images, targets = batch
    views = list(images) if isinstance(images, (list, tuple)) else [images]  # dual view: [basic, augmented]
    basic_size = views[0].shape[0]
    views = [view.to(device, non_blocking=True) for view in views]
    images = as_float_images(views[0] if len(views) == 1 else torch.cat(views))  # generated data comes as uint8
    targets = targets.to(device, non_blocking=True)
    if len(views) > 1:
        targets = torch.cat([targets] * len(views))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets, basic_size


def train_one_epoch(
    cfg: ATConfig,
    method: Method,
    epoch: int,
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    prior: ClassPrior,
    ema: Optional[ModelEMA],
    awp: Optional[AdversarialWeightPerturbation],
    device: torch.device,
    attack_model: Optional[torch.nn.Module] = None,
) -> Dict[str, float]:
    """One epoch over ``loader``. ``model`` makes the training forwards (the module, or it under
    DDP and/or torch.compile); attacks use ``attack_model`` (default: the plain module)."""
    network, model = model, unwrap(model)  # the training forwards go through DDP; attacks use the module
    attacked = attack_model if attack_model is not None else model
    full_size = None
    eps_t, step_size, steps = attack_budget(cfg.attack, epoch, cfg.epochs)
    precision = epoch_precision(cfg.precision, eps_t, cfg.bf16_min_eps, method.attacks)
    global_sizes = data_lib.global_batch_sizes(loader)  # None in one process
    use_awp = awp is not None and epoch >= cfg.awp.warmup
    # Sums stay on the device and are read every PROGRESS_EVERY batches, not every batch.
    sums = RunningSums(("loss", "natural", "robust", "adv_correct", "clean_correct"), device)
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if is_main_process() else True)
    for batch_index, batch in enumerate(bar):
        x_natural, targets, basic_size = _to_device(batch, device, cfg.channels_last)
        full_size = full_size or targets.numel()
        # Compiled forwards are specialised to the batch shape: a last, smaller batch runs
        # eagerly rather than compiling everything a second time.
        attack_net, train_net = (attacked, network) if targets.numel() == full_size else (model, eager(network))
        prior_rows = prior.rows(targets) if method.uses_prior else None
        broadcast_buffers_(model)  # every process attacks with rank 0's BatchNorm statistics, as DataParallel

        x_adv = x_natural
        if method.attacks:
            with autocast(device, precision):
                logits_natural = None
                if method.attack_needs_natural_logits:
                    logits_natural = natural_logits(attack_net, x_natural, eval_mode=cfg.attack.eval_mode,
                                                    freeze_bn_stats=cfg.attack.freeze_bn_stats).float()
                objective = method.attack_objective(logits_natural, targets, prior_rows)
                x_adv = pgd(
                    attack_net, x_natural, objective, eps=eps_t, step_size=step_size, steps=steps,
                    norm=cfg.attack.norm, random_start=cfg.attack.random_start, eval_mode=cfg.attack.eval_mode,
                    freeze_bn_stats=cfg.attack.freeze_bn_stats,
                )

        train_net.train()

        share = global_batch_share(targets.numel(), global_sizes[batch_index]) if global_sizes else None

        def method_loss(forward, split_views=True):
            with autocast(device, precision):
                loss, parts = method.loss(forward, x_natural, x_adv, targets, prior_rows, basic_size,
                                          split_views=split_views)
            return (loss if share is None else loss * share), {**parts, "loss": loss.detach()}

        perturbation = awp.compute(lambda proxy: method_loss(proxy, split_views=False)[0]) if use_awp else None
        with awp.perturbed(perturbation) if use_awp else contextlib.nullcontext():
            loss, parts = method_loss(train_net)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if ema is not None:
            ema.update(model, epoch)
        if method.uses_prior:
            prior.update(parts["logits_nat"][:basic_size], targets[:basic_size])

        batch_size = targets.numel()
        clean_correct = (parts["logits_nat"].argmax(1) == targets).sum() if parts["logits_nat"] is not None else loss.new_zeros(())
        sums.add(
            batch_size,
            loss=parts["loss"].double() * batch_size,
            natural=parts["natural"].double() * batch_size,
            robust=parts["robust"].double() * batch_size,
            adv_correct=(parts["logits_adv"].argmax(1) == targets).sum(),
            clean_correct=clean_correct,
        )
        if (batch_index + 1) % PROGRESS_EVERY == 0 or batch_index + 1 == len(loader):
            running = sums.totals(across_processes=True)  # a NaN on any process stops every process
            mean_loss = running["loss"] / running["count"]
            raise_if_not_finite(mean_loss, epoch=epoch, batch=batch_index + 1,
                                advice="Lower optim.lr, use precision=fp32, or check the data.")
            bar.set_postfix(loss=f"{mean_loss:.4f}", adv_acc=f"{100 * running['adv_correct'] / running['count']:.1f}")

    totals = sums.totals(across_processes=True)
    count = max(totals["count"], 1)
    summary = {
        "train_loss": totals["loss"] / count,
        "train_loss_natural": totals["natural"] / count,
        "train_loss_robust": totals["robust"] / count,
        "train_adv_acc": 100 * totals["adv_correct"] / count,
        "eps": eps_t if method.attacks else 0.0,
        "attack_step_size": step_size,
        "attack_steps": steps if method.attacks else 0,
        "awp": use_awp,
        "precision": precision,
    }
    if method.forwards_natural:  # PGD-AT never sees the clean training images
        summary["train_clean_acc"] = 100 * totals["clean_correct"] / count
    return summary



def uses_device_loader(cfg: ATConfig, device: torch.device) -> bool:
    """data.loader resolved: device when asked, or for auto on CUDA where it applies (CIFAR,
    augment basic or none, no generated data)."""
    if cfg.data.loader != "auto":
        return cfg.data.loader == "device"
    return (device.type == "cuda" and not cfg.generated.path and cfg.data.dataset in ("cifar10", "cifar100")
            and cfg.data.augment in ("basic", "none"))


def averaged_model(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding the weights ``state`` (an epoch average), for evaluation."""
    copy = deepcopy(model)
    copy.load_state_dict(state)
    return copy


def train(cfg: ATConfig) -> Dict[str, object]:
    """Runs (or resumes) a whole training run; returns what results.json holds."""
    device = prepare_runtime(device=cfg.device, precision=cfg.precision, seed=cfg.seed, deterministic=cfg.deterministic,
                             dist_timeout=cfg.dist_timeout)
    run_dir = Path(cfg.out_dir) / cfg.run_name()

    num_classes = data_lib.num_classes(cfg.data.dataset)
    train_set = data_lib.build_train_set(
        cfg.data.dataset, cfg.data.root, augment=cfg.data.augment,
        download=cfg.data.download, verify_checksum=cfg.data.verify_checksum,
    )
    test_set = data_lib.first_examples(
        data_lib.build_test_set(cfg.data.dataset, cfg.data.root, download=cfg.data.download,
                                verify_checksum=cfg.data.verify_checksum),
        cfg.eval.num_examples,
    )
    held_out = cfg.data.validation_size
    if held_out >= len(train_set):
        raise UserError(f"data.validation_size={held_out} leaves no training image: the training set has "
                        f"{len(train_set)}")
    shard = dict(rank=rank(), world_size=world_size())  # the training batch is global: each process takes its share
    if cfg.generated.path:
        # Rank 0 rehashes (reading 154 GB once, not once per process); a mismatch stops it, and torchrun the rest.
        generated = open_generated(cfg.generated.path, num_classes,
                                   verify_hashes=cfg.generated.verify_hashes and is_main_process())
        train_loader = make_mixed_loader(
            train_set.data[held_out:], train_set.targets[held_out:], generated, batch_size=cfg.data.batch_size,
            unsup_fraction=cfg.generated.unsup_fraction, seed=cfg.seed, epoch_images=cfg.generated.epoch_images,
            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda", augment=cfg.data.augment == "basic",
            rotate_degrees=cfg.generated.rotate_degrees,
            **shard,
        )
    elif uses_device_loader(cfg, device):
        train_loader = DeviceBatches(
            train_set.data[held_out:], train_set.targets[held_out:], batch_size=cfg.data.batch_size, device=device,
            seed=cfg.seed, augment=cfg.data.augment == "basic", drop_last=cfg.data.drop_last, **shard,
        )
    else:
        train_loader = data_lib.make_loader(
            Subset(train_set, range(held_out, len(train_set))) if held_out else train_set,
            batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
            drop_last=cfg.data.drop_last, seed=cfg.seed, pin_memory=device.type == "cuda", **shard,
        )

    # Evaluation deals whole batches to the processes: the counts equal one process's exactly.
    def eval_loader(dataset):
        return data_lib.make_eval_loader(data_lib.WithIndices(dataset), batch_size=cfg.data.test_batch_size,
                                         num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda", **shard)

    test_loader = eval_loader(test_set)
    if cfg.eval.split == "validation":  # the held-out images, without augmentation, as Wang et al.
        validation_set = data_lib.build_train_set(cfg.data.dataset, cfg.data.root, augment="none",
                                                  verify_checksum=cfg.data.verify_checksum)
        monitor_loader, monitor_set = eval_loader(Subset(validation_set, range(held_out))), "val"
    else:
        monitor_loader, monitor_set = test_loader, "test"

    method = build_method(cfg)
    model = build_model(cfg.model.arch, num_classes, dataset=cfg.data.dataset, **cfg.model.build_kwargs()).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = sync_batch_norm(model, cfg.sync_bn, device)
    optimizer = sgd(
        weight_decay_groups(model, cfg.optim.weight_decay, cfg.optim.batchnorm_weight_decay), lr=cfg.optim.lr,
        momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, implementation=cfg.optim.implementation,
        device=device,
    )
    prior = ClassPrior(num_classes, temperature=method.prior_temperature).to(device)
    ema = ModelEMA(
        model, tau=cfg.ema.tau, start_epoch=cfg.ema.start_epoch, average_buffers=cfg.ema.average_buffers,
        warmup_steps=cfg.ema.warmup_fraction * cfg.epochs * len(train_loader),
    ) if cfg.ema.enabled else None
    awp = AdversarialWeightPerturbation(model, gamma=cfg.awp.gamma, proxy_lr=cfg.awp.proxy_lr) if cfg.awp.enabled else None
    swa = EpochAverage(cfg.swa.tau) if cfg.swa.enabled else None
    swa_end = cfg.swa.last_epoch(cfg.epochs)

    saved_states = {"prior": prior, "ema": ema, "awp": awp, "swa": swa}  # besides model and optimizer
    last_path = run_dir / "last.pt"
    if is_main_process():
        prepare_run_dir(
            run_dir, config_yaml=to_yaml(cfg), resume=cfg.resume,
            environment={"seed": cfg.seed, **environment_info(), "device": str(device)},
        )
    start_epoch, best = 1, {"robust_acc": -1.0, "epoch": 0}
    if cfg.resume:
        state = resume_training_state(last_path, cfg, model, optimizer, saved_states, log=log,
                                      describe=f"model.arch={cfg.model.arch} with {cfg.data.dataset}")
        use_kernel(optimizer, cfg.optim.implementation, device)  # the saved groups carry the old kernel's flags
        best, start_epoch = state["best"], state["epoch"] + 1
        log(f"Resumed {run_dir} after epoch {state['epoch']}")
        del state
    logger = RunLogger(run_dir, enabled=is_main_process(), completed_epochs=start_epoch - 1)
    if cfg.resume and start_epoch > 1:
        logger.plot()  # the picture of what the interrupted run had done
    log(f"Training {cfg.method} on {cfg.data.dataset} with {cfg.model.arch} on {device} -> {run_dir}"
        + ("; training images resident on the device" if isinstance(train_loader, DeviceBatches) else "")
        + ("; compiled forwards" if cfg.compile else ""))

    eval_eps = cfg.eval.epsilon if cfg.eval.epsilon is not None else cfg.attack.epsilon

    def monitor(prefix: str, network: torch.nn.Module) -> Dict[str, float]:
        """Clean and PGD accuracy on the monitored set (and clean test accuracy when that is the
        validation set), as ``{prefix}_{set}_{clean,robust}_acc``."""
        accuracy = clean_and_pgd_accuracy(
            network, monitor_loader, device, eps=eval_eps, step_size=cfg.eval.step_size, steps=cfg.eval.pgd_steps,
            norm=cfg.attack.norm, channels_last=cfg.channels_last, seed=cfg.seed, objective=cfg.eval.objective)
        numbers = {f"{prefix}{monitor_set}_{key}": value for key, value in accuracy.items()}
        if monitor_set != "test":
            clean = clean_and_pgd_accuracy(network, test_loader, device, eps=eval_eps, step_size=0.0, steps=0,
                                           channels_last=cfg.channels_last)
            numbers[f"{prefix}test_clean_acc"] = clean["clean_acc"]
        return numbers

    selected = ("ema_" if cfg.eval.select == "ema" else "") + monitor_set  # whose numbers pick best.pt
    robust_key = f"{monitor_set}_robust_acc"
    network = wrap_model(model, device)  # the training forwards average their gradients across processes
    train_forward = compile_model(network, cfg.compile)
    attack_forward = train_forward if network is model else compile_model(model, cfg.compile)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            lr = learning_rate(
                epoch, base_lr=cfg.optim.lr, epochs=cfg.epochs, schedule=cfg.optim.schedule,
                warmup_epochs=cfg.optim.warmup_epochs, milestones=cfg.optim.milestones, decay=cfg.optim.decay,
            )
            sgd_momentum = momentum(epoch, base_momentum=cfg.optim.momentum, epochs=cfg.epochs,
                                    schedule=cfg.optim.schedule)
            for group in optimizer.param_groups:
                group["lr"], group["momentum"] = lr, sgd_momentum
            data_lib.set_epoch(train_loader, epoch)
            compiling_since = compile_seconds()
            metrics = {"lr": lr, **train_one_epoch(cfg, method, epoch, train_forward, train_loader, optimizer, prior,
                                                   ema, awp, device, attack_model=attack_forward)}
            if cfg.compile:
                metrics["compile_seconds"] = compile_seconds() - compiling_since
            prior.step()
            for module in (model, ema.module if ema is not None else None):
                if module is not None:
                    broadcast_buffers_(module)  # one model on every process: evaluated, averaged and saved alike
            if swa is not None and cfg.swa.start <= epoch <= swa_end:
                swa.add(model.state_dict())
            metrics["train_seconds"] = time.perf_counter() - started

            if epoch % cfg.eval.every == 0 or epoch == cfg.epochs:
                metrics.update(monitor("", model))
                if ema is not None and ema.started:
                    metrics.update(monitor("ema_", ema.module))
            if swa is not None and epoch == swa_end:
                swa_model = averaged_model(model, swa.average)
                metrics.update(monitor("swa_", swa_model))
                del swa_model
            metrics["epoch_seconds"] = time.perf_counter() - started
            logger.log_epoch(epoch, metrics)
            log(
                f"epoch {epoch}/{cfg.epochs}  lr {lr:.4f}  eps {metrics['eps'] * 255:.2f}/255  "
                f"loss {metrics['train_loss']:.4f}  train adv {metrics['train_adv_acc']:.2f}%"
                + (f"  test clean {metrics['test_clean_acc']:.2f}%" if "test_clean_acc" in metrics else "")
                + (f"  {monitor_set} PGD-{cfg.eval.pgd_steps} {metrics[robust_key]:.2f}%" if robust_key in metrics else "")
                + (f"  (EMA {metrics['ema_' + robust_key]:.2f}%)" if "ema_" + robust_key in metrics else "")
                + (f"  (epoch average {metrics['swa_' + robust_key]:.2f}%)" if "swa_" + robust_key in metrics else "")
                + f"  {metrics['epoch_seconds']:.0f}s"
                + (f" (compiling {metrics['compile_seconds']:.0f}s)" if metrics.get("compile_seconds") else "")
            )

            rng_states = capture_every_rng_state()  # every process takes part; rank 0 writes them
            if is_main_process():
                robust = metrics.get(f"{selected}_robust_acc", metrics.get(f"{selected}_clean_acc"))
                if robust is not None and robust > best["robust_acc"]:  # ties keep the earlier epoch
                    best = {"robust_acc": robust, "epoch": epoch}
                    chosen = ema.module if cfg.eval.select == "ema" else model
                    atomic_save({"model": chosen.state_dict(), "epoch": epoch, "robust_acc": robust}, run_dir / "best.pt")
                if ema is not None and ema.started:
                    atomic_save({"model": ema.module.state_dict(), "epoch": epoch}, run_dir / "ema.pt")
                if cfg.save_every and epoch % cfg.save_every == 0:
                    atomic_save(model.state_dict(), run_dir / f"ours-model-epoch{epoch}.pt")
                if swa is not None and epoch == swa_end:
                    path = atomic_save(swa.average, swa_output_path(run_dir, cfg.swa.tau, cfg.swa.start, swa_end))
                    log(f"wrote the epoch average of epochs {cfg.swa.start}-{swa_end}: {path}")
                atomic_save(training_state(cfg, epoch, model, optimizer, best, saved_states, rng_states), last_path)
            if epoch == cfg.stop_after and epoch < cfg.epochs:
                log(f"Stopped after epoch {epoch} as asked (stop_after={cfg.stop_after}); resume=true continues")
                return {"run_dir": str(run_dir), "stopped_after": epoch}
    finally:
        logger.close()

    results = {
        "run_dir": str(run_dir),
        "epochs": cfg.epochs,
        "best_epoch": best["epoch"],
        "best_metric": f"{selected}_robust_acc" if cfg.eval.pgd_steps > 0 else f"{selected}_clean_acc",
        "best_value": best["robust_acc"],
        # From the last epoch's record, so that resuming a finished run (or one killed after its
        # last checkpoint) rebuilds the same results.
        "final": {k: v for k, v in (logger.last_record or {}).items()
                  if k.startswith(tuple(f"{owner}{split}_" for owner in ("", "ema_", "swa_") for split in ("test", "val")))},
    }
    if swa is not None:
        results["swa_file"] = swa_output_path(run_dir, cfg.swa.tau, cfg.swa.start, swa_end).name
    logger.finish(results)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    return config_main(
        ATConfig, train, prog="python -m adv_training.train", argv=argv,
        description="Adversarial training with IKL, TRADES, PGD-AT, MART or standard training. "
        "Settings: --config FILE, then key=value overrides.",
    )


if __name__ == "__main__":
    sys.exit(main())
