"""Several processes (torchrun, gloo on the CPU) train what one process trains, batch for batch.

The comparisons use digits_cnn_plain, a model without BatchNorm: per-process BatchNorm
statistics (the reference's DataParallel semantics) legitimately differ from one process's,
and SyncBatchNorm needs CUDA. Attacks start from the clean image (attack.random_start=none):
random starts are drawn per process. And the comparison attacks with no step (x_adv = x): a
sign step flips where a gradient component is within rounding of zero, and the summation
order of two processes differs from one's in the last bits, so attacked runs drift apart
by design; the attack itself runs under torchrun in the other tests. Everything else (AWP, EMA, the class prior, the epoch
average, an uneven last batch of 1,347 images in global batches of 128) is as in training.
Evaluation, by contrast, is exact: the same model evaluated by three processes gives one
process's clean, PGD and top-k numbers to the last digit.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.file_io import load_file

ROOT = Path(__file__).resolve().parents[2]
AT_DIGITS = str(ROOT / "configs" / "adv_training" / "digits_ikl.yaml")
KD_DIGITS = str(ROOT / "configs" / "knowledge_distillation" / "digits_ikl.yaml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(module, args, nproc, *, timeout=600, torchrun_args=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1 and not torchrun_args:
        command = [sys.executable, "-m", module, *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            *torchrun_args,
            *([] if torchrun_args else [f"--master_port={free_port()}"]),
            "-m",
            module,
            *args,
        ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def at_args(out_dir, name, *extra):
    return [
        "--config",
        AT_DIGITS,
        "epochs=2",
        "model.arch=digits_cnn_plain",
        "attack.random_start=none",
        "awp.enabled=true",
        "awp.warmup=1",
        "ema.enabled=true",
        "ema.start_epoch=1",
        "eval.every=2",
        "eval.pgd_steps=0",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        *extra,
    ]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one, two, state_keys, metric_keys):
    a, b = load_file(Path(one) / "last.pt"), load_file(Path(two) / "last.pt")
    for key in state_keys:
        first, second = (a[key], b[key]) if key != "prior" else (a[key]["prior"], b[key]["prior"])
        if isinstance(first, dict):
            first = first.get("module", first.get("average", first))
            second = second.get("module", second.get("average", second))
            for name in first:
                torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
        else:
            torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-6, msg=key)
    for m1, m2 in zip(metrics(one), metrics(two), strict=True):
        for key in metric_keys:
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-4), key


EXACT = ("attack.budget=fixed", "attack.steps=0")


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory):
    """The same IKL-AT run (attacks with no step) trained by one process ("one") and by two ("two")."""
    out = tmp_path_factory.mktemp("exact")
    one = launch("adv_training.train", at_args(out, "one", *EXACT), 1)
    assert one.returncode == 0, one.stderr
    two = launch("adv_training.train", at_args(out, "two", *EXACT), 2)
    assert two.returncode == 0, two.stderr
    return out


@pytest.mark.slow
def test_ikl_at_with_two_processes_equals_one_process(exact_runs):
    assert_same_run(
        exact_runs / "one",
        exact_runs / "two",
        ("model", "ema", "epoch_average", "prior"),
        ("train_loss", "train_loss_natural", "train_loss_robust", "train_adv_acc", "lr"),
    )
    assert metrics(exact_runs / "two")[-1]["test_clean_acc"] == metrics(exact_runs / "one")[-1]["test_clean_acc"]
    assert load_file(exact_runs / "two" / "last.pt")["world_size"] == 2
    # only rank 0 wrote files: one metrics line per epoch, one results.json
    assert [m["epoch"] for m in metrics(exact_runs / "two")] == [1, 2]


@pytest.mark.slow
def test_four_batchnorm_groups_train_one_model_on_one_two_and_four_processes(tmp_path):
    """The authors' 4-GPU DataParallel BatchNorm (batchnorm_groups=4), in a model with BatchNorm:
    one process with 4 groups trains what 4 processes of one group each train, weights and running
    statistics, over 2 epochs of TRADES (and the EMA); AWP's proxy step too, with 2 processes of 2
    groups. (Without the groups, one process would normalise all 128 images at once and train another
    model than four processes of 32: the comparison fails when the groups do nothing.)

    The long run leaves AWP off, and uses TRADES rather than IKL: on this tiny problem AWP's
    per-layer rescaling, and IKL's soft-label term (whose gradient is zero here up to rounding, as
    x_adv = x), turn last-bit differences of the kernels into 1e-4..1e-2 within a few steps (an lr
    changed by 1e-7 moves AWP's weights by 1e-2), so AWP is compared over one step."""
    grouped = ("model.arch=digits_cnn", "batchnorm_groups=4", "method=trades", "awp.enabled=false", *EXACT)
    for nproc in (1, 4):
        result = launch("adv_training.train", at_args(tmp_path, f"groups_p{nproc}", *grouped), nproc)
        assert result.returncode == 0, result.stderr
    keys = ("train_loss", "train_loss_natural", "train_loss_robust", "train_adv_acc")
    assert_same_run(tmp_path / "groups_p1", tmp_path / "groups_p4", ("model", "ema", "epoch_average"), keys)

    one_step = (*grouped, "awp.enabled=true", "epochs=1", "data.batch_size=1344", "data.drop_last=true")
    for nproc in (1, 2):
        result = launch("adv_training.train", at_args(tmp_path, f"awp_p{nproc}", *one_step), nproc)
        assert result.returncode == 0, result.stderr
    a, b = load_file(tmp_path / "awp_p1" / "last.pt")["model"], load_file(tmp_path / "awp_p2" / "last.pt")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)

    refused = launch("adv_training.train", at_args(tmp_path, "three", "batchnorm_groups=3", *EXACT), 2)
    assert refused.returncode != 0 and "batchnorm_groups=3 cannot be split over 2 processes" in refused.stderr


def kd_one_and_two_processes(tmp_path, *extra):
    """The same 2-epoch digits distillation (a seeded, untrained digits_cnn teacher; the student without
    BatchNorm, so that two processes' forwards are one process's) by one process and by two."""
    torch.manual_seed(0)
    from engine.file_io import atomic_save
    from models import build_model

    teacher = atomic_save(build_model("digits_cnn", 10).state_dict(), tmp_path / "teacher.pt")
    args = [
        "--config",
        KD_DIGITS,
        "epochs=2",
        "student.arch=digits_cnn_plain",
        f"teacher.checkpoint={teacher}",
        "device=cpu",
        f"out_dir={tmp_path}",
        *extra,
    ]
    for name, nproc in (("one", 1), ("two", 2)):
        done = launch("knowledge_distillation.train", [*args, f"name={name}"], nproc)
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_ikl_kd_with_two_processes_equals_one_process(tmp_path):
    kd_one_and_two_processes(tmp_path, "ikl.class_prior=true")
    assert_same_run(
        tmp_path / "one",
        tmp_path / "two",
        ("model", "prior"),
        ("train_loss", "train_loss_ce", "train_loss_kd", "train_acc", "test_top1", "test_top5"),
    )


@pytest.mark.slow
def test_distillation_with_two_batchnorm_groups_on_one_process_equals_two_processes(tmp_path):
    """A BatchNorm student with batchnorm_groups=2 (mdistiller's DataParallel on 2 GPUs): one process
    normalising the two halves of the batch takes the step two processes of one half each take. One
    step (the whole digits set as one batch of 1,347): this student on 8x8 images is so sensitive that
    an lr changed by 2e-7 moves its weights by 20% within 2 epochs, so longer runs compare only rounding."""
    kd_one_and_two_processes(
        tmp_path, "student.arch=digits_cnn", "batchnorm_groups=2", "epochs=1", "data.batch_size=1348"
    )
    assert_same_run(tmp_path / "one", tmp_path / "two", ("model",), ("train_loss", "train_acc"))


@pytest.mark.slow
def test_crd_with_two_processes_equals_one_process_memory_bank_included(tmp_path):
    """CRD's embeddings (trained with the student, averaged by DDP) and its memory bank (every process
    applies the whole global batch's update) end as one process's; digits_cnn_plain has no BatchNorm,
    so the two processes' forwards are one process's."""
    kd_one_and_two_processes(tmp_path, "method=crd", "crd.nce_k=64", "teacher.report_accuracy=false")
    assert_same_run(tmp_path / "one", tmp_path / "two", ("model", "method"), ("train_loss", "train_loss_kd"))
    memory = load_file(tmp_path / "two" / "last.pt")["method"]["contrast.memory_v1"]
    assert memory.shape[0] == 1347  # one row per training image


EVALUATE = """
import json, sys
import torch
from adv_training.pgd_monitor import clean_and_pgd_accuracy
from engine import data as data_lib
from engine.distributed import is_main_process, rank, shutdown_distributed, world_size
from engine.file_io import load_file
from engine.environment import prepare_runtime
from engine.metrics import topk_accuracy
from models import build_model

device = prepare_runtime(device="cpu", precision="fp32", seed=11, deterministic=False)
model = build_model("digits_cnn_small", 10)
model.load_state_dict(load_file(sys.argv[1]))
test_set = data_lib.build_test_set("digits", None)
shard = dict(rank=rank(), world_size=world_size())
loader = data_lib.make_eval_loader(data_lib.WithIndices(test_set), batch_size=64, **shard)  # 450 = 7 x 64 + 2
numbers = clean_and_pgd_accuracy(model, loader, device, eps=0.1, step_size=0.025, steps=10, seed=11)
numbers.update(topk_accuracy(model, data_lib.make_eval_loader(test_set, batch_size=64, **shard), device))
numbers["world_size"] = world_size()
if is_main_process():
    print("NUMBERS " + json.dumps(numbers), flush=True)
shutdown_distributed(all_finished=True)
"""


@pytest.mark.slow
def test_evaluation_under_three_processes_gives_one_processs_numbers_exactly(tmp_path):
    from engine.data import build_train_set, make_loader
    from engine.file_io import atomic_save
    from models import build_model

    torch.manual_seed(0)  # a briefly trained model, so that clean and PGD accuracies are neither 0 nor 100
    model = build_model("digits_cnn_small", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for images, targets in make_loader(build_train_set("digits", None), batch_size=64, shuffle=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
    weights = atomic_save(model.state_dict(), tmp_path / "model.pt")
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE)

    def numbers(nproc):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
            if nproc > 1
            else [sys.executable]
        )
        result = subprocess.run(
            [*launcher, str(script), str(weights)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("NUMBERS ")]
        return json.loads(line[len("NUMBERS ") :])

    one, three = numbers(1), numbers(3)
    assert (one.pop("world_size"), three.pop("world_size")) == (1, 3)
    assert three == one  # exactly: the same batches, the same attack starts
    assert 0 < one["robust_acc"] < one["clean_acc"] < 100 and one["top1"] == one["clean_acc"] < one["top5"]


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_is_refused(exact_runs, tmp_path):
    import shutil

    shutil.copytree(exact_runs / "two", tmp_path / "two")  # the fixture's run stays as it was
    resumed = launch("adv_training.train", at_args(tmp_path, "two", *EXACT, "epochs=3", "resume=true"), 1)
    assert resumed.returncode != 0
    assert "was written by 2 process(es) and this run has 1" in resumed.stderr
    assert load_file(tmp_path / "two" / "last.pt")["epoch"] == 2  # refused before training anything


@pytest.mark.slow
def test_a_nan_on_any_process_stops_every_process_with_the_same_message(tmp_path):
    result = launch("adv_training.train", at_args(tmp_path, "nan", "epochs=1", "optim.lr=1e30"), 2)
    assert result.returncode != 0
    assert result.stderr.count("error: the training loss became nan in epoch 1") == 2, result.stderr


@pytest.mark.slow
def test_two_nodes_on_localhost_complete_a_run(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}",
                "-m",
                "adv_training.train",
                *at_args(tmp_path, "nodes", "epochs=1"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert load_file(tmp_path / "nodes" / "last.pt")["world_size"] == 2


@pytest.mark.slow
def test_a_two_process_run_stopped_and_resumed_ends_bit_equal_to_an_uninterrupted_one(tmp_path):
    """With random attack starts: every process's RNG state is saved and restored (rng_per_rank)."""
    noisy = ("attack.random_start=normal",)
    assert launch("adv_training.train", at_args(tmp_path, "straight", *noisy), 2).returncode == 0
    first = launch("adv_training.train", at_args(tmp_path, "split", *noisy, "stop_after=1"), 2)
    assert first.returncode == 0 and "Stopped after epoch 1" in first.stdout, first.stderr
    assert not (tmp_path / "split" / "results.json").exists()
    assert launch("adv_training.train", at_args(tmp_path, "split", *noisy, "resume=true"), 2).returncode == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert len(split["rng_per_rank"]) == 2
    for key in ("model", "ema", "epoch_average"):
        a, b = straight[key], split[key]
        a, b = a.get("module", a.get("average", a)), b.get("module", b.get("average", b))
        assert all(torch.equal(a[name], b[name]) for name in a), key
    assert torch.equal(straight["prior"]["prior"], split["prior"]["prior"])


@pytest.mark.slow
def test_a_process_that_dies_stops_the_others_and_leaves_the_last_good_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            "-m",
            "adv_training.train",
            *at_args(tmp_path, "dies", "epochs=50", "dist_timeout=60"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tmp_path / "dies" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.5)
    assert last.exists(), "the run never finished an epoch"
    workers = subprocess.run(["pgrep", "-P", str(runner.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    started = time.monotonic()
    runner.communicate(timeout=120)  # bounded: torchrun stops the other process, no hang
    assert runner.returncode != 0 and time.monotonic() - started < 120
    state = load_file(last)  # still a complete, loadable checkpoint
    assert state["epoch"] >= 1 and state["world_size"] == 2


@pytest.mark.slow
def test_processes_draw_different_random_numbers_but_rank_0_keeps_the_seed(tmp_path):
    script = tmp_path / "draw.py"
    script.write_text(
        "import torch\n"
        "from engine.distributed import rank, shutdown_distributed\n"
        "from engine.environment import prepare_runtime\n"
        "prepare_runtime(device='cpu', precision='fp32', seed=7, deterministic=False)\n"
        "print(f'rank {rank()} draws {torch.rand(1).item()!r}', flush=True)\n"
        "shutdown_distributed()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(script),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    draws = dict(line.split(" draws ") for line in result.stdout.splitlines() if line.startswith("rank "))
    torch.manual_seed(7)
    assert float(draws["rank 0"]) == torch.rand(1).item()  # a one-process run's first draw
    assert draws["rank 0"] != draws["rank 1"]
