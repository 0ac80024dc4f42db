"""What the training loops need to know about ``torch.distributed`` (single process when not initialised).

Everything that crosses samples goes through these helpers or through `ClassPrior`,
so running under torchrun only adds process-group set-up and a DistributedSampler.
"""
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Only rank 0 writes files and prints progress."""
    return not is_distributed() or dist.get_rank() == 0


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
