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
import time
from copy import deepcopy
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from engine import data as data_lib
from engine.batchnorm_groups import group_batch_norm
from engine.cli import config_main
from engine.data import DeviceBatches, as_float_images
from engine.distributed import (
    broadcast_buffers_,
    global_batch_share,
    is_main_process,
    log,
    unwrap,
    world_size,
    wrap_model,
)
from engine.ema import EpochAverage, ModelEMA
from engine.metrics import RunningSums
from engine.optim import sgd, weight_decay_groups
from engine.run import raise_if_not_finite, start_run
from engine.run_folder import evaluation_keys, metric_key
from engine.runtime import (
    autocast,
    compile_model,
    compile_seconds,
    eager,
    prepare_runtime,
    sync_batch_norm,
)
from engine.schedule import learning_rate, momentum
from losses import ClassPrior
from models import attach_preprocessing, build_model

from .attacks import attack_budget, natural_logits, pgd
from .awp import AdversarialWeightPerturbation
from .config import ATConfig
from .loaders import build_loaders
from .methods import Method, build_method
from .pgd_monitor import clean_and_pgd_accuracy

PROGRESS_EVERY = 20  # batches between progress-bar updates (each one synchronises with the GPU)


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


@dataclass
class BatchLoss:
    """The training loss of one batch, for any forward (the training network, or AWP's proxy):
    the two forwards the reference makes in train mode (adversarial images first, then clean ones
    when the method uses them, each with its own BatchNorm statistics), then the method's loss of
    their logits, scaled by this process's share of the global batch (``share``; None in one process)."""

    method: Method
    x_natural: torch.Tensor
    x_adv: torch.Tensor
    targets: torch.Tensor
    prior_rows: Optional[torch.Tensor]
    basic_size: int
    device: torch.device
    precision: str
    share: Optional[float]
    companion: Optional[torch.nn.Module] = None  # the method's second network (LBGAT), on the clean images

    def __call__(self, forward, split_views: bool = True):
        with autocast(self.device, self.precision):
            logits_adv = forward(self.x_adv)
            logits_nat = forward(self.x_natural) if self.method.forwards_natural else None
            logits_companion = self.companion(self.x_natural) if self.companion is not None else None
            loss, parts = self.method.loss(
                logits_adv,
                logits_nat,
                self.targets,
                self.prior_rows,
                self.basic_size,
                split_views=split_views,
                logits_companion=logits_companion,
            )
        return (loss if self.share is None else loss * self.share), {**parts, "loss": loss.detach()}

    def awp_proxy(self, proxy) -> torch.Tensor:
        """AWP's proxy loss: one robust term over both views of a dual-view batch (`Method.loss`)."""
        return self(proxy, split_views=False)[0]


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
    companion: Optional[torch.nn.Module] = None,
) -> Dict[str, float]:
    """One epoch over ``loader``. ``model`` makes the training forwards (the module, or it under
    DDP and/or torch.compile); attacks use ``attack_model`` (default: the plain module);
    ``companion`` is the method's second network (its training forward), if it has one."""
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
                    logits_natural = natural_logits(
                        attack_net,
                        x_natural,
                        eval_mode=cfg.attack.eval_mode,
                        freeze_bn_stats=cfg.attack.freeze_bn_stats,
                    ).float()
                objective = method.attack_objective(logits_natural, targets, prior_rows)
                x_adv = pgd(
                    attack_net,
                    x_natural,
                    objective,
                    eps=eps_t,
                    step_size=step_size,
                    steps=steps,
                    norm=cfg.attack.norm,
                    random_start=cfg.attack.random_start,
                    eval_mode=cfg.attack.eval_mode,
                    freeze_bn_stats=cfg.attack.freeze_bn_stats,
                )

        train_net.train()
        companion_net = None
        if companion is not None:
            companion_net = companion if targets.numel() == full_size else eager(companion)
            companion_net.train()

        share = global_batch_share(targets.numel(), global_sizes[batch_index]) if global_sizes else None
        batch_loss = BatchLoss(
            method, x_natural, x_adv, targets, prior_rows, basic_size, device, precision, share, companion_net
        )
        perturbation = awp.compute(batch_loss.awp_proxy) if use_awp else None
        with awp.perturbed(perturbation) if use_awp else contextlib.nullcontext():
            loss, parts = batch_loss(train_net)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if ema is not None:
            ema.update(model, epoch)
        if method.uses_prior:
            prior.update(parts["logits_nat"][:basic_size], targets[:basic_size])

        batch_size = targets.numel()
        clean_correct = (
            (parts["logits_nat"].argmax(1) == targets).sum() if parts["logits_nat"] is not None else loss.new_zeros(())
        )
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
            raise_if_not_finite(
                mean_loss,
                epoch=epoch,
                batch=batch_index + 1,
                advice="Lower optim.lr, use precision=fp32, or check the data.",
            )
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


def averaged_model(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding the weights ``state`` (an epoch average), for evaluation."""
    copy = deepcopy(model)
    copy.load_state_dict(state)
    return copy


def train(cfg: ATConfig) -> Dict[str, object]:
    """Runs (or resumes) a whole training run; returns what results.json holds."""
    device = prepare_runtime(
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        dist_timeout=cfg.dist_timeout,
    )
    loaders = build_loaders(cfg, device)
    num_classes, train_loader, monitor_set = loaders.num_classes, loaders.train, loaders.monitor_set

    method = build_method(cfg)
    model = build_model(cfg.model.arch, num_classes, dataset=cfg.data.dataset, **cfg.model.build_kwargs()).to(device)
    attach_preprocessing(model, cfg.model.preprocess, cfg.data.dataset)  # state dict unchanged; deep copies keep it
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = sync_batch_norm(model, cfg.sync_bn, device)
    views = 2 if cfg.data.augment in ("autoaug", "cutout") else 1  # [basic; augmented] batches
    group_batch_norm(model, cfg.batchnorm_groups, world_size(), views)  # before AWP's proxy and the EMA copy it
    groups = weight_decay_groups(model, cfg.optim.weight_decay, cfg.optim.batchnorm_weight_decay)
    companion = None
    if method.companion_arch:  # LBGAT's natural classifier: one optimiser, its parameters a group of their own
        companion = build_model(method.companion_arch, num_classes, dataset=cfg.data.dataset).to(device)
        if cfg.channels_last:
            companion = companion.to(memory_format=torch.channels_last)
        companion = sync_batch_norm(companion, cfg.sync_bn, device)
        group_batch_norm(companion, cfg.batchnorm_groups, world_size())
        groups += weight_decay_groups(companion, cfg.optim.weight_decay, cfg.optim.batchnorm_weight_decay)
    optimizer = sgd(
        groups,
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        implementation=cfg.optim.implementation,
        device=device,
    )
    prior = ClassPrior(num_classes, temperature=method.prior_temperature).to(device)
    ema = (
        ModelEMA(
            model,
            tau=cfg.ema.tau,
            start_epoch=cfg.ema.start_epoch,
            average_buffers=cfg.ema.average_buffers,
            warmup_steps=cfg.ema.warmup_fraction * cfg.epochs * len(train_loader),
        )
        if cfg.ema.enabled
        else None
    )
    awp = (
        AdversarialWeightPerturbation(model, gamma=cfg.awp.gamma, proxy_lr=cfg.awp.proxy_lr)
        if cfg.awp.enabled
        else None
    )
    swa = EpochAverage(cfg.swa.tau) if cfg.swa.enabled else None
    swa_end = cfg.swa.last_epoch(cfg.epochs)

    run = start_run(
        cfg,
        task="adv_training",
        device=device,
        model=model,
        optimizer=optimizer,
        # besides model and optimizer; "companion" is None (and absent from older files) without one
        states={"prior": prior, "ema": ema, "awp": awp, "swa": swa, "companion": companion},
        best={"robust_acc": -1.0, "epoch": 0},
        optimizer_implementation=cfg.optim.implementation,
        describe=f"model.arch={cfg.model.arch} with {cfg.data.dataset}",
    )
    folder = run.folder
    log(
        f"Training {cfg.method} on {cfg.data.dataset} with {cfg.model.arch} on {device} -> {folder.path}"
        + ("; training images resident on the device" if isinstance(train_loader, DeviceBatches) else "")
        + ("; compiled forwards" if cfg.compile else "")
    )

    eval_eps = cfg.eval.epsilon if cfg.eval.epsilon is not None else cfg.attack.epsilon

    def monitor(owner: str, network: torch.nn.Module) -> Dict[str, float]:
        """Clean and PGD accuracy on the monitored set (and clean test accuracy when that is the
        validation set), keyed by `metric_key` (``ema_val_robust_acc``, ...)."""
        accuracy = clean_and_pgd_accuracy(
            network,
            loaders.monitor,
            device,
            eps=eval_eps,
            step_size=cfg.eval.step_size,
            steps=cfg.eval.pgd_steps,
            norm=cfg.attack.norm,
            channels_last=cfg.channels_last,
            seed=cfg.seed,
            objective=cfg.eval.objective,
        )
        numbers = {metric_key(key, split=monitor_set, owner=owner): value for key, value in accuracy.items()}
        if monitor_set != "test":
            clean = clean_and_pgd_accuracy(
                network, loaders.test, device, eps=eval_eps, step_size=0.0, steps=0, channels_last=cfg.channels_last
            )
            numbers[metric_key("clean_acc", owner=owner)] = clean["clean_acc"]
        return numbers

    selector = "ema" if cfg.eval.select == "ema" else "model"  # whose numbers pick best.pt
    selecting = {kind: metric_key(kind, split=monitor_set, owner=selector) for kind in ("robust_acc", "clean_acc")}
    robust = {owner: metric_key("robust_acc", split=monitor_set, owner=owner) for owner in ("model", "ema", "swa")}
    network = wrap_model(model, device)  # the training forwards average their gradients across processes
    train_forward = compile_model(network, cfg.compile)
    attack_forward = train_forward if network is model else compile_model(model, cfg.compile)
    companion_forward = compile_model(wrap_model(companion, device), cfg.compile) if companion is not None else None
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            lr = learning_rate(
                epoch,
                base_lr=cfg.optim.lr,
                epochs=cfg.epochs,
                schedule=cfg.optim.schedule,
                warmup_epochs=cfg.optim.warmup_epochs,
                milestones=cfg.optim.milestones,
                decay=cfg.optim.decay,
                first_epoch_lr=cfg.optim.first_epoch_lr,
            )
            sgd_momentum = momentum(
                epoch, base_momentum=cfg.optim.momentum, epochs=cfg.epochs, schedule=cfg.optim.schedule
            )
            for group in optimizer.param_groups:
                group["lr"], group["momentum"] = lr, sgd_momentum
            data_lib.set_epoch(train_loader, epoch)
            compiling_since = compile_seconds()
            metrics = {
                "lr": lr,
                **train_one_epoch(
                    cfg,
                    method,
                    epoch,
                    train_forward,
                    train_loader,
                    optimizer,
                    prior,
                    ema,
                    awp,
                    device,
                    attack_model=attack_forward,
                    companion=companion_forward,
                ),
            }
            if cfg.compile:
                metrics["compile_seconds"] = compile_seconds() - compiling_since
            prior.step()
            for module in (model, ema.module if ema is not None else None, companion):
                if module is not None:
                    broadcast_buffers_(module)  # one model on every process: evaluated, averaged and saved alike
            if swa is not None and cfg.swa.start <= epoch <= swa_end:
                swa.add(model.state_dict())
            metrics["train_seconds"] = time.perf_counter() - started

            if epoch % cfg.eval.every == 0 or epoch == cfg.epochs:
                metrics.update(monitor("model", model))
                if ema is not None and ema.started:
                    metrics.update(monitor("ema", ema.module))
            if swa is not None and epoch == swa_end:
                swa_model = averaged_model(model, swa.average)
                metrics.update(monitor("swa", swa_model))
                del swa_model
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.logger.log_epoch(epoch, metrics)
            log(
                f"epoch {epoch}/{cfg.epochs}  lr {lr:.4f}  eps {metrics['eps'] * 255:.2f}/255  "
                f"loss {metrics['train_loss']:.4f}  train adv {metrics['train_adv_acc']:.2f}%"
                + (f"  test clean {metrics[clean]:.2f}%" if (clean := metric_key("clean_acc")) in metrics else "")
                + (
                    f"  {monitor_set} PGD-{cfg.eval.pgd_steps} {metrics[robust['model']]:.2f}%"
                    if robust["model"] in metrics
                    else ""
                )
                + (f"  (EMA {metrics[robust['ema']]:.2f}%)" if robust["ema"] in metrics else "")
                + (f"  (epoch average {metrics[robust['swa']]:.2f}%)" if robust["swa"] in metrics else "")
                + f"  {metrics['epoch_seconds']:.0f}s"
                + (f" (compiling {metrics['compile_seconds']:.0f}s)" if metrics.get("compile_seconds") else "")
            )

            if is_main_process():
                value = metrics.get(selecting["robust_acc"], metrics.get(selecting["clean_acc"]))
                if value is not None and value > run.best["robust_acc"]:  # ties keep the earlier epoch
                    run.best = {"robust_acc": value, "epoch": epoch}
                    chosen = ema.module if selector == "ema" else model
                    folder.save({"model": chosen.state_dict(), "epoch": epoch, "robust_acc": value}, folder.best)
                if ema is not None and ema.started:
                    folder.save({"model": ema.module.state_dict(), "epoch": epoch}, folder.ema)
                if cfg.save_every and epoch % cfg.save_every == 0:
                    folder.save(model.state_dict(), folder.epoch_weights(epoch))
                if swa is not None and epoch == swa_end:
                    path = folder.save(swa.average, folder.epoch_average(cfg.swa.tau, cfg.swa.start, swa_end))
                    log(f"wrote the epoch average of epochs {cfg.swa.start}-{swa_end}: {path}")
            if run.end_epoch(epoch):
                return run.stopped(epoch)
    finally:
        run.logger.close()

    results = {
        "run_dir": str(folder.path),
        "epochs": cfg.epochs,
        "best_epoch": run.best["epoch"],
        "best_metric": selecting["robust_acc" if cfg.eval.pgd_steps > 0 else "clean_acc"],
        "best_value": run.best["robust_acc"],
        # From the last epoch's record, so that resuming a finished run (or one killed after its
        # last checkpoint) rebuilds the same results.
        "final": evaluation_keys(run.logger.last_record or {}),
    }
    if swa is not None:
        results["swa_file"] = folder.epoch_average(cfg.swa.tau, cfg.swa.start, swa_end).name
    run.logger.finish(results)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    return config_main(
        ATConfig,
        train,
        prog="python -m adv_training.train",
        argv=argv,
        check=build_method,
        description="Adversarial training with IKL, TRADES, PGD-AT, MART or standard training. "
        "Settings: --config FILE, then key=value overrides.",
    )


if __name__ == "__main__":
    sys.exit(main())
