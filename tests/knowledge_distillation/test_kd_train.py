"""Knowledge distillation end to end on small CIFAR-format and ImageFolder data (CPU)."""

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data.dataloader import _BaseDataLoaderIter

from engine.config import load_config
from engine.data import build_test_set
from engine.file_io import atomic_save, load_file
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import IKL, Vanilla, build_distiller
from knowledge_distillation.loaders import build_loaders
from knowledge_distillation.train import main
from losses import ClassPrior
from models import build_model, load_weights

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "knowledge_distillation"


@pytest.fixture(scope="module")
def cifar_teacher(cifar100_root, tmp_path_factory):
    """A resnet14 trained for a few steps on the small CIFAR-100 set, saved as mdistiller does."""
    torch.manual_seed(0)
    from engine.data import build_train_set

    data = build_train_set("cifar100", cifar100_root, augment="none", verify_checksum=False, normalize=True)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    teacher = build_model("resnet14", 100, dataset="cifar100")
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        for start in range(0, len(labels), 100):
            loss = F.cross_entropy(teacher(images[start : start + 100]), labels[start : start + 100])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("ckpts") / "cifar_teachers" / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    atomic_save({"model": teacher.state_dict(), "epoch": 240}, path)
    return path


def cifar_run(data_root, teacher_path, out_dir, *extra, name="run"):
    return [
        f"data.root={data_root}",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=50",
        "data.test_batch_size=50",
        "teacher.arch=resnet14",
        f"teacher.checkpoint={teacher_path}",
        "student.arch=resnet8",
        "epochs=2",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        "ikl.warmup=2",
        "dkd.warmup=2",
        *extra,
    ]


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def topk_by_hand(model, data_root):
    """(top-1, top-5) accuracy (%) of ``model`` on the small CIFAR-100 test set, normalised as the configs' data
    (data.normalize), image by image: a hit when the label is the top logit, or among the five top ones."""
    test_set = build_test_set("cifar100", data_root, verify_checksum=False, normalize=True)
    top1 = top5 = 0
    model.eval()
    with torch.no_grad():
        for image, label in (test_set[i] for i in range(len(test_set))):
            ranked = model(image[None])[0].argsort(descending=True).tolist()
            top1 += ranked[0] == label
            top5 += label in ranked[:5]
    return 100 * top1 / len(test_set), 100 * top5 / len(test_set)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,extra",
    [
        ("vanilla", []),
        ("kd", []),
        ("dkd", []),
        ("ikl", []),
        ("ikl", ["ikl.class_prior=true", "ikl.prior_temperature=1"]),
    ],
)
def test_each_distiller_runs_and_writes_a_run_folder(method, extra, cifar100_root, cifar_teacher, tmp_path):
    args = cifar_run(cifar100_root, cifar_teacher, tmp_path, f"method={method}", "epochs=1", *extra)
    assert main([f"--config={CONFIGS / 'cifar100' / 'res32x4_res8x4.yaml'}", *args]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "last.pt", "best.pt", "results.json"):
        assert (run / name).is_file(), name
    (record,) = read_metrics(run)
    for key in (
        "train_loss",
        "train_loss_ce",
        "train_loss_kd",
        "test_top1",
        "test_top5",
        "sec_per_iter",
        "data_sec_per_iter",
        "compute_sec_per_iter",
    ):
        assert math.isfinite(record[key]), key
    assert record["train_loss_kd"] == 0.0 if method == "vanilla" else record["train_loss_kd"] > 0
    # the epoch's top-1 and top-5 are the saved student's on the 100 test images; the teacher's its checkpoint's
    student = load_weights(build_model("resnet8", 100, dataset="cifar100"), run / "last.pt")
    assert (record["test_top1"], record["test_top5"]) == topk_by_hand(student, cifar100_root)
    results = json.loads((run / "results.json").read_text())
    teacher = load_weights(build_model("resnet14", 100, dataset="cifar100"), cifar_teacher)
    assert (
        results["teacher_accuracy"]["top1"] == topk_by_hand(teacher, cifar100_root)[0] and results["method"] == method
    )


@pytest.mark.slow
def test_imagenet_folder_run(imagenet_root, tmp_path):
    torch.manual_seed(0)
    teacher_path = tmp_path / "resnet18_teacher.pth"
    atomic_save(build_model("ResNet18", 1000, dataset="imagenet").state_dict(), teacher_path)
    args = [
        f"--config={CONFIGS / 'imagenet' / 'r34_r18.yaml'}",
        f"data.root={imagenet_root}",
        "data.num_workers=0",
        "data.batch_size=6",
        "data.test_batch_size=6",
        "batchnorm_groups=2",  # the config's 8 would leave groups without a row of a batch of 6
        "teacher.arch=ResNet18",
        f"teacher.checkpoint={teacher_path}",
        "student.arch=ResNet18",
        "epochs=1",
        "device=cpu",
        f"out_dir={tmp_path}",
        "name=imagenet",
    ]
    assert main(args) == 0
    (record,) = read_metrics(tmp_path / "imagenet")
    assert math.isfinite(record["train_loss"]) and record["train_loss_kd"] > 0


@pytest.mark.slow
def test_class_prior_is_the_previous_epochs_mean_of_the_teachers_softmax(
    cifar100_root, cifar_teacher, tmp_path, monkeypatch
):
    calls = []
    real_loss = IKL.loss

    def recording_loss(self, logits_student, logits_teacher, targets, epoch, prior_rows, features=None):
        calls.append((epoch, logits_teacher.detach().clone(), targets.clone(), prior_rows.clone()))
        return real_loss(self, logits_student, logits_teacher, targets, epoch, prior_rows)

    monkeypatch.setattr(IKL, "loss", recording_loss)
    prior_temperature = 2.0
    args = cifar_run(
        cifar100_root, cifar_teacher, tmp_path, "ikl.class_prior=true", f"ikl.prior_temperature={prior_temperature}"
    )
    assert main([f"--config={CONFIGS / 'cifar100' / 'res32x4_res8x4.yaml'}", *args]) == 0

    epoch1 = [c for c in calls if c[0] == 1]
    epoch2 = [c for c in calls if c[0] == 2]
    for _, _, _, rows in epoch1:  # nothing seen yet: uniform rows
        torch.testing.assert_close(rows, torch.full_like(rows, 1 / 100))
    sums, counts = torch.zeros(100, 100), torch.zeros(100)
    for _, logits, targets, _ in epoch1:
        probabilities = torch.exp(logits / prior_temperature)
        probabilities = probabilities / probabilities.sum(1, keepdim=True)
        for row, target in zip(probabilities, targets.tolist()):
            sums[target] += row
            counts[target] += 1
    for _, _, targets, rows in epoch2:
        expected = sums[targets] / counts[targets].unsqueeze(1)
        torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_student(cifar100_root, cifar_teacher, tmp_path, monkeypatch):
    base = [f"--config={CONFIGS / 'cifar100' / 'res32x4_res8x4.yaml'}", "ikl.class_prior=true"]
    assert main(base + cifar_run(cifar100_root, cifar_teacher, tmp_path, name="straight")) == 0

    real_loss, calls = IKL.loss, {"epoch2": 0}

    def crashing_loss(self, logits_student, logits_teacher, targets, epoch, prior_rows, features=None):
        if epoch == 2:
            calls["epoch2"] += 1
            if calls["epoch2"] == 3:
                raise RuntimeError("simulated crash")
        return real_loss(self, logits_student, logits_teacher, targets, epoch, prior_rows)

    monkeypatch.setattr(IKL, "loss", crashing_loss)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(base + cifar_run(cifar100_root, cifar_teacher, tmp_path, name="interrupted"))
    monkeypatch.setattr(IKL, "loss", real_loss)
    assert main(base + cifar_run(cifar100_root, cifar_teacher, tmp_path, "resume=true", name="interrupted")) == 0

    straight, resumed = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "interrupted" / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert torch.equal(straight["prior"]["prior"], resumed["prior"]["prior"])
    assert [m["epoch"] for m in read_metrics(tmp_path / "interrupted")] == [1, 2]


def test_missing_teacher_says_where_mdistiller_publishes_it(cifar100_root, tmp_path, capsys):
    args = cifar_run(cifar100_root, tmp_path / "download_ckpts" / "nothing.pth", tmp_path / "runs")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "teacher checkpoint not found" in error and "github.com/megvii-research/mdistiller/releases" in error
    assert "cifar_teachers.tar" in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_a_teacher_of_another_architecture_is_a_readable_error(cifar100_root, cifar_teacher, tmp_path, capsys):
    args = cifar_run(cifar100_root, cifar_teacher, tmp_path, "teacher.arch=resnet20")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{cifar_teacher} does not fit" in error and "missing key" in error  # names the file


def paper_configs():
    """The pair files (the NeurIPS paper's IKL-KD / DKD / KD) and their ``<pair>_gkl.yaml`` (the authors' DKLv2)."""
    return sorted(
        p for folder in ("cifar100", "imagenet") for p in (CONFIGS / folder).glob("*.yaml") if p.name != "base.yaml"
    )


@pytest.mark.parametrize("path", paper_configs(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_paper_config_resolves_and_takes_a_step(path):
    cfg = load_config(KDConfig, path)
    assert cfg.method == "ikl"
    imagenet = cfg.data.dataset == "imagenet"
    size, classes = (224, 1000) if imagenet else (32, 100)
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher.arch, classes, dataset=cfg.data.dataset).eval()
    student = build_model(cfg.student.arch, classes, dataset=cfg.data.dataset)
    images, targets = torch.randn(2, 3, size, size), torch.randint(0, classes, (2,))
    prior = ClassPrior(classes, temperature=cfg.ikl.prior_temperature)
    with torch.no_grad():
        logits_teacher = teacher(images)
    for name in ("ikl", "kd", "dkd"):
        cfg.method = name
        loss, _ = build_distiller(cfg).loss(
            student(images), logits_teacher, targets, epoch=1, prior_rows=prior.rows(targets)
        )
        loss.backward()
        assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_paper_configs_cover_every_pair_of_the_paper():
    gkl = [p for p in paper_configs() if p.stem.endswith("_gkl")]
    assert len(paper_configs()) - len(gkl) == 13  # 11 CIFAR-100 pairs and 2 ImageNet pairs
    assert sorted(p.with_name(p.name.replace("_gkl", "")) for p in gkl) == sorted(set(paper_configs()) - set(gkl))
    for path in sorted(CONFIGS.glob("digits_*.yaml")):
        load_config(KDConfig, path)


def test_digits_teacher_then_student_through_the_entry_point(tmp_path):
    overrides = ["epochs=1", f"out_dir={tmp_path}", "device=cpu"]
    assert main(["--config", str(CONFIGS / "digits_teacher.yaml"), *overrides]) == 0
    teacher = tmp_path / "digits_teacher" / "best.pt"
    assert main(["--config", str(CONFIGS / "digits_ikl.yaml"), f"teacher.checkpoint={teacher}", *overrides]) == 0
    results = json.loads((tmp_path / "digits_ikl" / "results.json").read_text())
    assert results["teacher"] == "digits_cnn" and results["student"] == "digits_cnn_small"
    # the teacher's accuracy is that of the teacher run's best.pt: its one epoch's, on the same 450 test images
    (teacher_record,) = read_metrics(tmp_path / "digits_teacher")
    assert results["teacher_accuracy"] == {"top1": teacher_record["test_top1"], "top5": teacher_record["test_top5"]}
    assert results["teacher_accuracy"]["top1"] > 10  # one epoch of the teacher already beats chance
    picture = (tmp_path / "digits_ikl" / "curves.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 5_000


def test_the_seconds_per_iteration_split_into_waiting_for_the_loader_and_the_rest(tmp_path, monkeypatch):
    """On a clock that only the loader (3 s for each batch it hands out) and the loss (5 s a batch) move, an
    epoch of digits is 8 s an iteration: 3 s waiting for data, 5 s computing. (After the digits test, which
    pays for the first import of the digits data.)"""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_next = _BaseDataLoaderIter.__next__

    def slow_next(self):
        batch = real_next(self)  # the end of the loader (StopIteration) takes no time
        clock[0] += 3.0
        return batch

    def slow_loss(self, *args, **kwargs):
        clock[0] += 5.0
        return real_loss(self, *args, **kwargs)

    real_loss = Vanilla.loss
    monkeypatch.setattr(_BaseDataLoaderIter, "__next__", slow_next)
    monkeypatch.setattr(Vanilla, "loss", slow_loss)
    overrides = ["epochs=1", f"out_dir={tmp_path}", "device=cpu"]
    assert main(["--config", str(CONFIGS / "digits_teacher.yaml"), *overrides]) == 0
    (record,) = read_metrics(tmp_path / "digits_teacher")
    seconds = {key: record[key] for key in ("sec_per_iter", "data_sec_per_iter", "compute_sec_per_iter")}
    assert seconds == {"sec_per_iter": 8.0, "data_sec_per_iter": 3.0, "compute_sec_per_iter": 5.0}


def test_a_two_view_distillers_loader_gives_weak_and_strong_views(cifar100_root):
    cfg = load_config(
        KDConfig,
        CONFIGS / "cifar100" / "mlkd" / "res32x4_res8x4.yaml",
        [f"data.root={cifar100_root}", "data.verify_checksum=false", "data.num_workers=0", "data.batch_size=50"],
    )
    loaders = build_loaders(cfg, torch.device("cpu"), with_indices=False, views=2)
    (weak, strong), targets = next(iter(loaders.train))
    assert weak.shape == strong.shape == (50, 3, 32, 32) and targets.shape == (50,)
    assert not torch.equal(weak, strong)  # independent crops and flips, and RandAugment on the strong one


@pytest.mark.slow
def test_mlkd_trains_on_cifar_files_with_both_views(cifar100_root, cifar_teacher, tmp_path):
    assert main(cifar_run(cifar100_root, cifar_teacher, tmp_path, "method=mlkd", "epochs=1")) == 0
    (record,) = read_metrics(tmp_path / "run")
    assert record["train_loss_kd"] > 0 and 0 <= record["train_acc"] <= 100  # accuracy of the weak view, per image
    assert record["train_loss"] == pytest.approx(record["train_loss_ce"] + record["train_loss_kd"], rel=1e-6)
