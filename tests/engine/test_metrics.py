"""RunningSums: named device-side totals, one host read, summed across processes."""

import multiprocessing

import pytest
import torch
import torch.distributed as dist

from engine.metrics import RunningSums


def test_totals_by_name_equal_the_plain_sums():
    sums = RunningSums(("loss", "correct"), torch.device("cpu"))
    batches = [(4, 0.5, 3), (2, 1.25, 1), (3, 0.0, 3)]
    for size, mean_loss, correct in batches:
        sums.add(size, loss=torch.tensor(mean_loss).double() * size, correct=torch.tensor(correct))
    totals = sums.totals()
    assert totals == {"loss": 4 * 0.5 + 2 * 1.25 + 0.0, "correct": 7.0, "count": 9}
    assert totals == sums.totals(across_processes=True)  # one process: the same numbers


def test_every_add_names_every_sum():
    sums = RunningSums(("loss", "correct"), torch.device("cpu"))
    with pytest.raises(ValueError, match="exactly"):
        sums.add(1, loss=torch.tensor(1.0))
    with pytest.raises(ValueError, match="count"):
        RunningSums(("loss", "count"), torch.device("cpu"))


def test_adding_does_not_read_the_device(monkeypatch):
    """Adding builds on the device; only totals() transfers (one .tolist() for every name)."""
    sums = RunningSums(("a", "b", "c"), torch.device("cpu"))
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or 0.0)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or real_tolist(self))
    for _ in range(5):
        sums.add(2, a=torch.tensor(1.0), b=torch.tensor(2.0), c=torch.tensor(3.0))
    assert reads == []
    assert sums.totals() == {"a": 5.0, "b": 10.0, "c": 15.0, "count": 10}
    assert reads == ["tolist"]


def _worker(rank, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sums = RunningSums(("loss",), torch.device("cpu"))
        sums.add(rank + 1, loss=torch.tensor(10.0 * (rank + 1)))
        queue.put((rank, sums.totals(), sums.totals(across_processes=True)))
    finally:
        dist.destroy_process_group()


def test_totals_across_processes_sum_every_rank(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, str(tmp_path / "init"), queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [local for _, local, _ in results] == [{"loss": 10.0, "count": 1}, {"loss": 20.0, "count": 2}]
    assert all(total == {"loss": 30.0, "count": 3.0} for _, _, total in results)
