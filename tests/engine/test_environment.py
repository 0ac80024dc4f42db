"""engine.environment on the CPU: RNG states wherever their tensors lie, the run's own GPU state,
deterministic mode, precision flags; engine.cli's line for an operation deterministic mode refuses.

Tensors "on another device" are put on torch's lazy device (its TorchScript backend ships
with every build): like a CUDA tensor, it cannot be read by NumPy, which is how a resume on
a GPU used to crash.
"""

import random

import numpy as np
import pytest
import torch

from engine import environment
from engine.cli import nondeterminism_reason
from engine.ema import EpochAverage


@pytest.fixture(scope="module")
def other_device():
    try:
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        device = torch.zeros(1, device="lazy").device  # lazy:0
        torch.zeros(1, device=device).cpu()
    except Exception as error:  # a torch without the lazy backend: nothing to put tensors on
        pytest.skip(f"no second device on this CPU build ({type(error).__name__}: {error})")
    with pytest.raises(TypeError, match="to numpy"):
        torch.zeros(1, device=device).numpy()  # the very failure of a CUDA tensor
    return device


def test_rng_states_whose_tensors_lie_on_another_device_are_restored(other_device):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = environment.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    name, keys, position, has_gauss, cached = state["numpy"]
    moved = dict(
        state, torch=state["torch"].to(other_device), numpy=(name, keys.to(other_device), position, has_gauss, cached)
    )
    environment.restore_rng_state(moved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_an_epoch_average_read_onto_the_cpu_follows_the_weights_to_their_device(other_device):
    average = EpochAverage(0.5)
    average.load_state_dict({"tau": 0.5, "average": {"w": torch.ones(3), "steps": torch.tensor(4)}})
    average.add({"w": torch.zeros(3, device=other_device), "steps": torch.tensor(5, device=other_device)})
    assert average.average["w"].device == other_device
    assert average.average["w"].cpu().tolist() == [0.5, 0.5, 0.5] and average.average["steps"].cpu().item() == 5


class FakeCuda:
    """torch.cuda's RNG functions for a machine with ``count`` GPUs whose current one is ``current``."""

    def __init__(self, monkeypatch, count: int, current: int):
        self.states = {index: torch.full((4,), index, dtype=torch.uint8) for index in range(count)}
        self.current = current
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.current].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states.values()])

    def set_rng_state(self, state, device="cuda"):
        assert state.device.type == "cpu"
        self.states[self.current] = state.clone()


def test_last_pt_keeps_the_state_of_the_runs_own_gpu_only(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=8, current=5)  # process 5 of an eight-GPU node
    state = environment.capture_rng_state()
    assert torch.equal(state["cuda"], torch.full((4,), 5, dtype=torch.uint8))

    cuda.states = {0: torch.zeros(4, dtype=torch.uint8)}  # resumed where the process sees one GPU
    cuda.current = 0
    environment.restore_rng_state(state)
    assert torch.equal(cuda.states[0], torch.full((4,), 5, dtype=torch.uint8))


def test_a_last_pt_of_every_visible_gpu_restores_the_current_ones_state(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=1, current=0)
    saved_by_eight = {
        **environment.capture_rng_state(),
        "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(8)],
    }
    environment.restore_rng_state(saved_by_eight)  # the earlier format: set_rng_state_all raised IndexError here
    assert torch.equal(cuda.states[0], torch.zeros(4, dtype=torch.uint8))
    cuda.states, cuda.current = {3: torch.zeros(4, dtype=torch.uint8)}, 3
    environment.restore_rng_state(saved_by_eight)
    assert torch.equal(cuda.states[3], torch.full((4,), 3, dtype=torch.uint8))


def test_a_cpu_run_records_no_gpu_state():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA is in use in this process")
    assert "cuda" not in environment.capture_rng_state()


def test_deterministic_mode_sets_the_cublas_workspace_and_refuses_instead_of_warning(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        environment.seed_everything(0, deterministic=True)
        assert environment.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(RuntimeError) as refused:
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))  # no deterministic kernel, CPU or not
        assert nondeterminism_reason(refused.value) == (
            "put_ (an operation of this run) has no deterministic implementation in torch"
        )
    finally:
        environment.seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    environment.deterministic_cublas()
    assert environment.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's choice stays
    assert nondeterminism_reason(RuntimeError("CUDA out of memory")) is None


def test_tf32_is_on_for_tf32_and_bf16_runs_and_off_for_fp32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for precision, tf32 in (("fp32", False), ("tf32", True), ("bf16", True)):
            environment.configure_precision(precision)
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_value_checks_are_made_on_the_host_for_the_cpu_only():
    assert environment.checks_on_host(torch.device("cpu"))
    assert not environment.checks_on_host(torch.device("cuda", 0))
    assert not environment.checks_on_host(torch.device("meta"))


@pytest.mark.parametrize("asked, expected", [("auto", 0), ("cuda", 0), ("cuda:1", 1)])
def test_a_cuda_run_names_its_gpu_and_makes_it_the_current_one(asked, expected, monkeypatch):
    """torch.cuda.set_device refuses a device without an index ("cuda", what auto gives): it is named first."""
    from torch.cuda._utils import _get_device_index

    made_current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: made_current.append(_get_device_index(device)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    try:
        device = environment.prepare_runtime(device=asked, precision="fp32", seed=0, deterministic=False)
    finally:
        environment.configure_precision("fp32")
    assert device == torch.device("cuda", expected) and made_current == [expected]
