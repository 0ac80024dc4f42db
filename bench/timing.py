"""Timing shared by the benchmarks."""
import time

import torch

from engine.runtime import configure_precision


def timed(device: torch.device, iterations: int, body, precision: str):
    """A function that runs ``body()`` at ``precision`` and returns seconds per iteration, the
    GPU's queue drained before and after. The precision flags are process-wide, so each timed
    function sets its own: the benchmarks interleave runners of several precisions."""
    def run():
        configure_precision(precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        body()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / iterations

    return run
