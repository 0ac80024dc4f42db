"""Knowledge distillation: IKL-KD and the KD / DKD baselines, on CIFAR-100 and ImageNet.

    python -m knowledge_distillation.train --config configs/knowledge_distillation/cifar100/res32x4_res8x4.yaml
    python -m knowledge_distillation.train --config ... method=dkd          # same pair, another method

One step, asking the distiller (`distillers.build_distiller`) what differs: the frozen
teacher's logits (eval mode, no gradient; OFD's teacher normalises with the batch's
statistics); the student's logits; for a feature distiller both forwards' features too
(`models.features`); CE + the distiller's term; SGD step over the student and the
distiller's own parts (connectors); with IKL's class prior, the teacher's
softmax(logits / T2) is accumulated per class for the next epoch.
Each epoch ends with top-1/top-5 on the validation set, one line of metrics.jsonl,
TensorBoard scalars and an atomically written last.pt from which ``resume=true`` continues.
Training speed is reported per iteration, data loading and compute separately, as the
paper's KD table compares methods by it.
"""

import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from engine import data as data_lib
from engine import runtime
from engine.batchnorm_groups import group_batch_norm
from engine.cli import config_main
from engine.distributed import (
    broadcast_buffers_,
    global_batch_share,
    is_main_process,
    log,
    rank,
    reduce_sum,
    world_size,
    wrap_model,
)
from engine.errors import UserError
from engine.file_io import sha256_file
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
from engine.schedule import learning_rate
from losses import ClassPrior
from models import build_model, load_weights
from models.registry import resolve

from .config import KDConfig
from .distillers import Distiller, FeatureBatch, build_distiller, check_distiller

PROGRESS_EVERY = 20  # batches between progress-bar updates (each one synchronises with the GPU)
TEACHERS_URL = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints"


def torchvision_weights_file(arch: str, weights_name: str) -> Path:
    """torchvision's published ``arch`` weights as a file in torch's hub cache, its hash checked.

    The file is fetched when missing, and its sha256 is compared with the prefix torchvision
    publishes in the file name whether or not it was just fetched, so that a replaced file in
    the cache is refused. It is then read like every checkpoint, by the safe reader
    (``weights_only``), never by torchvision's own loader (which unpickles freely).
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch.lower())[weights_name]
    except (ValueError, KeyError):
        raise UserError(
            f"teacher.checkpoint=torchvision:{weights_name} is not a torchvision weight of {arch}; "
            f"use e.g. torchvision:IMAGENET1K_V1 with ResNet18/34/50"
        ) from None
    filename = weights.url.rsplit("/", 1)[-1]
    published = re.search(r"-([a-f0-9]{8,})\.", filename)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                weights.url, str(path), hash_prefix=published and published.group(1), progress=is_main_process()
            )
        except Exception as error:  # no network, proxy, disk full, wrong hash: all end the same way
            raise UserError(
                f"could not fetch torchvision's {arch} {weights_name} weights ({type(error).__name__}: {error}); "
                f"download {weights.url} yourself and set teacher.checkpoint=<that file>"
            ) from None
    if published is not None:
        require_sha256_prefix(path, published.group(1))
    return path


def require_sha256_prefix(path: Path, prefix: str) -> None:
    if not sha256_file(path).startswith(prefix):
        raise UserError(
            f"{path} does not match its published sha256 (which starts with {prefix}): the file "
            f"was replaced or damaged; delete it and run again to fetch it anew"
        )


def load_teacher(cfg: KDConfig, num_classes: int, device: torch.device) -> Optional[torch.nn.Module]:
    """The frozen teacher: weights loaded strictly, eval mode, no gradients (None: no teacher.arch)."""
    if not cfg.teacher.arch:
        return None
    teacher = build_model(cfg.teacher.arch, num_classes, dataset=cfg.data.dataset)
    source = cfg.teacher.checkpoint
    if source.startswith("torchvision:"):
        load_weights(teacher, torchvision_weights_file(cfg.teacher.arch, source.split(":", 1)[1]))
    elif not source or not Path(source).is_file():
        raise UserError(
            f"teacher checkpoint not found: '{source}'. mdistiller publishes the CIFAR-100 teachers as "
            f"cifar_teachers.tar at {TEACHERS_URL}; extract it where you run from, so that "
            f"download_ckpts/cifar_teachers/{cfg.teacher.arch}_vanilla/ckpt_epoch_240.pth exists, "
            f"or set teacher.checkpoint=PATH (or torchvision:IMAGENET1K_V1 for the ImageNet ResNets)"
        )
    else:
        load_weights(teacher, source)
    teacher.to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


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
        return self.student.forward_features(images) if self.features else (self.student(images), None)


class TeacherForward(torch.nn.Module):
    """The teacher's forward as the training step reads it: ``(logits, features or None)``."""

    def __init__(self, teacher: torch.nn.Module, features: bool):
        super().__init__()
        self.teacher, self.features = teacher, features

    def forward(self, images):
        return self.teacher.forward_features(images) if self.features else (self.teacher(images), None)


def screen_teacher_output(logits_teacher: torch.Tensor, cfg: KDConfig):
    """(logits safe to feed the losses, 0-dim count of non-finite values) for one batch.

    On the CPU a non-finite output stops at once. On an accelerator a check would stall the
    host every step, so the bad values are zeroed (the losses' own device-side checks would
    otherwise abort the process without a message) and counted on the device; the count is
    read with the progress line, and the run stops there with the teacher's message.
    """
    bad = (~torch.isfinite(logits_teacher)).sum()
    if runtime.checks_on_host(logits_teacher.device):
        if bad.item():
            raise teacher_output_error(cfg)
        return logits_teacher, bad
    return torch.nan_to_num(logits_teacher, nan=0.0, posinf=0.0, neginf=0.0), bad


@torch.no_grad()
def evaluate_topk(
    model: torch.nn.Module, loader, device: torch.device, channels_last: bool = False
) -> Dict[str, float]:
    """Top-1 and top-5 accuracy in percent, fp32, eval mode (the previous mode is restored)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.long, device=device)  # top-1, top-5, seen
    seen = 0  # counted on the host: a count sent to the device per batch would be a blocking copy
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets.unsqueeze(1)
        counts[:2] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        seen += targets.numel()
    model.train(was_training)
    counts[2] = seen
    top1, top5, seen = reduce_sum(counts).tolist()
    return {"top1": 100.0 * top1 / max(seen, 1), "top5": 100.0 * top5 / max(seen, 1)}


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
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        indices = batch[2].to(device, non_blocking=True) if distiller.needs_indices else None
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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
            prior.update(logits_teacher, targets)

        batch_size = targets.numel()
        sums.add(
            batch_size,
            loss=loss.detach().double() * batch_size,
            ce=parts["ce"].double() * batch_size,
            kd=parts["kd"].double() * batch_size,
            correct=(logits_student.detach().argmax(1) == targets).sum(),
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


def train(cfg: KDConfig) -> Dict[str, object]:
    """Runs (or resumes) a whole distillation run; returns what results.json holds."""
    device = prepare_runtime(
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        dist_timeout=cfg.dist_timeout,
    )

    num_classes = data_lib.num_classes(cfg.data.dataset)
    augment = "none" if cfg.data.dataset == "digits" else "basic"
    data_kwargs = dict(
        download=cfg.data.download, verify_checksum=cfg.data.verify_checksum, normalize=cfg.data.normalize
    )
    train_set = data_lib.build_train_set(cfg.data.dataset, cfg.data.root, augment=augment, **data_kwargs)
    if check_distiller(cfg).needs_indices:  # CRD: each sample's row of the memory bank
        train_set = data_lib.WithIndices(train_set)
    val_set = data_lib.build_test_set(cfg.data.dataset, cfg.data.root, **data_kwargs)
    pin = device.type == "cuda"
    shard = dict(rank=rank(), world_size=world_size())  # the training batch is global: each process takes its share
    train_loader = data_lib.make_loader(
        train_set,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        pin_memory=pin,
        **shard,
    )
    # Evaluation deals whole batches to the processes: the counts equal one process's exactly.
    val_loader = data_lib.make_eval_loader(
        val_set, batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers, pin_memory=pin, **shard
    )

    teacher = load_teacher(cfg, num_classes, device)
    student = build_model(cfg.student.arch, num_classes, dataset=cfg.data.dataset).to(device)
    distiller = build_distiller(
        cfg,
        student,
        teacher,
        input_size=resolve(cfg.student.arch, cfg.data.dataset).input_size,
        train_targets=torch.as_tensor(train_set.dataset.targets) if check_distiller(cfg).needs_indices else None,
    ).to(device)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    student = sync_batch_norm(student, cfg.sync_bn, device)
    # The authors' DataParallel splits every forward of the whole distiller (OFD's teacher runs in train mode).
    for module in (student, distiller, teacher):
        if module is not None:
            group_batch_norm(module, cfg.batchnorm_groups, world_size())
    groups = weight_decay_groups(student, cfg.optim.weight_decay)
    if list(distiller.parameters()):  # connectors and the like, with the student's weight decay (mdistiller)
        groups.append({"params": list(distiller.parameters()), "weight_decay": cfg.optim.weight_decay})
    optimizer = sgd(
        groups,
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov,
        implementation=cfg.optim.implementation,
        device=device,
    )
    prior = ClassPrior(num_classes, temperature=distiller.prior_temperature).to(device)

    run = start_run(
        cfg,
        task="knowledge_distillation",
        device=device,
        model=student,
        optimizer=optimizer,
        states={"prior": prior, "distiller": distiller if distiller.has_state() else None},
        best={"top1": -1.0, "epoch": 0},
        optimizer_implementation=cfg.optim.implementation,
        describe=f"student.arch={cfg.student.arch}",
    )
    folder = run.folder

    teacher_accuracy = None
    if teacher is not None and cfg.teacher.report_accuracy:
        teacher_accuracy = evaluate_topk(teacher, val_loader, device, cfg.channels_last)
        log(f"Teacher {cfg.teacher.arch}: top-1 {teacher_accuracy['top1']:.2f}%  top-5 {teacher_accuracy['top5']:.2f}%")
    source = f"{cfg.teacher.arch} -> " if teacher is not None else ""
    log(f"Training {source}{cfg.student.arch} with {cfg.method} on {cfg.data.dataset} ({device}) -> {folder.path}")

    # DDP averages the processes' gradients, of the student and of the distiller's parts.
    network = compile_model(wrap_model(StudentForward(student, distiller), device), cfg.compile)
    teacher_forward = (
        compile_model(TeacherForward(teacher, distiller.needs_features), cfg.compile) if teacher is not None else None
    )
    try:
        for epoch in range(run.start_epoch, cfg.epochs + 1):
            started = time.perf_counter()
            lr = learning_rate(
                epoch,
                base_lr=cfg.optim.lr,
                epochs=cfg.epochs,
                schedule="step",
                warmup_epochs=cfg.optim.warmup_epochs,
                milestones=cfg.optim.milestones,
                decay=cfg.optim.decay,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            data_lib.set_epoch(train_loader, epoch)
            compiling_since = compile_seconds()
            metrics = {
                "lr": lr,
                **train_one_epoch(
                    cfg, distiller, epoch, network, teacher_forward, train_loader, optimizer, prior, device
                ),
            }
            if cfg.compile:
                metrics["compile_seconds"] = compile_seconds() - compiling_since
            prior.step()
            broadcast_buffers_(student)  # rank 0's BatchNorm statistics everywhere: evaluated and saved alike
            broadcast_buffers_(distiller)  # its connectors' statistics too (CRD's memory is the same everywhere)
            if epoch % cfg.eval.every == 0 or epoch == cfg.epochs:
                metrics.update(
                    {f"test_{k}": v for k, v in evaluate_topk(student, val_loader, device, cfg.channels_last).items()}
                )
            metrics["epoch_seconds"] = time.perf_counter() - started
            run.logger.log_epoch(epoch, metrics)
            log(
                f"epoch {epoch}/{cfg.epochs}  lr {lr:.4g}  loss {metrics['train_loss']:.4f}  "
                f"train {metrics['train_acc']:.2f}%"
                + (
                    f"  val top-1 {metrics['test_top1']:.2f}%  top-5 {metrics['test_top5']:.2f}%"
                    if "test_top1" in metrics
                    else ""
                )
                + f"  {metrics['sec_per_iter']:.3f} s/iter (data {metrics['data_sec_per_iter']:.3f})"
            )
            top1 = metric_key("top1")
            if is_main_process() and top1 in metrics and metrics[top1] > run.best["top1"]:
                run.best = {"top1": metrics[top1], "epoch": epoch}
                folder.save({"model": student.state_dict(), "epoch": epoch, "top1": run.best["top1"]}, folder.best)
            if run.end_epoch(epoch):
                return run.stopped(epoch)
    finally:
        run.logger.close()

    last = run.logger.last_record or {}
    results = {
        "run_dir": str(folder.path),
        "epochs": cfg.epochs,
        "teacher": cfg.teacher.arch,
        "student": cfg.student.arch,
        "method": cfg.method,
        "teacher_accuracy": teacher_accuracy,
        "best_epoch": run.best["epoch"],
        "best_" + metric_key("top1"): run.best["top1"],
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
        description="Knowledge distillation with IKL, KD, DKD or a feature distiller (fitnet, at, nst, pkt, kdsvd, "
        "ofd, rkd, vid, sp, crd, reviewkd). Settings: --config FILE, then key=value overrides.",
    )


if __name__ == "__main__":
    sys.exit(main())
