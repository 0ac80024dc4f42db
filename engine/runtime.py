"""Seeds, devices, precision and random-number state: set in one place for every run."""
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
    GPU needs; on the CPU the default kernels are already deterministic.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def prepare_runtime(*, device: str, precision: str, seed: int, deterministic: bool,
                    dist_timeout: float = 1800.0) -> torch.device:
    """What every training run does first: pick the device, join torchrun's process group when
    started by torchrun, set precision flags, seed everything.

    Process r is seeded with ``seed + RANK_SEED_STRIDE * r``, so that processes draw different
    attack starts (rank 0, and so a one-process run, keeps ``seed``). Their models still start
    identical: DistributedDataParallel copies rank 0's weights to every process.
    """
    resolved = init_distributed(resolve_device(device), dist_timeout)
    configure_precision(precision)
    seed_everything(seed + RANK_SEED_STRIDE * rank(), deterministic)
    return resolved


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
    """TF32 matmuls and convolutions for ``tf32``; bf16 is applied per region by `autocast`."""
    allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``bf16``, nothing otherwise (fp32 and tf32 run in float32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_data(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(_as_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
    return (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))


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
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return result.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
