"""Adversarial training: IKL-AT, TRADES, PGD-AT, MART (+AWP, +EMA) on CIFAR, and standard training.

    python -m adv_training.train --config configs/adv_training/cifar100_ikl_a4b20t4.yaml [key=value ...]
    python -m adv_training.train --config ... --print-config      # resolved config with every knob

One step, asking the method (`methods.build_method`) what differs: class-prior rows for
the batch (IKL); natural logits once in eval mode (IKL, TRADES); PGD on the method's
objective; AWP on the method's proxy loss; two forwards in train mode (and the method's own
networks, if it has any, on the clean images); the method's loss; SGD step over the model
and the method's parameters; EMA update; class-prior update. The trainer never names a
method or one of its parts (`Training`, `Forwards`). Each epoch ends
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
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from engine import data as data_lib
from engine.batchnorm_groups import group_batch_norm
from engine.cli import config_main
from engine.config import ConfigError
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
from engine.environment import (
    autocast,
    compile_model,
    compile_seconds,
    eager,
    prepare_run_runtime,
    sync_batch_norm,
)
from engine.metrics import RunningSums
from engine.optim import sgd, weight_decay_groups
from engine.run_folder import evaluation_keys, metric_key
from engine.schedule import learning_rate, momentum
from engine.training_run import raise_if_not_finite, start_run
from engine.view_batchnorm import add_view_batchnorms, batch_views
from losses import ClassPrior
from models import attach_preprocessing, build_model

from .attacks import attack_budget, natural_logits
from .awp import AdversarialWeightPerturbation
from .config import ATConfig
from .loaders import Loaders, build_loaders
from .methods import Method, StepLoss, build_method, check_method
from .pgd_monitor import clean_and_pgd_accuracy

PROGRESS_EVERY = 20  # batches between progress-bar updates (each one synchronises with the GPU)


def epoch_precision(precision: str, eps_t: float, bf16_min_eps: float, has_attack: bool) -> str:
    """The precision an epoch trains and attacks in: ``precision``, except that a bf16 run
    trains in TF32 while its attack budget is below ``bf16_min_eps`` (bf16's rounding of the
    activations then hides most of the perturbation: README, "Precision")."""
    if precision == "bf16" and has_attack and eps_t < bf16_min_eps * (1 - 1e-9):  # 8/255 * 25/200 is 1/255
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
class Training:
    """What an adversarial-training run trains and keeps: the model, the method (with any networks
    of its own), the optimizer over both, the class prior and the optional EMA, AWP and epoch average."""

    model: torch.nn.Module
    method: Method
    optimizer: torch.optim.Optimizer
    prior: ClassPrior
    ema: Optional[ModelEMA]
    awp: Optional[AdversarialWeightPerturbation]
    epoch_average: Optional[EpochAverage]

    def states(self) -> Dict[str, Optional[object]]:
        """What last.pt saves besides the model and the optimizer (None: not used by this run)."""
        method = self.method if self.method.has_state() else None
        return {
            "prior": self.prior,
            "ema": self.ema,
            "awp": self.awp,
            "epoch_average": self.epoch_average,
            "method": method,
        }


def prepare_network(module: torch.nn.Module, cfg: ATConfig, device: torch.device) -> torch.nn.Module:
    """``module`` (the model, or a method's networks) on ``device`` in the run's memory format, with its
    BatchNorm layers as the run's processes and ``batchnorm_groups`` compute them."""
    module = module.to(device)
    if cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    module = sync_batch_norm(module, cfg.sync_bn, device)
    group_batch_norm(
        module, cfg.batchnorm_groups, world_size(), cfg.data.views()
    )  # before AWP's proxy and the EMA copy it
    return module


def build_training(cfg: ATConfig, num_classes: int, device: torch.device, steps_per_epoch: int) -> Training:
    """The model, the method and everything they train with, as ``cfg`` asks (also `bench/at_step.py`'s)."""
    model = build_model(cfg.model.arch, num_classes, dataset=cfg.data.dataset, **cfg.model.build_kwargs())
    if cfg.model.view_batchnorm and not add_view_batchnorms(model):  # the augmented views' BatchNorms (last.pt)
        raise ConfigError(
            f"config key 'model.view_batchnorm' gives the augmented views BatchNorms of their own, and "
            f"model.arch={cfg.model.arch} has no BatchNorm2d: use model.view_batchnorm=false"
        )
    attach_preprocessing(model, cfg.model.preprocess, cfg.data.dataset)  # state dict unchanged; deep copies keep it
    model = prepare_network(model, cfg, device)
    method = prepare_network(build_method(cfg, num_classes), cfg, device)  # after the model: its networks' RNG
    decay = (cfg.optim.weight_decay, cfg.optim.batchnorm_weight_decay)
    optimizer = sgd(
        weight_decay_groups(model, *decay) + method.parameter_groups(*decay),  # the method's groups after the model's
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        implementation=cfg.optim.implementation,
        device=device,
    )
    ema = None
    if cfg.ema.enabled:
        warmup_steps = cfg.ema.warmup_fraction * cfg.epochs * steps_per_epoch
        ema = ModelEMA(
            model,
            tau=cfg.ema.tau,
            start_epoch=cfg.ema.start_epoch,
            average_buffers=cfg.ema.average_buffers,
            warmup_steps=warmup_steps,
        )
    awp = (
        AdversarialWeightPerturbation(model, gamma=cfg.awp.gamma, proxy_lr=cfg.awp.proxy_lr)
        if cfg.awp.enabled
        else None
    )
    return Training(
        model,
        method,
        optimizer,
        ClassPrior(num_classes, temperature=method.prior_temperature).to(device),
        ema,
        awp,
        EpochAverage(cfg.epoch_average.tau) if cfg.epoch_average.enabled else None,
    )


@dataclass
class Forwards:
    """The forwards of the training step: the model's (under DDP when several processes train, and
    compiled when asked), the model's for the attacks (compiled, never DDP) and the method's own
    networks' (under DDP and compiled like the model's; None for a method without networks)."""

    train: torch.nn.Module
    attack: torch.nn.Module
    method: Optional[torch.nn.Module]

    @classmethod
    def of(cls, training: Training, cfg: ATConfig, device: torch.device) -> "Forwards":
        network = wrap_model(training.model, device)  # the training forwards average their gradients
        train_forward = compile_model(network, cfg.compile)
        attack_forward = train_forward if network is training.model else compile_model(training.model, cfg.compile)
        method = training.method
        method_forward = (
            compile_model(wrap_model(method, device), cfg.compile) if method.forwards_own_networks else None
        )
        return cls(train_forward, attack_forward, method_forward)

    def eager(self) -> "Forwards":
        """The same forwards uncompiled, for a batch of another shape than the compiled ones'."""
        return Forwards(eager(self.train), unwrap(self.attack), eager(self.method) if self.method else None)


@dataclass
class BatchLoss:
    """The training loss of one batch, for any forward of the model (the training network, or AWP's
    proxy): the two forwards the reference makes in train mode (adversarial images first, then clean
    ones when the method uses them, each with its own BatchNorm statistics), the method's own networks
    on the clean images, then the method's loss of their outputs, scaled by this process's share of the
    global batch (``share``; None in one process)."""

    method: Method
    method_forward: Optional[torch.nn.Module]
    x_natural: torch.Tensor
    x_adv: torch.Tensor
    targets: torch.Tensor
    prior_rows: Optional[torch.Tensor]
    basic_size: int
    device: torch.device
    precision: str
    share: Optional[float]

    def _forwards(self, forward, rows: Optional[slice] = None):
        """The forwards on the batch, or on its ``rows`` (AWP's proxy on the basic view), each view
        through its own BatchNorms where the network has them (`batch_views`)."""

        def part(tensor):
            return tensor if rows is None or tensor is None else tensor[rows]

        x_adv, x_natural = part(self.x_adv), part(self.x_natural)
        with batch_views(forward, self.view_rows if rows is None else None):
            logits_adv = forward(x_adv)
            logits_natural = forward(x_natural) if self.method.forwards_natural else None
        own = self.method_forward(x_natural) if self.method_forward is not None else None
        return logits_adv, logits_natural, part(self.targets), part(self.prior_rows), own

    @property
    def view_rows(self) -> Tuple[int, ...]:
        """The rows of each view of the batch, basic view first."""
        return (self.basic_size,) * (len(self.targets) // self.basic_size)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.share is None else loss * self.share

    def __call__(self, forward) -> Tuple[torch.Tensor, StepLoss]:
        """(the loss to back-propagate, the method's `StepLoss`)."""
        with autocast(self.device, self.precision):
            logits_adv, logits_natural, targets, prior_rows, own = self._forwards(forward)
            step = self.method.loss(logits_adv, logits_natural, targets, prior_rows, self.basic_size, own)
        return self._scaled(step.total), step

    def awp_proxy(self, proxy) -> torch.Tensor:
        """AWP's proxy loss (`Method.proxy_loss`) with the proxy's forwards, on the whole batch or, for a
        method with ``awp_on_basic_view``, on the basic view's rows. A method's own networks run here too,
        in train mode, as in the step (no method with networks takes AWP today: LBGAT refuses it)."""
        rows = slice(0, self.basic_size) if self.method.awp_on_basic_view else None
        with autocast(self.device, self.precision):
            return self._scaled(self.method.proxy_loss(*self._forwards(proxy, rows)))


def train_one_epoch(
    cfg: ATConfig, training: Training, forwards: Forwards, epoch: int, loader, device: torch.device
) -> Dict[str, float]:
    """One epoch over ``loader``: attacks through ``forwards.attack``, trains through ``forwards.train``
    and ``forwards.method``; a last, smaller batch runs them eagerly."""
    model, method, prior, ema, awp = training.model, training.method, training.prior, training.ema, training.awp
    full_size = None
    eps_t, step_size, steps = attack_budget(cfg.attack, epoch, cfg.epochs)
    precision = epoch_precision(cfg.precision, eps_t, cfg.bf16_min_eps, method.has_attack)
    global_sizes = data_lib.global_batch_sizes(loader)  # None in one process
    use_awp = awp is not None and epoch >= cfg.awp.warmup
    # Sums stay on the device and are read every PROGRESS_EVERY batches, not every batch.
    sums = RunningSums(("loss", "natural", "robust", "adv_correct", "clean_correct"), device)
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if is_main_process() else True)
    for batch_index, batch in enumerate(bar):
        x_natural, targets, basic_size = _to_device(batch, device, cfg.channels_last)
        full_size = full_size or targets.numel()
        # Compiled forwards are specialised to the batch shape: a last, smaller batch runs eagerly
        # rather than compiling everything a second time.
        nets = forwards if targets.numel() == full_size else forwards.eager()
        prior_rows = prior.rows(targets) if method.uses_prior else None
        broadcast_buffers_(model)  # every process attacks with rank 0's BatchNorm statistics, as DataParallel

        x_adv = x_natural
        view_rows = (basic_size,) * (targets.numel() // basic_size)  # each view attacked with its own BatchNorms
        if method.has_attack:
            with autocast(device, precision), batch_views(nets.attack, view_rows):
                logits_natural = None
                if method.attack_needs_natural_logits:
                    logits_natural = natural_logits(
                        nets.attack,
                        x_natural,
                        eval_mode=cfg.attack.eval_mode,
                        freeze_bn_stats=cfg.attack.freeze_bn_stats,
                    ).float()
                objective = method.attack_objective(logits_natural, targets, prior_rows)
                x_adv = method.adversarial_examples(
                    nets.attack, x_natural, targets, objective, (eps_t, step_size, steps), cfg.attack
                )

        nets.train.train()
        method.train()  # its own networks train too (nothing for a method without any)
        share = global_batch_share(targets.numel(), global_sizes[batch_index]) if global_sizes else None
        batch_loss = BatchLoss(
            method, nets.method, x_natural, x_adv, targets, prior_rows, basic_size, device, precision, share
        )
        perturbation = awp.compute(batch_loss.awp_proxy) if use_awp else None
        with awp.perturbed(perturbation) if use_awp else contextlib.nullcontext():
            loss, step = batch_loss(nets.train)
            training.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            training.optimizer.step()

        if ema is not None:
            ema.update(model, epoch)
        if method.uses_prior:
            prior.update(step.logits_natural[:basic_size], targets[:basic_size])

        batch_size = targets.numel()
        clean_correct = (
            (step.logits_natural.argmax(1) == targets).sum() if step.logits_natural is not None else loss.new_zeros(())
        )
        sums.add(
            batch_size,
            loss=step.total.detach().double() * batch_size,
            natural=step.natural.double() * batch_size,
            robust=step.robust.double() * batch_size,
            adv_correct=(step.logits_adv.argmax(1) == targets).sum(),
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
        "eps": eps_t if method.has_attack else 0.0,
        "attack_step_size": step_size,
        "attack_steps": steps if method.has_attack else 0,
        "awp": use_awp,
        "precision": precision,
        **method.epoch_metrics(),
    }
    if method.forwards_natural:  # PGD-AT never sees the clean training images
        summary["train_clean_acc"] = 100 * totals["clean_correct"] / count
    return summary


def averaged_model(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` holding the weights ``state`` (an epoch average), for evaluation."""
    copy = deepcopy(model)
    copy.load_state_dict(state)
    return copy


def monitor(cfg: ATConfig, loaders: Loaders, device: torch.device, owner: str, network) -> Dict[str, float]:
    """Clean and PGD accuracy of ``network`` on the monitored set (and clean test accuracy when that is
    the validation set), keyed by `metric_key` (``ema_val_robust_acc``, ...)."""
    eps = cfg.eval.epsilon if cfg.eval.epsilon is not None else cfg.attack.epsilon
    accuracy = clean_and_pgd_accuracy(
        network,
        loaders.monitor,
        device,
        eps=eps,
        step_size=cfg.eval.step_size,
        steps=cfg.eval.pgd_steps,
        norm=cfg.attack.norm,
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        objective=cfg.eval.objective,
    )
    numbers = {metric_key(key, split=loaders.monitor_set, owner=owner): value for key, value in accuracy.items()}
    if loaders.monitor_set != "test":
        clean = clean_and_pgd_accuracy(
            network, loaders.test, device, eps=eps, step_size=0.0, steps=0, channels_last=cfg.channels_last
        )
        numbers[metric_key("clean_acc", owner=owner)] = clean["clean_acc"]
    return numbers


def selecting_metric(cfg: ATConfig, monitor_set: str) -> Tuple[str, str]:
    """(whose weights best.pt holds, the key of metrics.jsonl that picks them): the monitored robust
    accuracy, or the clean one when the monitor runs no attack (``eval.pgd_steps=0``)."""
    owner = "ema" if cfg.eval.select == "ema" else "model"
    kind = "robust_acc" if cfg.eval.pgd_steps > 0 else "clean_acc"
    return owner, metric_key(kind, split=monitor_set, owner=owner)


def epoch_line(cfg: ATConfig, epoch: int, metrics: Dict[str, float], monitor_set: str) -> str:
    """The log line of one epoch."""
    robust = {owner: metric_key("robust_acc", split=monitor_set, owner=owner) for owner in ("model", "ema", "swa")}
    clean = metric_key("clean_acc")
    return (
        f"epoch {epoch}/{cfg.epochs}  lr {metrics['lr']:.4f}  eps {metrics['eps'] * 255:.2f}/255  "
        f"loss {metrics['train_loss']:.4f}  train adv {metrics['train_adv_acc']:.2f}%"
        + (f"  test clean {metrics[clean]:.2f}%" if clean in metrics else "")
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


def set_learning_rate(cfg: ATConfig, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """The schedule's learning rate and momentum of ``epoch``, set in every parameter group; the rate."""
    o = cfg.optim
    lr = learning_rate(
        epoch,
        base_lr=o.lr,
        epochs=cfg.epochs,
        schedule=o.schedule,
        warmup_epochs=o.warmup_epochs,
        milestones=o.milestones,
        decay=o.decay,
        first_epoch_lr=o.first_epoch_lr,
    )
    sgd_momentum = momentum(epoch, base_momentum=o.momentum, epochs=cfg.epochs, schedule=o.schedule)
    for group in optimizer.param_groups:
        group["lr"], group["momentum"] = lr, sgd_momentum
    return lr


def train(cfg: ATConfig) -> Dict[str, object]:
    """Runs (or resumes) a whole training run; returns what results.json holds."""
    device = prepare_run_runtime(cfg)
    loaders = build_loaders(cfg, device)
    training = build_training(cfg, loaders.num_classes, device, steps_per_epoch=len(loaders.train))
    model, ema, average = training.model, training.ema, training.epoch_average
    averaging, average_end = cfg.epoch_average, cfg.epoch_average.last_epoch(cfg.epochs)
    selector, selects_by = selecting_metric(cfg, loaders.monitor_set)
    run = start_run(
        cfg,
        device=device,
        model=model,
        optimizer=training.optimizer,
        states=training.states(),
        selects_by=selects_by,
        optimizer_implementation=cfg.optim.implementation,
        describe=f"model.arch={cfg.model.arch} with {cfg.data.dataset}",
    )
    folder = run.folder
    log(
        f"Training {cfg.method} on {cfg.data.dataset} with {cfg.model.arch} on {device} -> {folder.path}"
        + ("; training images resident on the device" if isinstance(loaders.train, DeviceBatches) else "")
        + ("; compiled forwards" if cfg.compile else "")
    )
    forwards = Forwards.of(training, cfg, device)
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            lr = set_learning_rate(cfg, training.optimizer, epoch)
            training.method.epoch_start(epoch, lr)
            data_lib.set_epoch(loaders.train, epoch)
            compiling_since = compile_seconds()
            metrics = {"lr": lr, **train_one_epoch(cfg, training, forwards, epoch, loaders.train, device)}
            if cfg.compile:
                metrics["compile_seconds"] = compile_seconds() - compiling_since
            training.prior.step()
            for module in (model, ema.module if ema is not None else None, training.method):
                if module is not None:
                    broadcast_buffers_(module)  # one model on every process: evaluated, averaged and saved alike
            if average is not None and averaging.start <= epoch <= average_end:
                average.add(model.state_dict())
            metrics["train_seconds"] = time.perf_counter() - started

            if epoch % cfg.eval.every == 0 or epoch == cfg.epochs:
                metrics.update(monitor(cfg, loaders, device, "model", model))
                if ema is not None and ema.started:
                    metrics.update(monitor(cfg, loaders, device, "ema", ema.module))
            if average is not None and epoch == average_end:
                metrics.update(monitor(cfg, loaders, device, "swa", averaged_model(model, average.average)))
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.logger.log_epoch(epoch, metrics)
            log(epoch_line(cfg, epoch, metrics, loaders.monitor_set))

            run.offer_best(epoch, metrics, ema.module if selector == "ema" else model)
            if ema is not None and ema.started:
                run.save_weights(folder.ema, ema.module, epoch, evaluation_keys(metrics, owners=("ema",)))
            if cfg.save_every and epoch % cfg.save_every == 0:
                run.save_weights(folder.epoch_weights(epoch), model, epoch, evaluation_keys(metrics, owners=("model",)))
            if average is not None and epoch == average_end:
                path = folder.epoch_average(averaging.tau, averaging.start, average_end)
                run.save_weights(path, average.average, epoch, evaluation_keys(metrics, owners=("swa",)))
                log(f"wrote the epoch average of epochs {averaging.start}-{average_end}: {path}")
            if run.end_epoch(epoch):
                return run.stopped(epoch)
    finally:
        run.logger.close()

    results = {
        "run_dir": str(folder.path),
        "epochs": cfg.epochs,
        **run.best_results(),
        # From the last epoch's record, so that resuming a finished run (or one killed after its
        # last checkpoint) rebuilds the same results.
        "final": evaluation_keys(run.logger.last_record or {}),
    }
    if average is not None:
        results["swa_file"] = folder.epoch_average(averaging.tau, averaging.start, average_end).name
    run.logger.finish(results)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    return config_main(
        ATConfig,
        train,
        prog="python -m adv_training.train",
        argv=argv,
        check=check_method,
        description="Adversarial training with IKL, TRADES, PGD-AT, MART or standard training. "
        "Settings: --config FILE, then key=value overrides.",
    )


if __name__ == "__main__":
    sys.exit(main())
