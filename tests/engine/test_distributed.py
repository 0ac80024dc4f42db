"""engine.distributed helpers with two real gloo processes."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import all_reduce_mean_, broadcast_buffers_, global_batch_share, local_gpu_index, wrap_model
from engine.errors import UserError


def _broadcast_worker(rank, init_file, result_folder):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        with torch.no_grad():
            for module in (model[0], model[2]):
                module.running_mean.fill_(rank + 1.0)
                module.running_var.fill_(10.0 * (rank + 1))
                module.num_batches_tracked.fill_(100 * (rank + 1))
                module.weight.fill_(float(rank))
        collectives = []
        real_broadcast = dist.broadcast
        dist.broadcast = lambda tensor, src: (collectives.append("broadcast"), real_broadcast(tensor, src))[1]
        try:
            broadcast_buffers_(model)
        finally:
            dist.broadcast = real_broadcast
        torch.save(model.state_dict(), f"{result_folder}/rank{rank}.pt")
        torch.save(
            {
                "broadcasts": len(collectives),
                "share": global_batch_share(3, 5),
                "ddp_broadcasts_buffers": wrap_model(model, torch.device("cpu")).broadcast_buffers,
            },
            f"{result_folder}/facts{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_broadcast_buffers_gives_every_process_rank_0s_buffers_and_leaves_parameters(tmp_path):
    mp.spawn(_broadcast_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for layer, width in (("0", 3), ("2", 2)):
            assert state[f"{layer}.running_mean"].tolist() == [1.0] * width
            assert state[f"{layer}.running_var"].tolist() == [10.0] * width
            assert state[f"{layer}.num_batches_tracked"].item() == 100
            assert state[f"{layer}.weight"].tolist() == [float(rank)] * width  # parameters are not buffers
        facts = torch.load(tmp_path / f"facts{rank}.pt", weights_only=True)
        assert facts["broadcasts"] == 2  # one per dtype (float32 statistics, int64 counters), not per buffer
        assert facts["share"] == 3 * 2 / 5  # this process's 3 images of a global batch of 5, known on the host
        assert facts["ddp_broadcasts_buffers"] is False  # ours, before each attack, is the only broadcast


def test_broadcast_buffers_does_nothing_in_one_process():
    model = torch.nn.BatchNorm1d(2)
    model.running_mean.fill_(3.0)
    broadcast_buffers_(model)
    assert model.running_mean.tolist() == [3.0, 3.0]


def _mean_worker(rank, init_file, result_folder):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        tensors = [
            torch.full((3,), float(rank)),
            torch.full((2, 2), 10.0 * rank),
            torch.full((1,), rank + 0.5),
            torch.full((4,), float(rank), dtype=torch.float64),
        ]
        calls = []
        real_all_reduce = dist.all_reduce
        dist.all_reduce = lambda tensor, *args, **kwargs: (
            calls.append(tensor.numel()),
            real_all_reduce(tensor, *args, **kwargs),
        )[1]
        try:
            all_reduce_mean_(tensors)
        finally:
            dist.all_reduce = real_all_reduce
        torch.save({"tensors": tensors, "calls": calls}, f"{result_folder}/mean{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_mean_averages_every_tensor_with_one_collective_per_dtype(tmp_path):
    mp.spawn(_mean_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"mean{rank}.pt", weights_only=True)
        assert sorted(result["calls"]) == [4, 8]  # float32 (3 + 4 + 1 numbers) and float64, not four calls
        first, second, third, fourth = result["tensors"]
        assert first.tolist() == [0.5] * 3 and second.tolist() == [[5.0, 5.0], [5.0, 5.0]]
        assert third.tolist() == [1.0] and fourth.dtype == torch.float64 and fourth.tolist() == [0.5] * 4


def test_each_process_takes_its_gpu_among_those_it_sees():
    assert [local_gpu_index(rank, 8) for rank in range(8)] == list(range(8))  # torchrun on one 8-GPU node
    assert [local_gpu_index(rank, 1) for rank in range(4)] == [0, 0, 0, 0]  # a scheduler gives each its own GPU
    with pytest.raises(UserError, match="LOCAL_RANK 2 but this node's processes see 2 GPUs: two processes"):
        local_gpu_index(2, 2)  # more processes than GPUs: NCCL would fail later on a duplicate GPU
    with pytest.raises(UserError, match="sees no GPU"):
        local_gpu_index(0, 0)
