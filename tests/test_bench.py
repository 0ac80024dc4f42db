"""The benchmarks' baselines do the work they claim to (the timings themselves are not tested)."""
import importlib.util
from argparse import Namespace
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_authors_loop_baseline_trains_the_same_weights_as_our_loop():
    at_step = load("at_step")
    # One iteration: from the second on, a weight differing in the last bit can flip an attack's
    # sign step and the runs drift apart by design.
    args = Namespace(arch="WideResNet", depth=10, widen_factor=1, batch_size=8, iterations=1, channels_last=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = at_step.our_iterations("ikl", args, "fp32", torch.device("cpu"))
        ours()
        theirs = at_step.authors_iterations(args, "fp32", torch.device("cpu"))
        theirs()
    finally:
        torch.set_num_threads(threads)
    # same seed, same start noise, same attack, AWP and step (closed-form vs pairwise wMSE differ in the last bits)
    before = at_step._setup(args, "fp32", torch.device("cpu"))[0].state_dict()
    for name, value in ours.model.state_dict().items():
        torch.testing.assert_close(theirs.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(before[name], value) for name, value in ours.model.state_dict().items())
