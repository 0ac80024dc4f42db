"""Timing shared by the benchmarks."""

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from engine.environment import compile_seconds, configure_precision


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


def interleaved_medians(
    runners: Dict[str, Callable[[], float]], repeats: int
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Each runner once to warm up (allocator, cuDNN autotuning, compilation), then ``repeats``
    rounds of all of them in turn (A, B, C, A, B, C, ...): the median seconds of each, and the
    seconds torch.compile spent in each warm-up."""
    compiling = {}
    for name, run in runners.items():
        before = compile_seconds()
        run()
        compiling[name] = compile_seconds() - before
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}, compiling
