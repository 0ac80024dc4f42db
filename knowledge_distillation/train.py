"""Knowledge distillation: IKL-KD and the KD / DKD baselines, on CIFAR-100 and ImageNet.

    python -m knowledge_distillation.train --config configs/knowledge_distillation/cifar100/res32x4_res8x4.yaml
    python -m knowledge_distillation.train --config ... method=dkd          # same pair, another method

One step, asking the distiller (`distillers.build_distiller`) what differs: the frozen
teacher's logits (eval mode, no gradient; OFD's teacher normalises with the batch's
statistics); the student's logits (of each view, for MLKD's weak and strong one); for a feature distiller both forwards' features too
(`models.features`); CE + the distiller's term; SGD step over the student and the
distiller's own parts (connectors); with IKL's class prior, the teacher's
softmax(logits / T2) is accumulated per class for the next epoch.
Each epoch ends with top-1/top-5 on the validation set, one line of metrics.jsonl,
TensorBoard scalars and an atomically written last.pt from which ``resume=true`` continues.
Training speed is reported per iteration, data loading and compute separately, as the
paper's KD table compares methods by it.
"""

import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from engine import data as data_lib
from engine import environment
from engine.batchnorm_groups import group_batch_norm, groups_per_process
from engine.cli import config_main
from engine.distributed import (
    broadcast_buffers_,
    global_batch_share,
    is_main_process,
    log,
    world_size,
    wrap_model,
)
from engine.environment import (
    autocast,
    compile_model,
    compile_seconds,
    eager,
    prepare_run_runtime,
    sync_batch_norm,
)
from engine.errors import UserError
from engine.metrics import RunningSums, topk_accuracy
from engine.optim import sgd, weight_decay_groups
from engine.run_folder import evaluation_keys, metric_key
from engine.schedule import learning_rate
from engine.training_run import raise_if_not_finite, start_run
from losses import ClassPrior
from models import build_model, load_frozen
from models.registry import resolve

from .config import KDConfig
from .distillers import Distiller, FeatureBatch, build_distiller, check_distiller
from .loaders import build_loaders

PROGRESS_EVERY = 20  # batches between progress-bar updates (each one synchronises with the GPU)
TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


def load_teacher(cfg: KDConfig, num_classes: int, device: torch.device) -> Optional[torch.nn.Module]:
    """The frozen teacher: weights loaded strictly, eval mode, no gradients (None: no teacher.arch)."""
    if not cfg.teacher.arch:
        return None
    hint = (
        f"mdistiller publishes the CIFAR-100 teachers as cifar_teachers.tar at {TEACHERS_URL}; extract it "
        f"where you run from, so that download_ckpts/cifar_teachers/{cfg.teacher.arch}_vanilla/ckpt_epoch_240.pth "
        f"exists, or set teacher.checkpoint=PATH (or torchvision:IMAGENET1K_V1 for the ImageNet ResNets)"
    )
    if cfg.data.dataset == "imagenet_lt":  # its teachers are baselines trained on the long-tailed list itself
        hint = (
            "ImageNet-LT's teachers are this recipe's baselines: train one first (bash sh/kd_imagenet_lt.sh vanilla "
            "x101_baseline, or r18_baseline / r50_baseline), or set teacher.checkpoint=PATH to its best.pt"
        )
    source = cfg.teacher.checkpoint
    teacher = load_frozen(cfg.teacher.arch, num_classes, dataset=cfg.data.dataset, source=source, missing_hint=hint)
    return teacher.to(device)


def teacher_output_error(cfg: KDConfig) -> UserError:
    return UserError(
        f"the teacher ({cfg.teacher.arch}, {cfg.teacher.checkpoint}) outputs NaN or inf: its weights do "
        f"not fit these inputs; check teacher.checkpoint and data.normalize (mdistiller's teachers expect "
        f"normalised images)"
    )


class StudentForward(torch.nn.Module):
    """What the training step calls and DDP wraps: the student's forward, ``(logits, features)``
    (features None unless the distiller reads them), holding the distiller too, so that its
    parameters (connectors, used in the loss) are averaged over the processes with the student's."""

    def __init__(self, student: torch.nn.Module, distiller: Distiller):
        super().__init__()
        self.student, self.distiller = student, distiller
        self.features = distiller.needs_features

    def forward(self, images):
        if isinstance(images, list):  # a two-view distiller's [weak, strong]: a forward each, logits stacked
            return torch.cat([self.student(view) for view in images]), None
        return self.student.forward_features(images) if self.features else (self.student(images), None)


class TeacherForward(torch.nn.Module):
    """The teacher's forward as the training step reads it: ``(logits, features or None)``."""

    def __init__(self, teacher: torch.nn.Module, features: bool):
        super().__init__()
        self.teacher, self.features = teacher, features

    def forward(self, images):
        if isinstance(images, list):  # [weak, strong], as the student's
            return torch.cat([self.teacher(view) for view in images]), None
        return self.teacher.forward_features(images) if self.features else (self.teacher(images), None)


def batch_images(images, device: torch.device, channels_last: bool):
    """A batch's images on ``device`` (in channels-last memory with ``channels_last``); a list of views stays one."""
    if isinstance(images, list):
        return [batch_images(view, device, channels_last) for view in images]
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def screen_teacher_output(logits_teacher: torch.Tensor, cfg: KDConfig):
    """(logits safe to feed the losses, 0-dim count of non-finite values) for one batch.

    On the CPU a non-finite output stops at once. On an accelerator a check would stall the
    host every step, so the bad values are zeroed (the losses' own device-side checks would
    otherwise abort the process without a message) and counted on the device; the count is
    read with the progress line, and the run stops there with the teacher's message.
    """
    bad = (~torch.isfinite(logits_teacher)).sum()
    if environment.checks_on_host(logits_teacher.device):
        if bad.item():
            raise teacher_output_error(cfg)
        return logits_teacher, bad
    return torch.nan_to_num(logits_teacher, nan=0.0, posinf=0.0, neginf=0.0), bad


def train_one_epoch(
    cfg: KDConfig,
    distiller: Distiller,
    epoch: int,
    student: torch.nn.Module,
    teacher: Optional[torch.nn.Module],
    loader,
    optimizer: torch.optim.Optimizer,
    prior: Optional[ClassPrior],
    device: torch.device,
) -> Dict[str, float]:
    """One epoch over ``loader``. ``student`` and ``teacher`` (`StudentForward`, `TeacherForward`)
    may be compiled (`compile_model`) and the student wrapped in DDP; a batch of another size than
    the first runs them eagerly."""
    student.train()
    if teacher is not None:
        teacher.train(distiller.teacher_in_train_mode)
    full_size = None
    global_sizes = data_lib.global_batch_sizes(loader)  # None in one process
    sums = RunningSums(("loss", "ce", "kd", "correct", "teacher_nonfinite"), device)
    no_teacher = torch.zeros((), device=device)  # the count of a run without a teacher, allocated once
    data_seconds = 0.0
    started = waiting_since = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if is_main_process() else True)
    for batch_index, batch in enumerate(bar):
        data_seconds += time.perf_counter() - waiting_since
        images, targets = batch_images(batch[0], device, cfg.channels_last), batch[1].to(device, non_blocking=True)
        indices = batch[2].to(device, non_blocking=True) if distiller.needs_indices else None
        full_size = full_size or targets.numel()
        # Compiled forwards are specialised to the batch shape: a last, smaller batch runs eagerly.
        same_shape = targets.numel() == full_size
        student_net = student if same_shape else eager(student)
        teacher_net = teacher if same_shape else eager(teacher)  # eager(None) is None

        with autocast(device, cfg.precision):
            logits_teacher, features_teacher, teacher_bad = None, None, no_teacher
            if teacher is not None:
                with torch.no_grad():
                    logits_teacher, features_teacher = teacher_net(images)
                    logits_teacher, teacher_bad = screen_teacher_output(logits_teacher.float(), cfg)
            logits_student, features_student = student_net(images)
            prior_rows = prior.rows(targets) if distiller.uses_prior else None
            features = (
                FeatureBatch(
                    features_student,
                    features_teacher,
                    indices,
                    batch_index,
                    global_sizes[batch_index] if global_sizes else None,
                )
                if distiller.needs_features
                else None
            )
            loss, parts = distiller.loss(logits_student, logits_teacher, targets, epoch, prior_rows, features=features)
        share = global_batch_share(targets.numel(), global_sizes[batch_index]) if global_sizes else None
        optimizer.zero_grad(set_to_none=True)
        (loss if share is None else loss * share).backward()
        optimizer.step()
        if distiller.uses_prior:
            prior.update(distiller.distillation_logits(logits_teacher), targets)

        batch_size = targets.numel()
        sums.add(
            batch_size,
            loss=loss.detach().double() * batch_size,
            ce=parts["ce"].double() * batch_size,
            kd=parts["kd"].double() * batch_size,
            correct=(logits_student.detach()[:batch_size].argmax(1) == targets).sum(),  # the (first) weak view's
            teacher_nonfinite=teacher_bad,
        )
        if (batch_index + 1) % PROGRESS_EVERY == 0 or batch_index + 1 == len(loader):
            running = sums.totals(across_processes=True)  # a NaN on any process stops every process
            if running["teacher_nonfinite"]:
                raise teacher_output_error(cfg)
            mean_loss = running["loss"] / running["count"]
            raise_if_not_finite(
                mean_loss,
                epoch=epoch,
                batch=batch_index + 1,
                advice="Lower optim.lr, use precision=fp32, or check the data and the teacher.",
            )
            bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{100 * running['correct'] / running['count']:.1f}")
        waiting_since = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.synchronize()
    total_seconds = time.perf_counter() - started
    iterations = max(len(loader), 1)
    totals = sums.totals(across_processes=True)
    count = max(totals["count"], 1)
    return {
        "train_loss": totals["loss"] / count,
        "train_loss_ce": totals["ce"] / count,
        "train_loss_kd": totals["kd"] / count,
        "train_acc": 100 * totals["correct"] / count,
        "sec_per_iter": total_seconds / iterations,
        "data_sec_per_iter": data_seconds / iterations,
        "compute_sec_per_iter": (total_seconds - data_seconds) / iterations,
    }


@dataclass
class Distillation:
    """What a distillation run trains and keeps: the student, the frozen teacher (None without one),
    the distiller (with any parts of its own), the optimizer over the student and those parts, and the
    class prior."""

    student: torch.nn.Module
    teacher: Optional[torch.nn.Module]
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    prior: ClassPrior

    def states(self) -> Dict[str, Optional[object]]:
        """What last.pt saves besides the student and the optimizer (None: not used by this run)."""
        return {"prior": self.prior, "method": self.distiller if self.distiller.has_state() else None}


def build_distillation(
    cfg: KDConfig,
    num_classes: int,
    device: torch.device,
    teacher: Optional[torch.nn.Module],
    train_targets: Optional[torch.Tensor] = None,
    input_size: Optional[Tuple[int, ...]] = None,
) -> Distillation:
    """The student, the distiller and what they train with, around the frozen ``teacher``, as ``cfg``
    asks (also `bench/kd_step.py`'s); ``train_targets``: the training labels, for CRD; ``input_size``:
    the images' (C, H, W), by default the student's for the dataset (it sizes a feature distiller)."""
    student = build_model(cfg.student.arch, num_classes, dataset=cfg.data.dataset).to(device)
    input_size = input_size or resolve(cfg.student.arch, cfg.data.dataset).input_size
    distiller = build_distiller(cfg, student, teacher, input_size=input_size, train_targets=train_targets).to(device)
    distiller.loss_groups = groups_per_process(cfg.batchnorm_groups, world_size())  # its loss, as the BatchNorms
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    student = sync_batch_norm(student, cfg.sync_bn, device)
    distiller = sync_batch_norm(distiller, cfg.sync_bn, device)  # its connectors' BatchNorms, as the student's
    # The authors' DataParallel splits every forward of the whole distiller (OFD's teacher runs in train mode).
    for module in (student, distiller, teacher):
        if module is not None:
            group_batch_norm(module, cfg.batchnorm_groups, world_size())
    optimizer = sgd(
        weight_decay_groups(student, cfg.optim.weight_decay, cfg.optim.batchnorm_weight_decay)
        + distiller.parameter_groups(cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        implementation=cfg.optim.implementation,
        device=device,
    )
    prior = ClassPrior(num_classes, temperature=distiller.prior_temperature).to(device)
    return Distillation(student, teacher, distiller, optimizer, prior)


def set_learning_rate(cfg: KDConfig, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """The schedule's learning rate of ``epoch``, set in every parameter group; returned."""
    lr = learning_rate(
        epoch,
        base_lr=cfg.optim.lr,
        epochs=cfg.epochs,
        schedule=cfg.optim.schedule,
        warmup_epochs=cfg.optim.warmup_epochs,
        milestones=cfg.optim.milestones,
        decay=cfg.optim.decay,
    )
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def epoch_line(cfg: KDConfig, epoch: int, metrics: Dict[str, float]) -> str:
    """The log line of one epoch."""
    return (
        f"epoch {epoch}/{cfg.epochs}  lr {metrics['lr']:.4g}  loss {metrics['train_loss']:.4f}  "
        f"train {metrics['train_acc']:.2f}%"
        + (
            f"  val top-1 {metrics['test_top1']:.2f}%  top-5 {metrics['test_top5']:.2f}%"
            if "test_top1" in metrics
            else ""
        )
        + "".join(
            f"  {group} {metrics[key]:.2f}%"
            for group, key in (
                ("many", "test_many_shot_top1"),
                ("medium", "test_medium_shot_top1"),
                ("few", "test_few_shot_top1"),
            )
            if key in metrics
        )
        + f"  {metrics['sec_per_iter']:.3f} s/iter (data {metrics['data_sec_per_iter']:.3f})"
    )


def train(cfg: KDConfig) -> Dict[str, object]:
    """Runs (or resumes) a whole distillation run; returns what results.json holds."""
    device = prepare_run_runtime(cfg)
    method = check_distiller(cfg)
    loaders = build_loaders(cfg, device, with_indices=method.needs_indices, views=method.training_views)
    teacher = load_teacher(cfg, loaders.num_classes, device)
    kd = build_distillation(cfg, loaders.num_classes, device, teacher, loaders.train_targets)
    student, distiller = kd.student, kd.distiller
    run = start_run(
        cfg,
        device=device,
        model=student,
        optimizer=kd.optimizer,
        states=kd.states(),
        selects_by=metric_key("top1"),
        optimizer_implementation=cfg.optim.implementation,
        describe=f"student.arch={cfg.student.arch}",
    )
    teacher_accuracy = None
    if kd.teacher is not None and cfg.teacher.report_accuracy:
        teacher_accuracy = topk_accuracy(kd.teacher, loaders.val, device, cfg.channels_last)
        log(f"Teacher {cfg.teacher.arch}: top-1 {teacher_accuracy['top1']:.2f}%  top-5 {teacher_accuracy['top5']:.2f}%")
    source = f"{cfg.teacher.arch} -> " if kd.teacher is not None else ""
    log(f"Training {source}{cfg.student.arch} with {cfg.method} on {cfg.data.dataset} ({device}) -> {run.folder.path}")

    # DDP averages the processes' gradients, of the student and of the distiller's parts.
    network = compile_model(wrap_model(StudentForward(student, distiller), device), cfg.compile)
    teacher_forward = (
        compile_model(TeacherForward(kd.teacher, distiller.needs_features), cfg.compile)
        if kd.teacher is not None
        else None
    )
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            lr = set_learning_rate(cfg, kd.optimizer, epoch)
            data_lib.set_epoch(loaders.train, epoch)
            compiling_since = compile_seconds()
            metrics = {
                "lr": lr,
                **train_one_epoch(
                    cfg, distiller, epoch, network, teacher_forward, loaders.train, kd.optimizer, kd.prior, device
                ),
                **distiller.epoch_metrics(),  # CTKD's temperature
            }
            if cfg.compile:
                metrics["compile_seconds"] = compile_seconds() - compiling_since
            kd.prior.step()
            broadcast_buffers_(student)  # rank 0's BatchNorm statistics everywhere: evaluated and saved alike
            broadcast_buffers_(distiller)  # its connectors' statistics too (CRD's memory is the same everywhere)
            if epoch % cfg.eval.every == 0 or epoch == cfg.epochs:
                accuracy = topk_accuracy(student, loaders.val, device, cfg.channels_last, loaders.train_counts)
                metrics.update({metric_key(key): value for key, value in accuracy.items() if value is not None})
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.logger.log_epoch(epoch, metrics)
            log(epoch_line(cfg, epoch, metrics))
            run.offer_best(epoch, metrics, student)
            if run.end_epoch(epoch):
                return run.stopped(epoch)
    finally:
        run.logger.close()

    last = run.logger.last_record or {}
    results = {
        "run_dir": str(run.folder.path),
        "epochs": cfg.epochs,
        "teacher": cfg.teacher.arch,
        "student": cfg.student.arch,
        "method": cfg.method,
        "teacher_accuracy": teacher_accuracy,
        **run.best_results(),
        # From the last epoch's record, so that resuming a finished run (or one killed after its
        # last checkpoint) rebuilds the same results.
        "final": {
            k: v for k, v in last.items() if k in evaluation_keys(last, splits=("test",)) or k.endswith("sec_per_iter")
        },
    }
    run.logger.finish(results)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    return config_main(
        KDConfig,
        train,
        prog="python -m knowledge_distillation.train",
        argv=argv,
        check=check_distiller,
        description="Knowledge distillation with IKL, KD, DKD, DIST, MLKD, CTKD or a feature distiller (fitnet, at, "
        "nst, pkt, kdsvd, ofd, rkd, vid, sp, crd, reviewkd). Settings: --config FILE, then key=value overrides.",
    )


if __name__ == "__main__":
    sys.exit(main())
