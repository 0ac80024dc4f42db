"""How distillation fails and recovers: a finished run resumed, a broken teacher, a poisoned
torchvision cache. Digits and a small ImageFolder tree through the real entry point."""

import json
from pathlib import Path

import torch

from engine.file_io import atomic_save
from knowledge_distillation.train import main
from models import build_model
from models.pretrained import require_sha256_prefix

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "configs" / "knowledge_distillation" / "digits_ikl.yaml")


def teacher_file(path, scale=1.0):
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.mul_(scale)
    return atomic_save(teacher.state_dict(), path)


def digits_kd(out_dir, teacher, *extra):
    return [
        "--config",
        DIGITS,
        "epochs=2",
        "device=cpu",
        f"out_dir={out_dir}",
        "name=kd",
        f"teacher.checkpoint={teacher}",
        "ikl.class_prior=true",
        *extra,
    ]


def test_resuming_a_finished_distillation_rebuilds_its_results(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.pt")
    assert main(digits_kd(tmp_path, teacher)) == 0
    path = tmp_path / "kd" / "results.json"
    complete = json.loads(path.read_text())
    assert complete["final"]["test_top1"] >= 0 and complete["method"] == "ikl"
    path.unlink()
    assert main(digits_kd(tmp_path, teacher, "resume=true")) == 0
    assert json.loads(path.read_text()) == complete


def test_a_teacher_that_outputs_inf_stops_with_a_message_about_the_teacher(tmp_path, capsys):
    teacher = teacher_file(tmp_path / "teacher.pt", scale=1e30)  # finite weights, infinite logits
    assert main(digits_kd(tmp_path, teacher, "teacher.report_accuracy=false")) == 2
    error = capsys.readouterr().err
    assert f"the teacher (digits_cnn, {teacher}) outputs NaN or inf" in error and error.count("\n") == 1
    assert "negative" not in error


def test_a_poisoned_torchvision_cache_file_is_refused_before_it_is_read(tmp_path, imagenet_root, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "code-ran"
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's file name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # pickle running a shell
    args = [
        "--config",
        str(ROOT / "configs" / "knowledge_distillation" / "imagenet" / "r34_r18.yaml"),
        f"data.root={imagenet_root}",
        "teacher.arch=ResNet18",
        "teacher.checkpoint=torchvision:IMAGENET1K_V1",
        "student.arch=ResNet18",
        "data.num_workers=0",
        "data.batch_size=6",
        "data.test_batch_size=6",
        "batchnorm_groups=2",  # the config's 8 would leave groups without a row of a batch of 6
        "epochs=1",
        "device=cpu",
        f"out_dir={tmp_path / 'runs'}",
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{cached} does not match its published sha256 (which starts with f37072fd)" in error
    assert not marker.exists()


def test_the_hash_check_passes_a_matching_file(tmp_path):
    import hashlib

    path = atomic_save({"w": torch.ones(2)}, tmp_path / "weights.pth")
    require_sha256_prefix(path, hashlib.sha256(path.read_bytes()).hexdigest()[:8])


def test_on_an_accelerator_an_inf_teacher_stops_at_the_progress_line_with_last_pt_intact(
    tmp_path, capsys, accelerator_checks
):
    """As on a GPU (value checks off the host): the teacher's bad outputs are zeroed and counted on the
    device, no device-side assert is queued, and the run stops in one line naming the teacher."""
    good = teacher_file(tmp_path / "teacher.pt")
    assert main(digits_kd(tmp_path, good, "stop_after=1", "ikl.class_prior=false")) == 0
    written = (tmp_path / "kd" / "last.pt").read_bytes()
    broken = teacher_file(tmp_path / "broken.pt", scale=1e30)
    assert (
        main(digits_kd(tmp_path, broken, "resume=true", "ikl.class_prior=false", "teacher.report_accuracy=false")) == 2
    )
    error = capsys.readouterr().err
    assert f"the teacher (digits_cnn, {broken}) outputs NaN or inf" in error
    assert (tmp_path / "kd" / "last.pt").read_bytes() == written
