"""ACAT and DAJAT as val-iisc/DAJAT (commit f75a71d) trains them: every hyperparameter of each recipe, with
the file it comes from, against the resolved config and its launcher's --print-config; one epoch of each
config on tiny data; the knobs they added (label_smoothing_form, data.validation_per_class,
data.augmented_views, model.view_batchnorm, dajat.js_weight) against hand computations and refused where
they cannot act; DAJAT's loss and Jensen-Shannon term against hand computations, its BatchNorms against the
plain WideResNet, and a run stopped and resumed against an uninterrupted one."""

import dataclasses
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adv_training.config import ATConfig
from adv_training.loaders import build_loaders, held_out_indices
from adv_training.methods import build_method
from adv_training.train import main
from engine.config import ConfigError, load_config
from engine.file_io import load_file
from engine.view_batchnorm import ViewBatchNorm2d, add_view_batchnorms, basic_view_state, batch_views
from losses import jensen_shannon_loss, smoothed_cross_entropy
from models import build_model

from .test_awp_recipes import assert_launcher_prints_recipe, assert_recipe, one_epoch
from .test_train import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "adv_training"


def _rb_wide_resnet():
    """RobustBench's WideResNet layout, written independently in tests/robustbench_layouts.py."""
    spec = importlib.util.spec_from_file_location("robustbench_layouts", ROOT / "tests" / "robustbench_layouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RBWideResNet


RBWideResNet = _rb_wide_resnet()

TRAIN = "train_DAJAT.py"
DEFAULTS = "defaults.py"
README = "README.md"

# key: (value, where val-iisc/DAJAT sets it). The command: train_DAJAT.py --use_defaults CIFAR100_WRN
# --num_auto 0 --epochs 110 --train_budget low (the README's ACAT command, made to parse).
ACAT_CIFAR100 = {
    "name": ("cifar100_acat", "-"),
    "paper_row": ("cifar100_acat", f"{README}: DAJAT_C100.png, ACAT (2), WRN-34-10"),
    "method": ("trades", f"{TRAIN}: loss_base = CE(clean) + beta * KL(adv || clean), --num_auto 0"),
    "epochs": (110, f"{README}: --epochs 110"),
    "seed": (1, f"{DEFAULTS}: CIFAR100_WRN --seed 1"),
    "batchnorm_groups": (1, f"{TRAIN}: nn.DataParallel on an unstated number of GPUs"),
    "label_smoothing": (0.1, f"{DEFAULTS}: CIFAR100_WRN --LS 1; {TRAIN}: LabelSmoothingLoss(smoothing=0.1)"),
    "label_smoothing_form": ("off_target", f"{TRAIN}: true_dist.fill_(smoothing / (cls - 1)), confidence 0.9"),
    "model.arch": ("WideResNet34_10", f"{DEFAULTS}: --arch WideResNet34 (models/wideresnet.py: depth 34, widen 10)"),
    "model.preprocess": ("01", f"{TRAIN}: ToTensor() only, no normalisation"),
    "data.dataset": ("cifar100", f"{DEFAULTS}: CIFAR100_WRN --data CIFAR100"),
    "data.batch_size": (128, f"{DEFAULTS}: --batch-size 128"),
    "data.drop_last": (False, f"{TRAIN}: DataLoader's default"),
    "data.augment": (
        "basic",
        f"{TRAIN}: RandomCrop(32, padding=4), RandomHorizontalFlip(); no views with --num_auto 0",
    ),
    "data.validation_size": (0, f"{TRAIN}: the held-out images are the first 10 of each class"),
    "data.validation_per_class": (10, f"{TRAIN}: count[target] < 10 -> val_indices"),
    "trades.beta": (9.0, f"{DEFAULTS}: CIFAR100_WRN --beta 9.0"),
    "optim.lr": (0.2, f"{DEFAULTS}: --lr 0.2"),
    "optim.momentum": (0.9, f"{DEFAULTS}: --momentum 0.9"),
    "optim.weight_decay": (5e-4, f"{DEFAULTS}: --weight-decay 5e-4"),
    "optim.batchnorm_weight_decay": (True, f"{TRAIN}: SGD(model.parameters(), weight_decay=...)"),
    "optim.nesterov": (False, f"{TRAIN}: optim.SGD without nesterov"),
    "optim.schedule": ("cosine_trades", f"{TRAIN}: lr * 0.5 * (1 + cos((epoch - 1) / epochs * pi)), per epoch"),
    "optim.warmup_epochs": (0, f"{TRAIN}: adjust_learning_rate"),
    "optim.first_epoch_lr": (None, f"{TRAIN}: adjust_learning_rate"),
    "attack.norm": ("linf", f"{DEFAULTS}: --norm l_inf"),
    "attack.epsilon": (8 / 255, f"{DEFAULTS}: --epsilon 8, / 255"),
    "attack.eps_ramp": (True, f"{TRAIN}: varepsilon = epsilon * (epoch / epochs)"),
    "attack.budget": ("low", f"{README}: --train_budget 'low'; {TRAIN}: 2 steps of varepsilon"),
    "attack.random_start": ("normal", f"{TRAIN}: x_natural + 0.001 * torch.randn"),
    "attack.eval_mode": (True, f"{TRAIN}: perturb_input's model.eval()"),
    "attack.freeze_bn_stats": (False, f"{TRAIN}: eval mode"),
    "awp.enabled": (True, f"{DEFAULTS}: --awp-gamma 0.005"),
    "awp.gamma": (0.005, f"{DEFAULTS}: --awp-gamma"),
    "awp.warmup": (10, f"{DEFAULTS}: --awp-warmup 10; {TRAIN}: epoch >= args.awp_warmup (1-based)"),
    "awp.proxy_lr": (0.2, f"{TRAIN}: proxy_optim = SGD(proxy.parameters(), lr=args.lr)"),
    "ema.enabled": (True, f"{TRAIN}: the weight average saved as ours-model-epoch-SWA..."),
    "ema.tau": (0.9996, f"{TRAIN}: tau_list = [0.9996]"),
    "ema.start_epoch": (82, f"{TRAIN}: start_wa = [(150 * args.epochs) // 200]"),
    "ema.warmup_fraction": (0.0, f"{TRAIN}: copy at start_ep, then tau"),
    "ema.average_buffers": (True, f"{TRAIN}: every key of model.state_dict()"),
    "epoch_average.enabled": (False, f"{TRAIN}: no epoch average"),
    "generated.path": ("", f"{TRAIN}: CIFAR only"),
    "eval.select": ("model", f"{TRAIN}: no best checkpoint (best.pt here is an extra; the row is ema.pt)"),
}
ACAT_CIFAR10 = {
    **ACAT_CIFAR100,
    "name": ("cifar10_acat", "-"),
    "paper_row": ("cifar10_acat", f"{README}: DAJAT_C10.png, ACAT (Base, 2step), WRN-34-10"),
    "seed": (1, f"{DEFAULTS}: CIFAR10_WRN --seed 1"),
    "label_smoothing": (0.0, f"{DEFAULTS}: CIFAR10_WRN --LS 0"),
    "data.dataset": ("cifar10", f"{DEFAULTS}: CIFAR10_WRN --data CIFAR10"),
    "data.validation_per_class": (10, f"{TRAIN}: count = np.zeros(100) never all 10 on CIFAR-10: 10 per class"),
    "trades.beta": (10.0, f"{DEFAULTS}: CIFAR10_WRN --beta 10.0"),
}
DAJAT_CIFAR100 = {  # train_DAJAT.py --use_defaults CIFAR100_WRN --epochs 110 --train_budget low: the "2+4" row
    **ACAT_CIFAR100,
    "name": ("cifar100_dajat", "-"),
    "paper_row": ("cifar100_dajat", f"{README}: DAJAT_C100.png, DAJAT (Base, 2*AA), 2+4, WRN-34-10"),
    "method": ("dajat", f"{TRAIN}: (loss_base + loss_auto1 + loss_auto2) / 3 + JS_weight * loss_JS"),
    "data.augment": ("autoaug", f"{TRAIN}: transform_auto = CIFAR10Policy(), crop, flip"),
    "data.augmented_views": (2, f"{DEFAULTS}: --num_auto 2"),
    "data.aug_weight": (1.0, f"{TRAIN}: the views' TRADES terms averaged"),
    "model.view_batchnorm": (True, "models/wideresnet.py: bn*_auto, forward(x, batch_norm='auto')"),
    "dajat.js_weight": (2.0, f"{DEFAULTS}: CIFAR100_WRN --JS_weight 2"),
}
DAJAT_200_CIFAR100 = {  # train_DAJAT.py --use_defaults CIFAR100_WRN
    **DAJAT_CIFAR100,
    "name": ("cifar100_dajat_200", "-"),
    "paper_row": ("cifar100_dajat_200", f"{README}: DAJAT_200.png, WRN-34-10; Addepalli2022Efficient_WRN_34_10"),
    "epochs": (200, f"{DEFAULTS}: CIFAR100_WRN --epochs 200"),
    "attack.budget": ("high", f"{DEFAULTS}: --train_budget high: 5 steps of eps_t / 2 (an if chain)"),
    "ema.start_epoch": (150, f"{TRAIN}: start_wa = [(150 * args.epochs) // 200]"),
}
DAJAT_200_CIFAR10 = {  # train_DAJAT.py --use_defaults CIFAR10_WRN
    **DAJAT_200_CIFAR100,
    "name": ("cifar10_dajat_200", "-"),
    "paper_row": ("cifar10_dajat_200", f"{README}: DAJAT_200.png, WRN-34-10; Addepalli2022Efficient_WRN_34_10"),
    "seed": (1, f"{DEFAULTS}: CIFAR10_WRN --seed 1"),
    "label_smoothing": (0.0, f"{DEFAULTS}: CIFAR10_WRN --LS 0"),
    "data.dataset": ("cifar10", f"{DEFAULTS}: CIFAR10_WRN --data CIFAR10"),
    "trades.beta": (10.0, f"{DEFAULTS}: CIFAR10_WRN --beta 10.0"),
    "dajat.js_weight": (3.0, f"{DEFAULTS}: CIFAR10_WRN --JS_weight 3"),
}
RECIPES = {  # config -> (launcher, the table)
    "cifar100_acat.yaml": ("train_acat_cifar100.sh", ACAT_CIFAR100),
    "cifar10_acat.yaml": ("train_acat_cifar10.sh", ACAT_CIFAR10),
    "cifar100_dajat.yaml": ("train_dajat_cifar100.sh", DAJAT_CIFAR100),
    "cifar100_dajat_200.yaml": ("train_dajat_cifar100_200ep.sh", DAJAT_200_CIFAR100),
    "cifar10_dajat_200.yaml": ("train_dajat_cifar10_200ep.sh", DAJAT_200_CIFAR10),
}


@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_config_resolves_to_the_authors_hyperparameters(config):
    cfg = load_config(ATConfig, CONFIGS / config)
    assert_recipe(dataclasses.asdict(cfg), RECIPES[config][1])


def test_the_acat_and_dajat_launchers_are_exactly_the_listed_ones():
    shipped = {
        path.name for path in (ROOT / "sh").glob("train_*.sh") if "_acat_" in path.name or "_dajat_" in path.name
    }
    assert shipped == {launcher for launcher, _ in RECIPES.values()}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(RECIPES))
def test_each_launcher_prints_its_config_with_the_authors_hyperparameters(config, tmp_path):
    assert_launcher_prints_recipe(*RECIPES[config], config, tmp_path)


def test_the_ascending_budget_ramps_eps_per_epoch_with_two_full_steps():
    from adv_training.attacks import attack_budget

    cfg = load_config(ATConfig, CONFIGS / "cifar100_acat.yaml")
    for epoch in (1, 55, 110):
        eps = 8 / 255 * epoch / 110  # train_DAJAT.py: varepsilon = epsilon * (epoch / epochs)
        assert attack_budget(cfg.attack, epoch, cfg.epochs) == (pytest.approx(eps), pytest.approx(eps), 2)


# --- label smoothing and the held-out split ----------------------------------------------------


def test_off_target_label_smoothing_matches_dajat_target_distribution():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 100, dtype=torch.float64), torch.tensor([0, 7, 99, 7, 42])
    # DAJAT's LabelSmoothingLoss written out: a target of 0.9 on the label, 0.1 / 99 elsewhere
    target = torch.full((5, 100), 0.1 / 99, dtype=torch.float64)
    target[torch.arange(5), targets] = 0.9
    expected = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(smoothed_cross_entropy(logits, targets, 0.1, "off_target"), expected, rtol=0, atol=1e-12)
    # torch's (uniform) form: 0.9 + 0.1 / 100 on the label, 0.1 / 100 elsewhere
    uniform = torch.full((5, 100), 0.1 / 100, dtype=torch.float64)
    uniform[torch.arange(5), targets] += 0.9
    expected_uniform = -(uniform * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert torch.allclose(smoothed_cross_entropy(logits, targets, 0.1, "uniform"), expected_uniform, atol=1e-12)
    plain = F.cross_entropy(logits, targets)
    assert smoothed_cross_entropy(logits, targets, 0.0, "off_target") == plain
    with pytest.raises(ValueError, match="form must be one of"):
        smoothed_cross_entropy(logits, targets, 0.1, "offtarget")


def test_the_trades_natural_term_smooths_in_the_configured_form_and_the_awp_proxy_does_not():
    cfg = load_config(ATConfig, CONFIGS / "cifar100_acat.yaml")
    method = build_method(cfg, 100)
    torch.manual_seed(1)
    logits_adv, logits_natural = torch.randn(4, 100), torch.randn(4, 100)
    targets = torch.tensor([3, 1, 4, 1])
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_natural, 1), reduction="batchmean")
    step = method.loss(logits_adv, logits_natural, targets, None, basic_size=4)
    smoothed = smoothed_cross_entropy(logits_natural, targets, 0.1, "off_target")
    assert torch.allclose(step.total, smoothed + 9.0 * kl, atol=1e-6)
    proxy = method.proxy_loss(logits_adv, logits_natural, targets, None)
    assert torch.allclose(proxy, F.cross_entropy(logits_natural, targets) + 9.0 * kl, atol=1e-6)


def test_validation_per_class_holds_out_the_first_images_of_each_class_in_file_order():
    cfg = load_config(ATConfig, CONFIGS / "cifar100_acat.yaml", ["data.validation_per_class=2"])
    targets = [5, 3, 5, 5, 3, 0, 3, 5, 0, 9]
    # by hand: class 0 -> 5, 8; class 3 -> 1, 4; class 5 -> 0, 2; class 9 -> 9
    assert held_out_indices(cfg, targets).tolist() == [0, 1, 2, 4, 5, 8, 9]
    by_size = load_config(
        ATConfig, CONFIGS / "cifar100_acat.yaml", ["data.validation_per_class=0", "data.validation_size=3"]
    )
    assert held_out_indices(by_size, targets).tolist() == [0, 1, 2]
    none = load_config(ATConfig, CONFIGS / "cifar100_acat.yaml", ["data.validation_per_class=0"])
    assert held_out_indices(none, targets).tolist() == []


def test_the_loaders_train_on_the_images_not_held_out_and_validate_on_the_others(cifar10_root):
    cfg = load_config(
        ATConfig,
        CONFIGS / "cifar10_acat.yaml",
        [
            f"data.root={cifar10_root}",
            "data.verify_checksum=false",
            "data.num_workers=0",
            "eval.split=validation",
            "eval.num_examples=10",
        ],
    )
    loaders = build_loaders(cfg, torch.device("cpu"))
    labels = loaders.train.dataset.dataset.targets  # the real training set under the Subset
    held_out = sorted(set(range(200)) - set(loaders.train.dataset.indices))
    per_class = {label: [i for i in range(200) if labels[i] == label][:10] for label in range(10)}
    assert held_out == sorted(i for indices in per_class.values() for i in indices)
    assert len(loaders.train.dataset) == 100 and len(loaders.monitor.dataset) == 100


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.validation_size=5"], "'data.validation_size' and 'data.validation_per_class' both"),
        (["data.validation_per_class=-1"], "data.validation_per_class"),
        (["label_smoothing_form=off"], "label_smoothing_form"),
        (["data.validation_per_class=0", "eval.split=validation"], "no training image is held out"),
    ],
)
def test_bad_values_of_the_new_knobs_end_in_one_message_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ATConfig, CONFIGS / "cifar100_acat.yaml", overrides)


def test_a_split_that_leaves_no_training_image_names_its_key(cifar100_root, tmp_path):
    from engine.errors import UserError

    cfg = load_config(
        ATConfig,
        CONFIGS / "cifar100_acat.yaml",
        [f"data.root={cifar100_root}", "data.verify_checksum=false", "data.num_workers=0", "eval.num_examples=10"],
    )  # 3 images per class in the fixture: 10 per class holds them all out
    with pytest.raises(UserError, match="data.validation_per_class=10 leaves no training image"):
        build_loaders(cfg, torch.device("cpu"))


# --- one epoch of each config on tiny data --------------------------------------------------


@pytest.mark.parametrize("config", sorted(name for name in RECIPES if "_acat" in name))
def test_one_epoch_of_each_acat_config_trains_with_its_budget_and_writes_its_ema(config, request, tmp_path):
    cfg = load_config(ATConfig, CONFIGS / config)
    data_root = request.getfixturevalue(f"{cfg.data.dataset}_root")
    overrides = one_epoch(data_root, tmp_path, config, held_out=0)
    overrides = [o for o in overrides if not o.startswith("data.validation_size")]
    overrides += [
        "data.validation_per_class=0",
        "data.validation_size=150" if cfg.data.dataset == "cifar10" else "data.validation_size=250",
        "ema.start_epoch=1",
    ]
    with torch.random.fork_rng():
        assert main(overrides) == 0
    run = tmp_path / cfg.name
    (record,) = read_jsonl(run / "metrics.jsonl")
    # epoch 1 of 1: the ramp's last epoch, eps 8/255 in 2 steps of eps
    assert record["attack_steps"] == 2 and record["eps"] == pytest.approx(8 / 255)
    assert record["attack_step_size"] == pytest.approx(8 / 255) and record["awp"] is True
    assert record["lr"] == pytest.approx(0.2)  # cosine_trades: the full rate at epoch 1
    plain = build_model("WideResNet", 100 if cfg.data.dataset == "cifar100" else 10, depth=10, widen_factor=1)
    state = load_file(run / "ema.pt")["model"]
    assert list(state) == list(plain.state_dict())
    assert not list(run.glob("ours-model-epoch-SWA*.pt"))  # no epoch average in their recipe


# --- DAJAT's Jensen-Shannon term ------------------------------------------------------------


def test_the_jensen_shannon_term_matches_a_hand_computation():
    p = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]  # one image, three views
    logits = [torch.tensor([[math.log(v) for v in view]], dtype=torch.float64) for view in p]
    mixture = [sum(view[k] for view in p) / 3 for k in range(3)]
    by_hand = sum(sum(view[k] * math.log(view[k] / mixture[k]) for k in range(3)) for view in p) / 3
    assert jensen_shannon_loss(*logits).item() == pytest.approx(by_hand, abs=1e-12)
    # the batch mean, and zero for identical views
    batch = [torch.cat([view, view]) for view in logits]
    assert jensen_shannon_loss(*batch).item() == pytest.approx(by_hand, abs=1e-12)
    same = torch.randn(4, 10, dtype=torch.float64)
    assert jensen_shannon_loss(same, same, same).abs().item() < 1e-12
    with pytest.raises(ValueError, match="at least two views"):
        jensen_shannon_loss(same)


def test_the_jensen_shannon_term_clamps_only_the_mixture():
    # a view with an exactly zero probability: the KL's 0 * log 0 term is 0 (kl_div), the mixture's log finite
    logits = [torch.tensor([[0.0, -math.inf]], dtype=torch.float64), torch.tensor([[0.0, 0.0]], dtype=torch.float64)]
    value = jensen_shannon_loss(*logits)
    mixture = [0.75, 0.25]
    by_hand = (math.log(1 / 0.75) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) / 2
    assert torch.isfinite(value) and value.item() == pytest.approx(by_hand, abs=1e-12)
    assert np.isclose(sum(mixture), 1.0)


# --- DAJAT: its BatchNorms, its loss, a run ----------------------------------------------------


def tiny_wrn(view_batchnorm: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("WideResNet", 10, depth=10, widen_factor=1)
    if view_batchnorm:
        add_view_batchnorms(model)
    return model


def test_the_view_batchnorm_model_is_the_plain_wideresnet_on_the_basic_batchnorms():
    plain, viewed = tiny_wrn(False), tiny_wrn(True)
    assert basic_view_state(viewed.state_dict()).keys() == plain.state_dict().keys()
    plain.load_state_dict(basic_view_state(viewed.state_dict()), strict=True)
    x = torch.rand(6, 3, 32, 32)
    for mode in ("eval", "train"):
        getattr(plain, mode)(), getattr(viewed, mode)()
        assert torch.equal(viewed(x), plain(x))  # outside batch_views: the basic view's BatchNorms
    # the weights files hold the plain state dict, which loads strictly into RobustBench's WideResNet layout
    from engine.checkpoint import weights_file

    saved = weights_file(viewed.state_dict(), epoch=1)["model"]
    reference = RBWideResNet(depth=10, widen_factor=1, num_classes=10)
    reference.load_state_dict(saved, strict=True)
    plain.eval(), reference.eval()
    assert torch.allclose(reference(x), plain(x), atol=1e-6)


def test_a_network_without_batchnorm2d_gains_no_view_batchnorms():
    assert add_view_batchnorms(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm1d(4))) == 0
    assert add_view_batchnorms(tiny_wrn(False)) == 7  # WRN-10-1: one block of 2 BatchNorms in each of 3 stages, + 1


def test_each_view_is_normalised_by_its_own_batchnorms_with_its_own_statistics():
    viewed = tiny_wrn(True)
    with torch.no_grad():  # distinct augmented parameters and statistics, so that a mix-up shows
        for module in viewed.modules():
            if isinstance(module, ViewBatchNorm2d):
                augmented = module.augmented_view_bn
                augmented.weight.uniform_(0.5, 1.5), augmented.bias.uniform_(-0.5, 0.5)
                augmented.running_mean.uniform_(-0.2, 0.2), augmented.running_var.uniform_(0.5, 2.0)
    basic_model, augmented_model = tiny_wrn(False), tiny_wrn(False)  # the plain network with either set
    basic_model.load_state_dict(basic_view_state(viewed.state_dict()))
    augmented_state = {
        key.replace(".augmented_view_bn", ""): value
        for key, value in viewed.state_dict().items()
        if "augmented_view_bn" in key
    }
    augmented_model.load_state_dict({**basic_view_state(viewed.state_dict()), **augmented_state})
    views = [torch.rand(4, 3, 32, 32) for _ in range(3)]
    batch = torch.cat(views)
    for mode in ("eval", "train"):
        for model in (viewed, basic_model, augmented_model):
            getattr(model, mode)()
        with batch_views(viewed, [4, 4, 4]):
            out = viewed(batch)
        expected = torch.cat([basic_model(views[0]), augmented_model(views[1]), augmented_model(views[2])])
        assert torch.allclose(out, expected, atol=1e-5), mode
    # train mode: each set's running statistics moved as the plain networks' did, view after view
    after = {
        key.replace(".augmented_view_bn", ""): value
        for key, value in viewed.state_dict().items()
        if "augmented_view_bn" in key
    }
    for key, value in augmented_model.state_dict().items():
        if key in after:
            assert torch.allclose(after[key].float(), value.float(), atol=1e-5), key
    assert viewed.bn1.view_rows is None  # restored after batch_views
    with pytest.raises(ValueError, match="rows"), batch_views(viewed, [4, 4]):
        viewed(batch)


def test_the_dajat_loss_is_the_views_trades_terms_averaged_plus_the_jensen_shannon_term():
    cfg = load_config(ATConfig, CONFIGS / "cifar100_dajat.yaml")
    method = build_method(cfg, 100)
    torch.manual_seed(2)
    logits_adv, logits_natural = torch.randn(9, 100, dtype=torch.float64), torch.randn(9, 100, dtype=torch.float64)
    targets = torch.tensor([1, 2, 3] * 3)
    step = method.loss(logits_adv, logits_natural, targets, None, basic_size=3)
    log_p = F.log_softmax(logits_natural, dim=1)
    target = torch.full((9, 100), 0.1 / 99, dtype=torch.float64)
    target[torch.arange(9), targets] = 0.9
    ce = -(target * log_p).sum(1)  # per row, their smoothed CE
    kl = (log_p.exp() * (log_p - F.log_softmax(logits_adv, dim=1))).sum(1)  # per row KL(nat || adv)
    p = [log_p[i : i + 3].exp() for i in (0, 3, 6)]
    mixture = (p[0] + p[1] + p[2]) / 3
    js = sum((q * (q.log() - mixture.log())).sum(1).mean() for q in p) / 3
    trades = sum(ce[i : i + 3].mean() + 9.0 * kl[i : i + 3].mean() for i in (0, 3, 6)) / 3
    assert torch.allclose(step.total, trades + 2.0 * js, rtol=0, atol=1e-10)
    assert torch.allclose(step.natural, ce.mean(), atol=1e-10)


def test_dajat_awp_proxy_sees_the_basic_view_only_with_the_plain_ce():
    from adv_training.train import BatchLoss

    cfg = load_config(ATConfig, CONFIGS / "cifar100_dajat.yaml")
    method, proxy = build_method(cfg, 10), tiny_wrn(True)
    seen = []
    proxy.register_forward_pre_hook(lambda module, inputs: seen.append((inputs[0].shape[0], module.bn1.view_rows)))
    torch.manual_seed(6)
    x_natural, x_adv, targets = torch.rand(12, 3, 32, 32), torch.rand(12, 3, 32, 32), torch.arange(12) % 10
    batch_loss = BatchLoss(method, None, x_natural, x_adv, targets, None, 4, torch.device("cpu"), "fp32", None)
    value = batch_loss.awp_proxy(proxy)
    assert seen == [(4, None), (4, None)]  # the adversarial and clean basic views, through the basic BatchNorms
    plain = tiny_wrn(False)  # the same initial weights, in train mode as the proxy
    logits_adv, logits_natural = plain(x_adv[:4]), plain(x_natural[:4])
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_natural, 1), reduction="batchmean")
    assert torch.allclose(value, F.cross_entropy(logits_natural, targets[:4]) + 9.0 * kl, atol=1e-5)
    seen.clear()
    batch_loss(proxy)
    assert seen == [(12, (4, 4, 4)), (12, (4, 4, 4))]  # the step: every view, each through its own BatchNorms


def dajat_run(data_root, out_dir, name, *extra):
    return [
        "--config",
        str(CONFIGS / "cifar10_dajat_200.yaml"),
        f"data.root={data_root}",
        "data.verify_checksum=false",
        "data.num_workers=0",
        "data.batch_size=25",
        "data.validation_per_class=0",
        "data.validation_size=150",
        "data.test_batch_size=50",
        "model.arch=WideResNet",
        "model.depth=10",
        "model.widen_factor=1",
        "epochs=2",
        "awp.warmup=1",
        "ema.start_epoch=1",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        "eval.num_examples=10",
        "eval.pgd_steps=1",
        *extra,
    ]


@pytest.mark.slow
def test_two_dajat_epochs_stopped_and_resumed_equal_an_uninterrupted_run_and_export_the_plain_model(
    cifar10_root, tmp_path
):
    from adv_training.export import export

    with torch.random.fork_rng():
        assert main(dajat_run(cifar10_root, tmp_path, "straight")) == 0
    with torch.random.fork_rng():
        assert main(dajat_run(cifar10_root, tmp_path, "split", "stop_after=1")) == 0
    with torch.random.fork_rng():
        assert main(dajat_run(cifar10_root, tmp_path, "split", "resume=true")) == 0
    straight, split = load_file(tmp_path / "straight" / "last.pt"), load_file(tmp_path / "split" / "last.pt")
    assert any("augmented_view_bn" in key for key in straight["model"])  # last.pt keeps both sets
    for key, a, b in (
        ("model", straight["model"], split["model"]),
        ("ema", straight["ema"]["module"], split["ema"]["module"]),
    ):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    for slot, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], split["optimizer"]["state"][slot]["momentum_buffer"])
    records = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["attack_steps"] for r in records] == [5, 5] and records[1]["awp"] is True
    # ema.pt (the published model) holds the plain WideResNet, which the export turns into RobustBench's layout
    ema = load_file(tmp_path / "straight" / "ema.pt")["model"]
    assert ema.keys() == build_model("WideResNet", 10, depth=10, widen_factor=1).state_dict().keys()
    # last.pt (both BatchNorm sets) evaluates as the plain model too
    from adv_training.auto_attacks.target import build_network, run_target

    last = build_network(run_target(tmp_path / "straight", "last"))
    assert last.state_dict().keys() == ema.keys()
    export(tmp_path / "straight", "ema", tmp_path / "dajat.pt")
    exported = torch.load(tmp_path / "dajat.pt", weights_only=True)
    RBWideResNet(depth=10, widen_factor=1, num_classes=10).load_state_dict(exported, strict=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.augment=basic", "model.view_batchnorm=false", "data.augmented_views=1"],
            "method dajat trains on augmented views",
        ),
        (["data.aug_weight=0.5"], "'data.aug_weight' (0.5) is not used by method dajat"),
        (["data.augment=basic", "data.augmented_views=1"], "'model.view_batchnorm' gives augmented views"),
        (["batchnorm_groups=3"], "'batchnorm_groups' (3) cannot be combined with model.view_batchnorm"),
        (["data.augment=basic", "model.view_batchnorm=false"], "'data.augmented_views' (2) needs data.augment"),
        (["data.augmented_views=0"], "data.augmented_views"),
        (["dajat.js_weight=-1"], "dajat.js_weight"),
    ],
)
def test_bad_values_of_the_dajat_knobs_end_in_one_message_naming_the_key(overrides, message):
    from adv_training.methods import check_method

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_method(load_config(ATConfig, CONFIGS / "cifar100_dajat.yaml", overrides))


def test_each_view_is_attacked_through_its_own_batchnorms(cifar10_root, tmp_path, monkeypatch):
    import adv_training.methods as methods_module

    real_pgd, seen = methods_module.pgd, []

    def recording_pgd(model, x, *args, **kwargs):
        layer = next(m for m in model.modules() if isinstance(m, ViewBatchNorm2d))
        seen.append((layer.view_rows, x.shape[0]))
        return real_pgd(model, x, *args, **kwargs)

    monkeypatch.setattr(methods_module, "pgd", recording_pgd)
    with torch.random.fork_rng():
        assert main(dajat_run(cifar10_root, tmp_path, "views", "epochs=1", "data.validation_size=175")) == 0
    assert seen == [((25, 25, 25), 75)]  # one batch of 25 images: the basic view and two augmented ones
