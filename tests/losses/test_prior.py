"""ClassPrior: previous-epoch class means of the tempered softmax."""

import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses import ClassPrior

CLASSES = 4


def class_means_by_loop(batches, temperature):
    """Independent computation: per class, the average of softmax(logits / T) rows."""
    sums = {c: torch.zeros(CLASSES) for c in range(CLASSES)}
    counts = {c: 0 for c in range(CLASSES)}
    for logits, targets in batches:
        for row, target in zip(logits, targets.tolist()):
            exps = torch.exp(row / temperature)
            sums[target] += exps / exps.sum()
            counts[target] += 1
    return {c: sums[c] / counts[c] for c in range(CLASSES) if counts[c]}


def make_batches(seed, targets_per_batch):
    generator = torch.Generator().manual_seed(seed)
    return [
        (3 * torch.randn(len(targets), CLASSES, generator=generator), torch.tensor(targets))
        for targets in targets_per_batch
    ]


def run_epoch(prior, batches):
    for logits, targets in batches:
        prior.update(logits, targets)
    prior.step()


def test_starts_uniform():
    prior = ClassPrior(CLASSES)
    torch.testing.assert_close(prior.rows(torch.tensor([0, 3])), torch.full((2, CLASSES), 1 / CLASSES))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_rows_are_last_epochs_class_means(temperature):
    prior = ClassPrior(CLASSES, temperature=temperature)
    batches = make_batches(0, [[0, 1, 1, 2], [3, 0, 2, 2, 1]])
    for logits, targets in batches:
        prior.update(logits, targets)
    # Within the epoch the rows stay those of the previous epoch.
    torch.testing.assert_close(prior.rows(torch.tensor([1])), torch.full((1, CLASSES), 1 / CLASSES))
    prior.step()
    expected = class_means_by_loop(batches, temperature)
    targets = torch.tensor([2, 0, 3, 1, 2])
    torch.testing.assert_close(prior.rows(targets), torch.stack([expected[c] for c in targets.tolist()]))


def test_each_epoch_starts_from_fresh_sums():
    prior = ClassPrior(CLASSES)
    run_epoch(prior, make_batches(1, [[0, 1, 2, 3]]))
    second = make_batches(2, [[0, 0, 1, 2, 3, 3]])
    run_epoch(prior, second)
    expected = class_means_by_loop(second, 1.0)
    for c in range(CLASSES):
        torch.testing.assert_close(prior.rows(torch.tensor([c]))[0], expected[c])


def test_a_class_without_samples_keeps_its_previous_row():
    prior = ClassPrior(CLASSES)
    first = make_batches(3, [[0, 1, 2, 3, 2]])
    run_epoch(prior, first)
    row_of_class_2 = prior.rows(torch.tensor([2])).clone()
    run_epoch(prior, make_batches(4, [[0, 1, 3, 3]]))  # class 2 absent
    torch.testing.assert_close(prior.rows(torch.tensor([2])), row_of_class_2)
    assert torch.isfinite(prior.prior).all()
    # and a class never seen at all stays uniform
    prior = ClassPrior(CLASSES)
    run_epoch(prior, make_batches(5, [[0, 0, 1]]))
    torch.testing.assert_close(prior.rows(torch.tensor([3])), torch.full((1, CLASSES), 1 / CLASSES))


def test_rows_carry_no_gradient_and_update_ignores_autograd():
    prior = ClassPrior(CLASSES)
    logits = torch.randn(3, CLASSES, requires_grad=True)
    prior.update(logits, torch.tensor([0, 1, 2]))
    prior.step()
    assert not prior.rows(torch.tensor([0, 1])).requires_grad


def test_state_dict_round_trip_mid_epoch_resumes_exactly():
    batches = make_batches(6, [[0, 1, 2], [3, 3, 0], [1, 2, 2]])
    uninterrupted = ClassPrior(CLASSES, temperature=4.0)
    run_epoch(uninterrupted, batches)

    interrupted = ClassPrior(CLASSES, temperature=4.0)
    interrupted.update(*batches[0])
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = ClassPrior(CLASSES, temperature=4.0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for batch in batches[1:]:
        resumed.update(*batch)
    resumed.step()
    torch.testing.assert_close(resumed.prior, uninterrupted.prior, rtol=0, atol=0)


def test_load_state_dict_refuses_a_different_prior():
    state = ClassPrior(CLASSES, temperature=4.0).state_dict()
    with pytest.raises(ValueError, match="for 4 classes, this prior has 10"):
        ClassPrior(10, temperature=4.0).load_state_dict(state)
    with pytest.raises(ValueError, match="temperature 4.0"):
        ClassPrior(CLASSES, temperature=1.0).load_state_dict(state)
    with pytest.raises(ValueError, match="must have keys"):
        ClassPrior(CLASSES).load_state_dict({"prior": torch.zeros(CLASSES, CLASSES)})
    for name, bad in (("prior", float("nan")), ("sums", -1.0), ("counts", float("inf"))):
        damaged = ClassPrior(CLASSES, temperature=4.0).state_dict()
        damaged[name][0] = bad  # rows that would reach the losses as NaN or negative weights
        with pytest.raises(ValueError, match=f"holds {name} that are NaN, infinite or negative"):
            ClassPrior(CLASSES, temperature=4.0).load_state_dict(damaged)


def test_bad_update_arguments():
    prior = ClassPrior(CLASSES)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        prior.update(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\]"):
        prior.update(torch.randn(2, CLASSES), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ClassPrior(0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        ClassPrior(CLASSES, temperature=0)


def _distributed_worker(rank, world_size, init_file, batches_per_rank, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        prior = ClassPrior(CLASSES, temperature=2.0)
        run_epoch(prior, batches_per_rank[rank])
        gathered = [torch.zeros_like(prior.prior) for _ in range(world_size)]
        dist.all_gather(gathered, prior.prior)
        if rank == 0:
            torch.save(torch.stack(gathered), result_file)
    finally:
        dist.destroy_process_group()


def test_distributed_step_averages_over_all_ranks(tmp_path):
    # Rank 1 alone never sees class 3; after the all-reduce both ranks hold the global means.
    batches_per_rank = [make_batches(7, [[0, 1, 3], [2, 3]]), make_batches(8, [[0, 0, 1, 2]])]
    result_file = tmp_path / "prior.pt"
    mp.spawn(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), batches_per_rank, str(result_file)),
        nprocs=2,
        join=True,
    )
    expected = class_means_by_loop(batches_per_rank[0] + batches_per_rank[1], 2.0)
    per_rank = torch.load(result_file, weights_only=True)
    torch.testing.assert_close(per_rank[1], per_rank[0], rtol=0, atol=0)
    for c in range(CLASSES):
        torch.testing.assert_close(per_rank[0][c], expected[c])
