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
    cpu = torch.device("cpu")
    before = at_step.setup(at_step.bench_config(args, "ikl", "fp32"), args, cpu)[0].model.state_dict()
    for name, value in ours.model.state_dict().items():
        torch.testing.assert_close(theirs.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(before[name], value) for name, value in ours.model.state_dict().items())


def test_the_mdistiller_loop_baseline_trains_the_same_student_as_our_loop():
    kd_step = load("kd_step")
    args = Namespace(batch_size=4, image_size=64, iterations=2)
    cfg = kd_step.pair_config("r34_r18", "fp32", False, False)
    assert (cfg.teacher.arch, cfg.student.arch, cfg.ikl.alpha, cfg.ikl.beta) == ("ResNet34", "ResNet18", 1.0, 0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = kd_step.our_iterations(cfg, args, torch.device("cpu"))
        ours()
        theirs = kd_step.mdistiller_iterations(cfg, args, torch.device("cpu"))
        theirs()
    finally:
        torch.set_num_threads(threads)
    before = kd_step.setup(cfg, args, torch.device("cpu"))[0].student.state_dict()
    # Two SGD steps: same teacher, same batches, same loss (closed-form vs pairwise wMSE differ in the last bits).
    for name, value in ours.student.state_dict().items():
        torch.testing.assert_close(theirs.student.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(before[name], value) for name, value in ours.student.state_dict().items())


def test_the_kd_bench_times_reviewkd_with_its_imagenet_config_and_trains_its_fusion():
    kd_step = load("kd_step")
    cfg = kd_step.pair_config("r50_mv1", "fp32", False, False, "reviewkd")
    # mdistiller's configs/imagenet/r50_mv1/reviewkd.yaml, through ours: weight 8, pre-ReLU student, width 256.
    assert (cfg.method, cfg.reviewkd.reviewkd_weight, cfg.reviewkd.stu_preact, cfg.reviewkd.max_mid_channel) == (
        "reviewkd",
        8.0,
        True,
        256,
    )
    cfg = kd_step.pair_config("r34_r18", "fp32", False, False, "reviewkd")
    args = Namespace(batch_size=2, image_size=64, iterations=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = kd_step.our_iterations(cfg, args, torch.device("cpu"))
        before = {k: v.clone() for k, v in run.student.state_dict().items()}
        run()
    finally:
        torch.set_num_threads(threads)
    assert any(not torch.equal(before[k], v) for k, v in run.student.state_dict().items())


def test_the_kd_bench_times_mlkd_on_two_views_and_ctkd_with_their_imagenet_configs():
    kd_step = load("kd_step")
    mlkd = kd_step.pair_config("r34_r18", "fp32", False, False, "mlkd")
    ctkd = kd_step.pair_config("r34_r18", "fp32", False, False, "ctkd")
    assert (mlkd.method, mlkd.mlkd.kd_weight, ctkd.method, ctkd.ctkd.curriculum_epochs) == ("mlkd", 0.5, "ctkd", 5)
    args = Namespace(batch_size=2, image_size=64, iterations=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kd, batches = kd_step.setup(mlkd, args, torch.device("cpu"))
        assert isinstance(batches[0][0], list) and len(batches[0][0]) == 2  # a weak and a strong view
        run = kd_step.our_iterations(ctkd, args, torch.device("cpu"))
        before = {k: v.clone() for k, v in run.student.state_dict().items()}
        run()
    finally:
        torch.set_num_threads(threads)
    assert any(not torch.equal(before[k], v) for k, v in run.student.state_dict().items())
