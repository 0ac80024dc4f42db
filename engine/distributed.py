"""What the training loops need to know about ``torch.distributed`` (single process when not started).

Runs start under ``torchrun`` (``python -m torch.distributed.run``), which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` joins that process
group (nccl on CUDA, gloo on the CPU) and does nothing in a plain ``python`` run. Everything
that crosses samples goes through these helpers or through `ClassPrior`, so the loops stay
the same in one process and in many.
"""

import datetime
import inspect
import os
import signal
import sys
from typing import Any, Iterable, List, Optional

import torch
import torch.distributed as dist

from .errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Only rank 0 writes files and prints progress."""
    return not is_distributed() or dist.get_rank() == 0


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def log(message: str) -> None:
    """Progress lines for people: printed once, by rank 0."""
    if is_main_process():
        print(message, flush=True)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (the tensor itself when not distributed)."""
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def gather_objects(obj: Any) -> List[Any]:
    """``obj`` of every process, by rank (``[obj]`` when not distributed); every process must call it."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself when not distributed); every process must call it."""
    if not is_distributed():
        return obj
    holder = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_rows(tensor: torch.Tensor, sizes: Optional[List[int]] = None) -> torch.Tensor:
    """The rows of ``tensor`` of every process, concatenated in rank order (the tensor itself when not
    distributed); the processes' row counts may differ (the shares of a last, smaller batch). Pass
    them as ``sizes`` when the host knows them: else they are gathered first, which waits for the GPU."""
    if not is_distributed():
        return tensor
    if sizes is None:
        counts = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
        dist.all_gather(counts, torch.tensor([tensor.shape[0]], device=tensor.device))
        sizes = [int(count) for count in counts]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:size] for rows, size in zip(gathered, sizes)])


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its mean over all processes, in place (nothing when not distributed).

    One all-reduce per dtype of a flat copy of all of them (AWP's proxy gradients are 100+
    tensors: one collective each would cost more than the data)."""
    if not is_distributed():
        return

    def mean_(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat.div_(dist.get_world_size())

    _flat_collective_(list(tensors), mean_)


def _flat_collective_(tensors: List[torch.Tensor], collective) -> None:
    """Apply ``collective`` (in place) to one flat concatenation of ``tensors`` per dtype, then
    copy the results back into the tensors."""
    by_dtype = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
        collective(flat)
        for tensor, value in zip(group, flat.split([tensor.numel() for tensor in group])):
            tensor.copy_(value.view_as(tensor))


def broadcast_buffers_(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every process's ``module``.

    Parameters stay equal across processes by themselves (DDP averages the gradients), but
    each process's BatchNorm layers update their running statistics with its own share of
    the batch. The trainers make rank 0's the statistics of all, as DataParallel's replicas
    all use device 0's: before each attack (it runs in eval mode, on those statistics) and
    at the end of every epoch, so that evaluation, the averages and a resumed run see one
    model. One broadcast per dtype; nothing when not distributed.
    """
    if not is_distributed():
        return
    _flat_collective_(list(module.buffers()), lambda flat: dist.broadcast(flat, src=0))


def init_distributed(device: torch.device, timeout_seconds: float) -> torch.device:
    """Join torchrun's process group when WORLD_SIZE > 1; return this process's device.

    On CUDA each process takes the GPU of its LOCAL_RANK (`local_gpu_index`). A process that dies makes the
    others fail at their next collective within ``timeout_seconds`` instead of waiting forever
    (torchrun also stops the others when one exits with an error).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device(
            "cuda", local_gpu_index(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count())
        )
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    stop_with_the_launcher()
    _import_before_the_group()
    try:
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=timeout_seconds),
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as error:
        raise UserError(
            f"could not join the {backend} process group that torchrun describes "
            f"(RANK {os.environ.get('RANK')}, WORLD_SIZE {os.environ.get('WORLD_SIZE')}, MASTER "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {error}"
        ) from None
    return device


def stop_with_the_launcher() -> None:
    """Under torchrun, end this worker when its launcher dies (Linux; elsewhere nothing).

    torchrun starts each worker in a session of its own, so a launcher killed outright (SIGKILL, or a
    job scheduler's kill of that one process) leaves its workers running: they would go on training or
    attacking and keep writing last.pt, the AutoAttack state and the logs of a run the user believes
    stopped, racing the rerun that resumes it. The kernel sends this process SIGTERM when its parent,
    the launcher, exits (prctl PR_SET_PDEATHSIG); a launcher already gone before this call ends it at once.
    Every file is written atomically, so the run folder keeps the last complete epoch or round."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    launcher = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher or launcher == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _import_before_the_group() -> None:
    """Import what would otherwise keep the process group alive after `shutdown_distributed`.

    torch.distributed.nn.functional's collectives take ``group=group.WORLD`` as a default
    argument, evaluated when the module is first imported; DistributedDataParallel imports it
    (through torch.distributed._shard) at its first construction. Imported once the group
    exists, those ten defaults hold the group object: destroy_process_group then cannot free
    it, and gloo's worker threads outlive it. At the interpreter's exit a worker that drops the
    last collective's work (the final barrier's) needs the GIL of a finalizing interpreter,
    is made to exit inside a destructor, and aborts the process after a finished run
    ("terminate called without an active exception", SIGABRT). Imported before, the defaults
    are None (the default group at call time) and the group ends in destroy_process_group,
    which joins its threads.
    """
    import torch.distributed.nn.functional  # noqa: F401


def local_gpu_index(local_rank: int, visible_gpus: int) -> int:
    """The index of this process's GPU among the visible ones: LOCAL_RANK where the process sees
    every GPU of its node (torchrun's usual case), and its one GPU where a scheduler gives each
    process its own CUDA_VISIBLE_DEVICES (SLURM, Kubernetes): ``LOCAL_RANK mod visible``."""
    if visible_gpus < 1:
        raise UserError(
            "this process sees no GPU (CUDA_VISIBLE_DEVICES is empty?); give every process one GPU or use device=cpu"
        )
    if visible_gpus > 1 and local_rank >= visible_gpus:
        raise UserError(
            f"LOCAL_RANK {local_rank} but this node's processes see {visible_gpus} GPUs: two processes "
            f"would share one; start at most {visible_gpus} processes per node (NPROC / "
            f"--nproc_per_node), or give each process its own GPU with CUDA_VISIBLE_DEVICES"
        )
    return local_rank % visible_gpus


def shutdown_distributed(*, all_finished: bool = False) -> None:
    """Leave the process group. ``all_finished``: every process got here the same way (the run
    ended normally), so they first wait for each other; a process that tears down its gloo
    connections while a peer still uses them can abort ("terminate called without an active
    exception"). After an error no process waits: a peer may be gone. The group, and gloo's
    threads with it, end here only if nothing else holds it (`_import_before_the_group`)."""
    if is_distributed():
        if all_finished:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel when several processes train, else ``model`` itself.

    Only the training forwards go through the wrapper (it averages the gradients); attacks,
    evaluation, AWP's proxy and the averages use the plain module (`unwrap`). DDP's own
    broadcast of the buffers at every forward is off: the trainers broadcast rank 0's
    BatchNorm statistics themselves where they are read (`broadcast_buffers_`, before each
    attack and at the end of every epoch), which is all that the eval-mode parts see, and
    train-mode forwards normalise with the batch's statistics, not the running ones.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    # torch 2.13 renamed broadcast_buffers (deprecated, and False also skips the initial sync)
    # to forward_sync_buffers; the requirements admit torch 2.11 and 2.12, which have only the old name.
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_forward_sync = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **no_forward_sync)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile's wrapper and DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, DistributedDataParallel) else model


def global_batch_share(local_size: int, global_size: int) -> Optional[float]:
    """The factor that makes DDP's average of per-process batch means the mean over the global batch.

    DDP averages gradients over processes; when a global batch is split unevenly (its last
    batch), process r's mean must count n_r * world_size / N times. The factor is exactly 1
    for even splits. None when not distributed. Both sizes are known on the host (the
    samplers' `engine.data.global_batch_sizes`), so this costs no collective and no copy.
    """
    if not is_distributed():
        return None
    return local_size * dist.get_world_size() / global_size
