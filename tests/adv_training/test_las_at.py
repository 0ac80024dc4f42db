"""LAS-AT as jiaxiaojunQAQ/LAS-AT (commit ee756b7) trains it with its LAS-AWP scripts: every hyperparameter of
each recipe, with the file it comes from, against the resolved config and its launcher's --print-config; the
strategy's sampling, REINFORCE gradient, per-sample attack and reward against hand or independent
computations; two processes against one; a run stopped and resumed against an uninterrupted one; bad values."""

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from adv_training import las_at
from adv_training.attacks import per_sample_pgd, pgd
from adv_training.config import ATConfig
from adv_training.methods import build_method, check_method, cross_entropy_objective, las_at_reward
from adv_training.train import main
from engine.config import ConfigError, load_config
from engine.file_io import load_file
from models import build_model

from .test_awp_recipes import assert_launcher_prints_recipe, assert_recipe
from .test_train import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "adv_training"

C10 = "LAS_AWP/LAS_AWP_train_cifar10.py"
C100 = "LAS_AWP/LAS_AWP_train_cifar100.py"
README = "README.md"

LAS_AT_CIFAR10 = {  # key: (value, where jiaxiaojunQAQ/LAS-AT sets it)
    "name": ("cifar10_las_at", "-"),
    "paper_row": ("cifar10_las_at", "jiequancui/DKL DKLv1/Adv-training-dkl/README.md, LAS-AT"),
    "method": ("las_at", f"{C10}: CE(model(X_adv)) with the strategy's attacks"),
    "epochs": (200, f"{README}: --epochs 200"),
    "seed": (0, f"{C10}: --seed 0"),
    "batchnorm_groups": (1, f"{C10}: nn.DataParallel on an unstated number of GPUs"),
    "label_smoothing": (0.0, f"{C10}: criterion = nn.CrossEntropyLoss()"),
    "model.arch": ("WideResNet34_10", f"{README}: --model WideResNet (depth 34, widen 10)"),
    "model.preprocess": ("meanstd", f"{C10}: normalize(X) with cifar10_mean/std"),
    "data.dataset": ("cifar10", C10),
    "data.batch_size": (128, f"{C10}: --batch-size 128"),
    "data.augment": ("basic", f"{C10}: Crop(32, 32), FlipLR()"),
    "data.padding_mode": ("reflect", f"{C10}: pad(), np.pad(mode='reflect')"),
    "optim.lr": (0.1, f"{C10}: --lr-max 0.1"),
    "optim.momentum": (0.9, f"{C10}: SGD(momentum=0.9)"),
    "optim.weight_decay": (5e-4, f"{C10}: SGD(weight_decay=5e-4)"),
    "optim.batchnorm_weight_decay": (True, f"{C10}: --l2 0, params = model.parameters()"),
    "optim.schedule": ("step", f"{C10}: --lr-schedule piecewise"),
    "optim.milestones": ([100, 150], f"{C10}: lr_max if t/epochs < 0.5, /10 if < 0.75, else /100"),
    "optim.decay": (0.1, f"{C10}: lr_max / 10., lr_max / 100."),
    "attack.norm": ("linf", f"{C10}: --norm l_inf"),
    "attack.epsilon": (8 / 255, f"{C10}: delta = clamp(..., -epsilon, epsilon), --epsilon 8"),
    "attack.eval_mode": (True, f"{C10}: Get_delta's target_model.eval()"),
    "awp.enabled": (True, f"{C10}: --awp-gamma 0.01"),
    "awp.gamma": (0.01, f"{C10}: --awp-gamma"),
    "awp.warmup": (1, f"{C10}: --awp-warmup 0 (0-based epochs: from the first)"),
    "awp.proxy_lr": (0.01, f"{C10}: proxy_opt = SGD(proxy.parameters(), lr=0.01)"),
    "ema.enabled": (False, f"{C10}: no weight average"),
    "epoch_average.enabled": (False, f"{C10}: no weight average"),
    "eval.num_examples": (None, f"{C10}: the whole test set"),
    "eval.pgd_steps": (20, f"{C10}: --attack-iters-test 20"),
    "eval.step_size": (2 / 255, f"{C10}: --pgd-alpha 2"),
    "eval.select": ("model", f"{C10}: model_best.pth by test_robust_acc"),
    "las_at.epsilons": ([7, 8, 9, 10, 11, 12, 13, 14, 15], f"{README}: --epsilon_types 7 ... 15"),
    "las_at.steps": ([8, 9, 10, 11, 12, 13, 14, 15, 16], f"{README}: --attack_iters_types 8 ... 16"),
    "las_at.step_sizes": ([2, 3, 4, 5], f"{README}: --step_size_types 2 3 4 5"),
    "las_at.interval": (1, f"{C10}: no --interval_num, the strategy learns at every step"),
    "las_at.policy_lr": (1e-4, f"{C10}: --policy_model_lr 0.0001"),
    "las_at.policy_momentum": (0.0, f"{C10}: optim.SGD(..., lr=args.policy_model_lr)"),
    "las_at.policy_weight_decay": (0.0, f"{C10}: optim.SGD(..., lr=args.policy_model_lr)"),
    "las_at.clip_grad_norm": (1.0, f"{C10}: --clip_grad_norm 1.0"),
    "las_at.robust_weight": (1.0, f"{C10}: --R2_param 1 (--b 1)"),
    "las_at.clean_weight": (1.0, f"{C10}: --R3_param 1 (--c 1)"),
    "las_at.lookahead_label_smoothing": (0.3, f"{C10}: --factor 0.7 in _label_smoothing"),
    "las_at.reward_epsilon": (8 / 255, f"{C10}: Get_reward's epsilon = 8 / 255.; start_epsilon = 8.0/255"),
    "las_at.reward_step_size": (2 / 255, f"{C10}: Get_reward's alpha = 2 / 255."),
    "las_at.reward_steps": (10, f"{C10}: attack_pgd(copy_target_model, ..., 10, 2)"),
    "las_at.reward_restarts": (2, f"{C10}: attack_pgd(copy_target_model, ..., 10, 2)"),
}
LAS_AT_CIFAR100 = {
    **{key: (value, source.replace(C10, C100)) for key, (value, source) in LAS_AT_CIFAR10.items()},
    "name": ("cifar100_las_at", "-"),
    "paper_row": ("cifar100_las_at", "jiequancui/DKL DKLv1/Adv-training-dkl/README.md, LAS-AT"),
    "model.preprocess": ("01", f"{C100}: mu = (0, 0, 0), std = (1, 1, 1)"),
    "data.dataset": ("cifar100", C100),
    "data.padding_mode": ("constant", "LAS_AWP/utils.py: RandomCrop(32, padding=4)"),
    "las_at.steps": ([8, 9, 10, 11, 12, 13, 14, 15], f"{README}: --attack_iters_types 8 ... 15"),
    "las_at.interval": (10, f"{C100}: --interval_num 10"),
    "las_at.policy_momentum": (0.9, f"{C100}: SGD_with_momentum, momentum=0.9"),
    "las_at.policy_weight_decay": (5e-4, f"{C100}: SGD_with_momentum, weight_decay=5e-4"),
    "las_at.robust_weight": (4.0, f"{C100}: --R2_param 4"),
    "las_at.clean_weight": (2.0, f"{C100}: --R3_param 2"),
}
RECIPES = {
    "cifar10_las_at.yaml": ("train_las_at_cifar10.sh", LAS_AT_CIFAR10),
    "cifar100_las_at.yaml": ("train_las_at_cifar100.sh", LAS_AT_CIFAR100),
}


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_config_resolves_to_the_authors_hyperparameters(config):
    assert_recipe(dataclasses.asdict(load_config(ATConfig, CONFIGS / config)), RECIPES[config][1])


def test_the_las_at_launchers_are_exactly_the_listed_ones():
    shipped = {path.name for path in (ROOT / "sh").glob("train_las_at_*.sh")}
    assert shipped == {launcher for launcher, _ in RECIPES.values()}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_launcher_prints_its_config_with_the_authors_hyperparameters(config, tmp_path):
    assert_launcher_prints_recipe(*RECIPES[config], config, tmp_path)


# --- the strategy's pieces ---------------------------------------------------------------------


def test_sampling_by_inverse_transform_picks_the_choice_whose_interval_holds_the_number():
    probabilities = torch.tensor([0.2, 0.5, 0.3])
    logits = {name: probabilities.log().expand(5, 3) for name in las_at.HEADS}
    numbers = torch.tensor([0.1, 0.25, 0.69, 0.71, 0.99])  # cumulative: 0.2 | 0.7 | 1.0
    actions = las_at.sample_actions(logits, numbers[:, None].expand(5, len(las_at.HEADS)))
    for name in las_at.HEADS:
        assert actions[name].tolist() == [0, 1, 1, 2, 2]
    # and the frequencies of many draws are the probabilities
    many = las_at.sample_actions(
        {name: probabilities.log().expand(20000, 3) for name in las_at.HEADS},
        torch.rand(20000, len(las_at.HEADS), generator=torch.Generator().manual_seed(0)),
    )
    frequencies = torch.bincount(many["epsilon"], minlength=3).double() / 20000
    assert torch.allclose(frequencies, probabilities.double(), atol=0.01)


def test_the_reinforce_gradient_is_minus_reward_times_onehot_minus_softmax_over_the_batch():
    torch.manual_seed(0)
    logits = {
        name: torch.randn(4, size, dtype=torch.float64, requires_grad=True)
        for name, size in zip(las_at.HEADS, (9, 9, 4))
    }
    actions = {name: torch.randint(0, value.shape[1], (4,)) for name, value in logits.items()}
    reward = 2.5
    las_at.policy_loss(logits, actions, reward).backward()
    for name, value in logits.items():
        by_hand = -(reward / 4) * (F.one_hot(actions[name], value.shape[1]) - value.detach().softmax(dim=1))
        assert torch.allclose(value.grad, by_hand, atol=1e-12), name


def test_budgets_map_choices_to_pixels_and_steps():
    choices = {"epsilon": [7, 8, 15], "steps": [8, 16], "step_size": [2, 5]}
    eps, step, steps = las_at.budgets(
        {"epsilon": torch.tensor([0, 2]), "steps": torch.tensor([1, 0]), "step_size": torch.tensor([1, 0])}, choices
    )
    assert eps.tolist() == pytest.approx([7 / 255, 15 / 255]) and step.tolist() == pytest.approx([5 / 255, 2 / 255])
    assert steps.tolist() == [16, 8]


def test_per_sample_pgd_gives_each_sample_its_own_attack():
    torch.manual_seed(1)
    model = build_model("WideResNet", 10, depth=10, widen_factor=1).eval()
    x, targets = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    eps = torch.tensor([4 / 255, 8 / 255, 12 / 255])
    step = torch.tensor([1 / 255, 2 / 255, 3 / 255])
    steps = torch.tensor([1, 3, 5])
    joint = per_sample_pgd(
        model, x, cross_entropy_objective(targets), eps=eps, step_size=step, steps=steps, start_eps=0.0
    )
    for b in range(3):  # the same attack, sample by sample, by the scalar PGD
        alone = pgd(
            model,
            x[b : b + 1],
            cross_entropy_objective(targets[b : b + 1]),
            eps=float(eps[b]),
            step_size=float(step[b]),
            steps=int(steps[b]),
            random_start="none",
        )
        assert torch.allclose(joint[b : b + 1], alone, atol=1e-6), b
        assert (joint[b] - x[b]).abs().max() <= eps[b] + 1e-7


def las_at_cfg(*overrides):
    return load_config(ATConfig, CONFIGS / "cifar10_las_at.yaml", ["model.preprocess=01", *overrides])


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model("WideResNet", 10, depth=10, widen_factor=1)


@pytest.mark.slow
def test_the_attack_is_clipped_to_eps_and_the_strategy_learns_every_interval_steps():
    torch.manual_seed(2)
    cheap = ("las_at.interval=2", "las_at.steps=[1, 2]", "las_at.reward_steps=2", "las_at.reward_restarts=1")
    method, model = build_method(las_at_cfg(*cheap), 10), tiny_model()
    x, targets = torch.rand(6, 3, 32, 32), torch.arange(6)
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = [{k: v.clone() for k, v in method.strategy.state_dict().items()}]
    for _ in range(3):
        x_adv = method.adversarial_examples(
            model, x, targets, cross_entropy_objective(targets), (8 / 255, 2 / 255, 10), method_attack()
        )
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-7 and 0 <= x_adv.min() and x_adv.max() <= 1
        snapshots.append({k: v.clone() for k, v in method.strategy.state_dict().items()})
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [False, True, False]  # their curr_step counts from 1: the 2nd step updates, the 1st and 3rd not
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model_before.items())  # the look-ahead is a copy
    assert method.steps_taken == 3 and set(method.epoch_metrics()) >= {"las_at_reward", "las_at_sampled_eps"}
    assert {name: len(value) for name, value in method.last_actions.items()} == {name: 6 for name in las_at.HEADS}


def method_attack():
    return las_at_cfg().attack


def test_the_reward_is_the_attack_loss_plus_the_look_ahead_copys_accuracies():
    overrides = ("las_at.robust_weight=4", "las_at.clean_weight=2", "las_at.reward_steps=3", "awp.enabled=false")
    torch.manual_seed(3)
    method, model = build_method(las_at_cfg(*overrides), 10), tiny_model()
    method.epoch_start(1, 0.05)
    x, targets = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    x_adv = (x + 8 / 255 * torch.rand_like(x).sign()).clamp(0, 1)
    model.train()
    numbers = torch.Generator()
    numbers.set_state(method.sampling.get_state())  # the start noise the reward will draw
    reward, parts = las_at_reward(method, model, x, x_adv, targets)
    assert model.training and all(p.grad is None for p in model.parameters())  # the model is untouched
    # by hand: the target's CE on the sampled examples; a copy after one SGD step (lr 0.05, momentum 0.9, weight
    # decay 5e-4) on CE smoothed to 0.7 / (0.3 / 9); its accuracies under PGD-3 (8/255, 2/255, 2 restarts, train mode)
    with torch.no_grad():
        expected_loss = F.cross_entropy(copy.deepcopy(model).eval()(x_adv), targets).clamp(0, 10)
    ahead = copy.deepcopy(model).train()
    target = torch.full((8, 10), 0.3 / 9)
    target[torch.arange(8), targets] = 0.7
    loss = -(target * F.log_softmax(ahead(x_adv), dim=1)).sum(1).mean()
    torch.optim.SGD(ahead.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4).zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in ahead.parameters():
            p -= 0.05 * (p.grad + 5e-4 * p)
    best, best_loss = None, None
    for _ in range(2):
        x_pgd = (x + 8 / 255 * (2 * torch.rand(x.shape, generator=numbers) - 1)).clamp(0, 1)
        for _ in range(3):
            x_pgd.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(ahead(x_pgd), targets), [x_pgd])
            x_pgd = torch.min(torch.max(x_pgd.detach() + 2 / 255 * grad.sign(), x - 8 / 255), x + 8 / 255).clamp(0, 1)
        with torch.no_grad():
            losses = F.cross_entropy(ahead(x_pgd), targets, reduction="none")
        if best is None:
            best, best_loss = x_pgd, losses
        else:
            best = torch.where((losses >= best_loss)[:, None, None, None], x_pgd, best)
            best_loss = torch.maximum(losses, best_loss)
    ahead.eval()
    with torch.no_grad():
        robust = (ahead(best).argmax(1) == targets).double().mean().item()
        clean = (ahead(x).argmax(1) == targets).double().mean().item()
    assert parts["attack_loss"] == pytest.approx(float(expected_loss), rel=1e-6)
    assert (parts["robust"], parts["clean"]) == (pytest.approx(robust), pytest.approx(clean))
    assert reward == pytest.approx(parts["attack_loss"] + 4 * parts["robust"] + 2 * parts["clean"])


# --- several processes, a resumed run, bad values -----------------------------------------------


def _two_process_worker(rank, world_size, init_file, x, targets, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(5)  # the method's and the model's initialisation (rank-independent here)
        method, model = build_method(las_at_cfg(), 10), tiny_model()
        rows = slice(rank * 4, rank * 4 + 4)  # each process holds its share of the global batch of 8
        x_adv = method.adversarial_examples(
            model,
            x[rows],
            targets[rows],
            cross_entropy_objective(targets[rows]),
            (8 / 255, 2 / 255, 10),
            method_attack(),
        )
        state = {"strategy": method.strategy.state_dict(), "actions": method.last_actions, "x_adv": x_adv}
        torch.save({**state, "sampling": method.sampling.get_state()}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_draw_one_process_decisions_and_strategy_update(tmp_path):
    torch.manual_seed(4)
    x, targets = torch.rand(8, 3, 32, 32), torch.arange(8)
    mp.spawn(
        _two_process_worker, args=(2, str(tmp_path / "init"), x, targets, str(tmp_path / "two.pt")), nprocs=2, join=True
    )
    torch.manual_seed(5)
    method, model = build_method(las_at_cfg(), 10), tiny_model()
    x_adv = method.adversarial_examples(
        model, x, targets, cross_entropy_objective(targets), (8 / 255, 2 / 255, 10), method_attack()
    )
    for rank in (0, 1):  # each process: one process's decisions, update and examples of its rows
        two = torch.load(f"{tmp_path / 'two.pt'}.{rank}", weights_only=True)
        for name in las_at.HEADS:
            assert torch.equal(two["actions"][name], method.last_actions[name]), name
        for key, value in method.strategy.state_dict().items():
            torch.testing.assert_close(two["strategy"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(two["sampling"], method.sampling.get_state())
        torch.testing.assert_close(two["x_adv"], x_adv[rank * 4 : rank * 4 + 4], rtol=0, atol=1e-6)


def las_at_run(data_root, out_dir, name, *extra):
    return [
        "--config", str(CONFIGS / "cifar100_las_at.yaml"), f"data.root={data_root}", "data.verify_checksum=false",
        "data.num_workers=0", "data.batch_size=25", "data.validation_size=250", "data.test_batch_size=50",
        "model.arch=WideResNet", "model.depth=10", "model.widen_factor=1", "epochs=2", "las_at.interval=1",
        "las_at.steps=[1, 2]", "las_at.reward_steps=1", "las_at.reward_restarts=1", "device=cpu",
        f"out_dir={out_dir}", f"name={name}", "eval.num_examples=10", "eval.pgd_steps=1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_two_las_at_epochs_stopped_and_resumed_equal_an_uninterrupted_run(cifar100_root, tmp_path):
    with torch.random.fork_rng():
        assert main(las_at_run(cifar100_root, tmp_path, "straight")) == 0
    with torch.random.fork_rng():
        assert main(las_at_run(cifar100_root, tmp_path, "split", "stop_after=1")) == 0
    with torch.random.fork_rng():
        assert main(las_at_run(cifar100_root, tmp_path, "split", "resume=true")) == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert straight["model"].keys() == split["model"].keys()
    assert all(torch.equal(straight["model"][k], split["model"][k]) for k in straight["model"])
    tensors = {k: v for k, v in straight["method"].items() if isinstance(v, torch.Tensor)}
    assert any(k.startswith("strategy.") for k in tensors)
    assert all(torch.equal(v, split["method"][k]) for k, v in tensors.items())
    extra, resumed = straight["method"]["_extra_state"], split["method"]["_extra_state"]
    assert extra["steps_taken"] == resumed["steps_taken"] == 4  # 2 batches of 25 an epoch
    assert torch.equal(extra["sampling"], resumed["sampling"])
    for slot, state in extra["policy_optimizer"]["state"].items():  # the strategy's momentum (CIFAR-100: 0.9)
        assert torch.equal(state["momentum_buffer"], resumed["policy_optimizer"]["state"][slot]["momentum_buffer"])
    records = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert all(1 <= r["las_at_sampled_steps"] <= 2 and 7 <= r["las_at_sampled_eps"] <= 15 for r in records)
    model_parameters = sum(
        1 for key in straight["model"] if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    optimised = sum(len(group["params"]) for group in straight["optimizer"]["param_groups"])
    assert optimised == model_parameters  # the strategy network is not in the model's optimiser
    best = load_file(tmp_path / "straight" / "best.pt")["model"]
    assert best.keys() == build_model("WideResNet", 100, depth=10, widen_factor=1).state_dict().keys()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack.norm=l2"], "method las_at attacks in l_inf"),
        (["data.augment=autoaug"], "method las_at takes one view"),
        (["las_at.epsilons=[]"], "'las_at.epsilons' is empty"),
        (["las_at.interval=0"], "las_at.interval"),
        (["las_at.step_sizes=[0]"], "las_at.step_sizes"),
        (["las_at.lookahead_label_smoothing=1"], "las_at.lookahead_label_smoothing"),
        (["attack.eps_ramp=true"], "'attack.eps_ramp' ramps the schedule's budget"),
        (["las_at.reward_epsilon=8"], "'las_at.reward_epsilon' must be at most 1"),
        (["las_at.steps=[]"], "'las_at.steps' is empty"),
        (["las_at.epsilons=[0]"], "las_at.epsilons"),
        (["las_at.policy_lr=0"], "las_at.policy_lr"),
        (["las_at.policy_momentum=1"], "las_at.policy_momentum"),
        (["las_at.policy_weight_decay=-1"], "las_at.policy_weight_decay"),
        (["las_at.clip_grad_norm=0"], "las_at.clip_grad_norm"),
        (["las_at.robust_weight=-1"], "las_at.robust_weight"),
        (["las_at.clean_weight=-1"], "las_at.clean_weight"),
        (["las_at.reward_step_size=0"], "las_at.reward_step_size"),
        (["las_at.reward_steps=0"], "las_at.reward_steps"),
        (["las_at.reward_restarts=0"], "las_at.reward_restarts"),
        (["las_at.intervals=2"], "las_at.intervals"),
    ],
)
def test_bad_values_of_the_las_at_knobs_end_in_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_method(las_at_cfg(*overrides))
