"""The fast path on the CPU: compiled forwards equal eager ones, bf16 + channels_last give the
fp32 loss to bf16 precision, the device-resident loader trains and resumes exactly, and the
fused SGD takes torch's plain steps."""

import copy
import json
from pathlib import Path

import pytest
import torch

from adv_training import train as at_train
from adv_training.attacks import natural_logits, pgd
from adv_training.config import ATConfig
from adv_training.methods import build_method
from adv_training.train import BatchLoss
from engine.config import ConfigError
from engine.distributed import unwrap
from engine.environment import autocast, compile_model
from engine.file_io import load_file
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import build_distiller
from knowledge_distillation.train import StudentForward, TeacherForward
from knowledge_distillation.train import train_one_epoch as kd_train_one_epoch
from losses import ClassPrior
from models import build_model, load_weights

CPU = torch.device("cpu")


def ikl_setup(arch="digits_cnn", dataset="digits", shape=(16, 1, 8, 8), **kwargs):
    torch.manual_seed(0)
    cfg = ATConfig(method="ikl")
    cfg.data.dataset = dataset
    model = build_model(arch, 10, dataset=dataset, **kwargs)
    x, y = torch.rand(*shape), torch.randint(0, 10, (shape[0],))
    prior = ClassPrior(10, temperature=4.0)
    prior.prior = torch.softmax(3 * torch.randn(10, 10), dim=1)  # a non-uniform prior, as after an epoch
    return cfg, build_method(cfg, 10), model, x, y, prior.rows(y)


def attack(network, method, x, y, rows, eps=0.2):
    torch.manual_seed(1)
    objective = method.attack_objective(natural_logits(network, x).float(), y, rows)
    return pgd(network, x, objective, eps=eps, step_size=eps / 2, steps=5)


def loss_gradients_buffers(network, module, method, x, x_adv, y, rows):
    """One training forward and backward; the loss, the gradients and the BatchNorm buffers after it."""
    module.zero_grad(set_to_none=True)
    network.train()
    loss, _ = BatchLoss(method, None, x, x_adv, y, rows, len(y), torch.device("cpu"), "fp32", None)(network)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()], [b.clone() for b in module.buffers()]


@pytest.mark.slow
def test_compiled_ikl_step_equals_the_eager_step():
    _, method, model, x, y, rows = ikl_setup()
    compiled = compile_model(model, True)
    assert unwrap(compiled) is model and compiled.state_dict().keys() != model.state_dict().keys()
    start = copy.deepcopy(model.state_dict())

    eager_adv, compiled_adv = attack(model, method, x, y, rows), attack(compiled, method, x, y, rows)
    # Sign steps: a gradient within rounding of zero may step the other way, nowhere else.
    assert ((eager_adv - compiled_adv).abs() < 1e-5).float().mean() > 0.99
    for x_adv in (eager_adv, compiled_adv):  # both stay within eps of x, and images
        assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(start.values(), model.state_dict().values()))  # eval-mode attack

    eager = loss_gradients_buffers(model, model, method, x, eager_adv, y, rows)
    model.load_state_dict(start)
    fast = loss_gradients_buffers(compiled, model, method, x, eager_adv, y, rows)
    assert fast[0] == pytest.approx(eager[0].item(), rel=1e-5)
    for a, b in zip(eager[1], fast[1]):  # gradients
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for a, b in zip(eager[2], fast[2]):  # BatchNorm running statistics, updated in place by both
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager[2][0], start["bn1.running_mean"])


def test_bf16_and_channels_last_give_the_fp32_loss_to_bf16_precision():
    _, method, model, x, y, rows = ikl_setup("WideResNet", "cifar10", (16, 3, 32, 32), depth=10, widen_factor=1)
    x_adv = attack(model, method, x, y, rows, eps=8 / 255)
    start = copy.deepcopy(model.state_dict())
    results = {}
    for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
        model.load_state_dict(start)
        network = model.to(memory_format=torch.channels_last) if channels_last else model
        inputs = [t.contiguous(memory_format=torch.channels_last) if channels_last else t for t in (x, x_adv)]
        with autocast(CPU, precision):
            results[precision, channels_last] = loss_gradients_buffers(
                network, model, method, *inputs[:1], inputs[1], y, rows
            )
        model.to(memory_format=torch.contiguous_format)
    reference, layout, bf16 = results["fp32", False], results["fp32", True], results["bf16", True]
    assert layout[0] == pytest.approx(reference[0].item(), rel=1e-5)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); through ten layers
    # and the loss the error stays within 2%, and the gradient keeps its direction.
    assert bf16[0] == pytest.approx(reference[0].item(), rel=2e-2)
    assert bf16[0] != reference[0]
    flat = lambda grads: torch.cat([g.float().flatten() for g in grads])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(bf16[1]), flat(reference[1]), dim=0) > 0.99
    assert torch.nn.functional.cosine_similarity(flat(layout[1]), flat(reference[1]), dim=0) > 0.99999


@pytest.mark.slow  # torch.compile: 8-20 s on a fresh machine (no inductor cache)
def test_compiled_kd_epoch_equals_the_eager_epoch():
    cfg = KDConfig(method="ikl")
    cfg.data.dataset, cfg.data.normalize, cfg.ikl.warmup = "digits", False, 1
    distiller = build_distiller(cfg)
    torch.manual_seed(0)
    teacher = build_model("digits_cnn", 10, dataset="digits").eval()
    student = build_model("digits_cnn_small", 10, dataset="digits")
    start = copy.deepcopy(student.state_dict())
    batches = [(torch.rand(size, 1, 8, 8), torch.randint(0, 10, (size,))) for size in (32, 32, 32, 11)]

    def epoch(compiled):
        student.load_state_dict(start)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        prior = ClassPrior(10, temperature=distiller.prior_temperature)
        summary = kd_train_one_epoch(
            cfg,
            distiller,
            1,
            compile_model(StudentForward(student, distiller), compiled),
            compile_model(TeacherForward(teacher, False), compiled),
            batches,
            optimizer,
            prior,
            CPU,
        )
        return summary, copy.deepcopy(student.state_dict())

    (eager_summary, eager_state), (fast_summary, fast_state) = epoch(False), epoch(True)
    assert fast_summary["train_loss"] == pytest.approx(eager_summary["train_loss"], rel=1e-5)
    for key in eager_state:
        torch.testing.assert_close(fast_state[key], eager_state[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(fast_state["fc.weight"], start["fc.weight"])


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_device_loader_trains_and_resumes_exactly(cifar10_root, tmp_path, tiny_at_run):
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, "data.loader=device", name="straight")) == 0
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, "data.loader=device", "stop_after=1", name="split")) == 0
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, "data.loader=device", "resume=true", name="split")) == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert all(torch.equal(straight["model"][k], split["model"][k]) for k in straight["model"])
    assert metrics(tmp_path / "split")[1]["train_loss"] == metrics(tmp_path / "straight")[1]["train_loss"]
    # Another stream than the DataLoader's: the same run with workers trains other batches.
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, "data.loader=workers", name="workers")) == 0
    assert metrics(tmp_path / "workers")[0]["train_loss"] != metrics(tmp_path / "straight")[0]["train_loss"]


@pytest.mark.slow
def test_compiled_run_with_awp_reports_compile_time_and_saves_plain_weights(cifar10_root, tmp_path, tiny_at_run):
    """AWP perturbs the weights in place around the compiled training forward, and restores them."""
    # lr 0.001: the weights move little in the 5 steps, so the attack's sign-step noise (a gradient within rounding
    # of zero stepping the other way), which AWP amplifies, stays below 1e-4 of each layer's norm; a restore lost
    # once leaves every layer AWP perturbs gamma = 0.5% of its norm off, whatever the learning rate.
    run = ("epochs=1", "optim.lr=0.001")
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, *run, "compile=true", name="compiled")) == 0
    record = metrics(tmp_path / "compiled")[0]
    assert record["compile_seconds"] > 0 and record["awp"]
    assert at_train.main(tiny_at_run(cifar10_root, tmp_path, *run, name="eager")) == 0
    compiled, eager = (load_file(tmp_path / name / "last.pt")["model"] for name in ("compiled", "eager"))
    assert compiled.keys() == eager.keys()
    fresh = build_model("WideResNet", 10, dataset="cifar10", depth=10, widen_factor=1)
    load_weights(fresh, compiled)  # strictly, into the plain model
    assert metrics(tmp_path / "eager")[0]["train_loss"] == pytest.approx(record["train_loss"], rel=1e-3)
    perturbed = [key for key, value in eager.items() if key.endswith("weight") and value.dim() > 1]  # AWP's layers
    assert len(perturbed) == 10
    for key in perturbed:
        assert (compiled[key] - eager[key]).norm() / eager[key].norm() < 1e-3, key


@pytest.mark.parametrize(
    "override,message",
    [
        (["data.dataset=digits", "model.arch=digits_cnn", "data.loader=device"], "data.loader' is device"),
        (["data.augment=autoaug", "data.loader=device"], "data.loader' is device"),
        (["generated.path=x", "data.loader=device"], "mixes generated images in"),
    ],
)
def test_device_loader_refuses_what_it_cannot_do(override, message):
    cfg = ATConfig()
    for item in override:
        key, value = item.split("=")
        section, _, name = key.rpartition(".")
        setattr(getattr(cfg, section) if section else cfg, name, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
