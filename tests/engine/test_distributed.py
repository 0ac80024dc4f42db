"""engine.distributed helpers with two real gloo processes."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import broadcast_buffers_


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
        broadcast_buffers_(model)
        torch.save(model.state_dict(), f"{result_folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_broadcast_buffers_gives_every_process_rank_0s_buffers_and_leaves_parameters(tmp_path):
    mp.spawn(_broadcast_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for layer, width in (("0", 3), ("2", 2)):
            assert state[f"{layer}.running_mean"].tolist() == [1.0] * width
            assert state[f"{layer}.running_var"].tolist() == [10.0] * width
            assert state[f"{layer}.num_batches_tracked"].item() == 100
            assert state[f"{layer}.weight"].tolist() == [float(rank)] * width  # parameters are not buffers


def test_broadcast_buffers_does_nothing_in_one_process():
    model = torch.nn.BatchNorm1d(2)
    model.running_mean.fill_(3.0)
    broadcast_buffers_(model)
    assert model.running_mean.tolist() == [3.0, 3.0]
