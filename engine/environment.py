"""The process's execution environment, set in one place for every run: device, precision, seeds and
random-number state, determinism, torch.compile, and the record of versions and hardware that
environment.json holds (`environment_info`)."""

import contextlib
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from .distributed import init_distributed, rank
from .errors import UserError

RANK_SEED_STRIDE = 1_000_003  # a prime: the seeds of (seed, rank) pairs do not collide for small seeds


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """The only place that seeds Python, NumPy and torch (all devices).

    ``deterministic`` also asks for deterministic kernels, which a bit-exact resume on a
    GPU needs (on the CPU the default kernels are already deterministic): cuDNN's
    deterministic algorithms, cuBLAS's fixed workspace (`deterministic_cublas`, which must
    come before the first matrix product) and ``torch.use_deterministic_algorithms``, which
    then raises on an operation that has no deterministic kernel instead of warning (the
    training entry points turn that error into one line that names the operation).
    """
    if deterministic:
        deterministic_cublas()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


CUBLAS_WORKSPACE = ":4096:8"  # NVIDIA's setting for reproducible cuBLAS results (CUDA 10.2 and later)


def deterministic_cublas() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG unless the user has, before this process's first matrix product.

    Without it cuBLAS may reduce a product differently from one call to the next, and
    ``torch.use_deterministic_algorithms`` refuses every CUDA matrix product. torch reads the
    variable once per process, at its first CUDA matrix product (and keeps that answer), which
    nothing in `prepare_runtime` does before `seed_everything` calls this; a process that ran
    CUDA products before cannot become deterministic.
    A value of the user's that is not deterministic is left alone: torch then refuses the
    first product, which the entry points report in one line.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def prepare_runtime(
    *, device: str, precision: str, seed: int, deterministic: bool, dist_timeout: float = 1800.0
) -> torch.device:
    """What every training run does first: pick the device, join torchrun's process group when
    started by torchrun, set precision flags, seed everything.

    Process r is seeded with ``seed + RANK_SEED_STRIDE * r``, so that processes draw different
    attack starts (rank 0, and so a one-process run, keeps ``seed``). Their models still start
    identical: DistributedDataParallel copies rank 0's weights to every process.
    """
    resolved = init_distributed(resolve_device(device), dist_timeout)
    if resolved.type == "cuda":
        if resolved.index is None:  # "cuda" (and auto): the current GPU, named, as set_device needs
            resolved = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(resolved)  # the device whose RNG state last.pt keeps (`capture_rng_state`)
    configure_precision(precision)
    seed_everything(seed + RANK_SEED_STRIDE * rank(), deterministic)
    return resolved


def prepare_run_runtime(cfg) -> torch.device:
    """`prepare_runtime` with a run config's knobs (device, precision, seed, deterministic, dist_timeout)."""
    return prepare_runtime(
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        dist_timeout=cfg.dist_timeout,
    )


def sync_batch_norm(model: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """BatchNorm statistics over the global batch (SyncBatchNorm) when ``enabled`` and several
    processes train; else per process, which is what the reference's DataParallel computes."""
    if not enabled or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return model
    if device.type != "cuda":
        raise UserError("sync_bn=true needs CUDA (SyncBatchNorm runs on GPUs only); use sync_bn=false on the CPU")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}' is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available here; use device=cpu or device=auto")
    return device


def configure_precision(precision: str) -> None:
    """TF32 matmuls and convolutions for ``tf32`` and ``bf16`` (whose autocast regions, applied
    by `autocast`, compute in bf16: what runs outside them, the float32 stem and head, the
    monitor, uses TF32); strict float32 for ``fp32``."""
    allow_tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``bf16``, nothing otherwise (fp32 and tf32 run in float32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def checks_on_host(device: torch.device) -> bool:
    """Whether a value check on tensors of ``device`` (a NaN, a sign, a label range) is made at
    once on the host: on the CPU, yes. On an accelerator, reading a value stalls the host until
    the device catches up, and a device-side assert (``torch._assert_async``) kills the CUDA
    context, so nothing, not even last.pt, could be saved afterwards: there, checks turn a bad
    value into a NaN result instead, which the training loops' non-finite stop reports in one
    line with last.pt intact. (A test may replace this function to take the accelerator path
    on the CPU.)"""
    return torch.device(device).type == "cpu"


def compile_model(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when ``enabled`` (sharing its weights: checkpoints, averages and
    evaluation keep using ``module``), else ``module`` itself. Shapes are static: a batch of
    another size would compile again, so the loops run such a batch through `eager`."""
    return torch.compile(module, dynamic=False) if enabled else module


def eager(module: torch.nn.Module) -> torch.nn.Module:
    """The module a `compile_model` result wraps (the module itself when not compiled)."""
    return getattr(module, "_orig_mod", module)


def compile_seconds() -> float:
    """Wall-clock seconds torch.compile has spent in this process so far (0 before any compile)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        spent = calculate_time_spent()
    except (ImportError, AttributeError):  # a torch without the counter: compile time goes unreported
        return 0.0
    if "total_wall_time" in spent:
        return float(spent["total_wall_time"])
    return float(spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0))


def capture_rng_state() -> Dict[str, Any]:
    """Python's, NumPy's and torch's RNG states, and the state of this process's own GPU
    (``cuda``) when the run uses one: the other GPUs of the machine are not the run's, and a
    resume may see fewer of them (another CUDA_VISIBLE_DEVICES, one GPU of an eight-GPU node)."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_data(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: `prepare_runtime` made it the run's
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Put back what `capture_rng_state` saved, wherever ``torch.load`` placed its tensors.

    ``cuda`` is restored into the current device when this process uses CUDA. last.pt files
    written before this held every visible GPU's state as a list: the current device's entry
    is taken (the run's own GPU then had the index its process has now).
    """
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_as_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    saved = state.get("cuda")
    if saved is None or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    if isinstance(saved, (list, tuple)):
        index = torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved.cpu())


def _as_python_state(state):
    # weights_only checkpoints return lists where random.getstate() gave tuples
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _numpy_state_as_data(state):
    # weights_only loading refuses NumPy arrays, so the key array travels as a tensor
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _as_numpy_state(state):
    name, keys, pos, has_gauss, cached = state
    return (name, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))


def environment_info() -> Dict[str, Any]:
    """Versions and hardware, recorded in every run folder."""
    import torchvision

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
    return info


def _git_commit():
    try:
        root = Path(__file__).resolve().parents[1]
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
