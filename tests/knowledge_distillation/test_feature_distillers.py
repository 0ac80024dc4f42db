"""The feature distillers against mdistiller's own code, and the short formulas by hand.

Golden values: ``tests/golden/feature_distillers.json`` holds, per distiller, the loss and the
gradients to the student's features that mdistiller's code (megvii-research/mdistiller, commit
a08d46f, ``mdistiller/distillers/<Method>.py``) computes on the fixed inputs `fixed_batch` builds,
with its trainable parts set by `fill_parameters` (the same values, by parameter name). They were
computed outside this repository by running mdistiller's distiller classes on these inputs (the
recipe is in the JSON's ``recipe``); nothing here imports mdistiller.
"""

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.config import load_config
from knowledge_distillation.config import KDConfig
from knowledge_distillation.distillers import DISTILLERS, FeatureBatch, build_distiller
from knowledge_distillation.feature_modules import CRDSampler
from losses import feature as feature_losses
from models import build_model

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "feature_distillers.json"
FEATURE_METHODS = ["fitnet", "at", "nst", "pkt", "kdsvd", "ofd", "rkd", "vid", "sp", "crd", "reviewkd"]

# The pair of the golden cases: a thin student and a 4x wider teacher (channels differ, so every
# connector maps between widths), batch 4, CIFAR-sized features.
STUDENT, TEACHER, BATCH = "resnet8", "resnet32x4", 4
CRD_NUM_DATA, CRD_K, CRD_DIM = 50, 8, 16


@functools.lru_cache(maxsize=1)
def pair_models():
    """The student and the teacher the distillers are built from (their shapes; the teacher's BatchNorm
    weights and biases, which OFD's margins read, filled with seeded values). Built once: nothing here
    changes them (a distiller reads their shapes and BatchNorms when it is built)."""
    torch.manual_seed(0)
    student, teacher = build_model(STUDENT, 100), build_model(TEACHER, 100)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in sorted(teacher.state_dict().items()):
            if ".bn" in name and (name.endswith(".weight") or name.endswith(".bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * 0.5)
    return student, teacher  # float32: the stem and head compute in float32 (models.float32_ends)


def fixed_features(model, seed: int, dtype=torch.float64):
    """Random features with ``model``'s shapes: ``feats`` (non-negative), ``preact_feats`` and
    ``pooled_feat``, each an independent leaf that requires grad."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _, reference = model.eval().forward_features(torch.zeros(2, 3, 32, 32))

    def leaf(shape, relu=False):
        value = torch.randn((BATCH, *shape[1:]), generator=generator, dtype=torch.float64)
        return (value.relu() if relu else value).to(dtype).requires_grad_(True)

    return {
        "feats": [leaf(f.shape, relu=True) for f in reference["feats"]],
        "preact_feats": [leaf(f.shape) for f in reference["preact_feats"]],
        "pooled_feat": leaf(reference["pooled_feat"].shape),
    }


def fill_parameters(module: torch.nn.Module, seed: int) -> None:
    """Every floating state entry of ``module`` set from a seeded generator, in sorted name order
    (running variances positive; CRD's normalisers left unset)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            if not tensor.is_floating_point() or name.endswith("normalizers"):
                continue
            value = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                value = value.abs() + 0.5
            tensor.copy_(value * 0.5)


def config(method: str, *overrides: str) -> KDConfig:
    crd = [f"crd.nce_k={CRD_K}", f"crd.feat_dim={CRD_DIM}"] if method == "crd" else []
    return load_config(
        KDConfig,
        None,
        [f"method={method}", f"student.arch={STUDENT}", f"teacher.arch={TEACHER}", *crd, *overrides],
    )


def crd_targets() -> torch.Tensor:
    return torch.arange(CRD_NUM_DATA) % 10


def crd_indices():
    """The batch's dataset indices and contrast indices (positive first) of the golden CRD case."""
    generator = torch.Generator().manual_seed(9)
    indices = torch.randperm(CRD_NUM_DATA, generator=generator)[:BATCH]
    contrast = torch.randint(CRD_NUM_DATA, (BATCH, CRD_K + 1), generator=generator)
    contrast[:, 0] = indices
    return indices, contrast


def build(method: str, *overrides: str):
    student, teacher = pair_models()
    distiller = build_distiller(
        config(method, *overrides), student, teacher, input_size=(3, 32, 32), train_targets=crd_targets()
    )
    fill_parameters(distiller, seed=7)
    dtype = torch.float32 if method == "crd" else torch.float64  # mdistiller's memory bank is float32
    return distiller.to(dtype), fixed_features(student, 1, dtype), fixed_features(teacher, 2, dtype)


def distill_loss(distiller, student, teacher, epoch=30):
    if distiller.name == "crd":
        indices, contrast = crd_indices()
        return distiller.crd_loss(student["pooled_feat"], teacher["pooled_feat"], indices, contrast)
    return distiller.feature_loss(FeatureBatch(student, teacher), torch.zeros(BATCH, dtype=torch.long), epoch)


def gradient_summary(features):
    """Per student leaf: (probe . grad, sum |grad|) with a fixed probe, or None without gradient."""
    generator = torch.Generator().manual_seed(11)
    leaves = [*features["feats"], *features["preact_feats"], features["pooled_feat"]]
    summary = []
    for leaf in leaves:
        probe = torch.randn(leaf.shape, generator=generator, dtype=torch.float64)
        summary.append(
            None if leaf.grad is None else [float((leaf.grad.double() * probe).sum()), float(leaf.grad.abs().sum())]
        )
    return summary


def case(method, *overrides, epoch=30):
    distiller, student, teacher = build(method, *overrides)
    loss = distill_loss(distiller, student, teacher, epoch)
    loss.backward()
    return distiller, float(loss.detach()), gradient_summary(student)


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


def test_every_mdistiller_distiller_is_registered():
    assert set(FEATURE_METHODS) <= set(DISTILLERS.names())
    for method in FEATURE_METHODS:
        assert DISTILLERS[method].needs_features and DISTILLERS[method].name == method


def test_golden_file_names_its_source(golden):
    assert "a08d46f" in golden["source"] and "mdistiller" in golden["source"]
    assert set(golden["cases"]) == {*FEATURE_METHODS, "reviewkd_warmup", "vid_fixed_variance"}


CASES = [(m, (), 30) for m in FEATURE_METHODS] + [
    ("reviewkd_warmup", (), 5),
    ("vid_fixed_variance", ("vid.learn_variance=false",), 30),
]


@pytest.mark.parametrize("name, overrides, epoch", CASES, ids=[c[0] for c in CASES])
def test_loss_and_gradients_equal_mdistillers(name, overrides, epoch, golden):
    method = name.split("_")[0]
    _, loss, gradients = case(method, *overrides, epoch=epoch)
    expected = golden["cases"][name]
    tolerance = 1e-5 if method in ("crd", "kdsvd") else 1e-9  # float32 memory bank; KDSVD's SVD in float32
    assert loss == pytest.approx(expected["loss"], rel=tolerance, abs=1e-12)
    assert [g is None for g in gradients] == [g is None for g in expected["gradients"]]
    for got, want in zip(gradients, expected["gradients"]):
        if want is not None:
            assert got == pytest.approx(want, rel=max(tolerance, 1e-7), abs=1e-9)


def test_crd_memory_after_the_update_equals_mdistillers(golden):
    distiller, _, _ = case("crd")
    indices, _ = crd_indices()
    expected = golden["cases"]["crd"]
    memory = [distiller.contrast.memory_v1[indices].double(), distiller.contrast.memory_v2[indices].double()]
    assert [float(m.sum()) for m in memory] == pytest.approx(expected["memory_sums"], rel=1e-5)
    assert distiller.contrast.normalizers.tolist() == pytest.approx(expected["normalizers"], rel=1e-6)


def test_reviewkd_fusion_shapes_are_mdistillers_config():
    distiller, _, _ = build("reviewkd")
    # mdistiller's configs/cifar100/reviewkd.yaml states these for resnet32x4 -> resnet8x4; for
    # resnet8 (16, 32, 64 wide stages) the student's widths are the thin ones.
    assert distiller.shapes == [1, 8, 16, 32] and distiller.out_shapes == [1, 8, 16, 32]
    assert distiller.in_channels == [16, 32, 64, 64] and distiller.out_channels == [64, 128, 256, 256]


# --- hand-computed cases ----------------------------------------------------------------------


def test_attention_transfer_by_hand():
    # One stage, one sample, 1 channel of 2 pixels: a(f) = f^2 / ||f^2||.
    f_s = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)
    f_t = torch.tensor([[[[2.0, 1.0]]]], dtype=torch.float64)
    a_s = torch.tensor([1.0, 4.0], dtype=torch.float64) / math.sqrt(17)
    a_t = torch.tensor([4.0, 1.0], dtype=torch.float64) / math.sqrt(17)
    expected = float(((a_s - a_t) ** 2).mean())
    assert float(feature_losses.attention_transfer_loss([f_s], [f_t])) == pytest.approx(expected, rel=1e-12)
    # A larger student map is average-pooled to the teacher's size first: 4x4 blocks of a 2x2 map.
    coarse = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    fine = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert float(feature_losses.attention_transfer_loss([fine], [coarse])) == pytest.approx(0.0, abs=1e-15)


def test_sp_by_hand():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # Gram = I, rows unit
    f_t = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # Gram = 2s, rows (1,1)/sqrt2
    g_t = torch.full((2, 2), 1 / math.sqrt(2), dtype=torch.float64)
    expected = float(((g_t - torch.eye(2, dtype=torch.float64)) ** 2).sum() / 4)
    assert float(feature_losses.sp_loss(f_s, f_t)) == pytest.approx(expected, rel=1e-12)


def test_pkt_is_zero_for_equal_features_and_hand_value():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(feature_losses.pkt_loss(f, f)) == pytest.approx(0.0, abs=1e-12)
    # Student: orthogonal rows -> similarities [[1, .5], [.5, 1]] -> rows [2/3, 1/3]; teacher: equal rows -> [1/2, 1/2].
    f_t = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    q, p = 0.5, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    expected = float((q * torch.log((q + 1e-7) / (p + 1e-7))).sum() * 2 / 4)
    assert float(feature_losses.pkt_loss(f, f_t)) == pytest.approx(expected, rel=1e-6)


def test_rkd_distance_term_by_hand():
    # Three points on a line at 0, 1, 3 (student) and 0, 2, 6 (teacher): the same after mean-normalising.
    f_s = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    assert float(feature_losses.rkd_loss(f_s, 2 * f_s, angle_weight=0.0)) == pytest.approx(0.0, abs=1e-12)
    # Teacher 0, 1, 2: distances [1, 2, 1] / (4/3); student [1, 3, 2] / 2. SmoothL1 over the 9 entries (zero diagonal).
    f_t = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    d_s = torch.tensor([[0, 1, 3], [1, 0, 2], [3, 2, 0]], dtype=torch.float64) / 2
    d_t = torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=torch.float64) / (4 / 3)
    expected = 25.0 * float(F.smooth_l1_loss(d_s, d_t))
    assert float(feature_losses.rkd_loss(f_s, f_t, angle_weight=0.0)) == pytest.approx(expected, rel=1e-9)


def test_ofd_margin_by_hand():
    # N(0, 1): E[x | x < 0] = -phi(0) / Phi(0) = -sqrt(2 / pi); a far-positive mean gives -3 sigma.
    margins = feature_losses.ofd_margins(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 20.0]))
    assert margins.flatten().tolist() == pytest.approx([-math.sqrt(2 / math.pi), -6.0], rel=1e-6)


def test_ofd_partial_distance_by_hand():
    # Teacher t and margin m = -1 per element; student s; the three cases of the partial L2.
    t = torch.tensor([-2.0, -0.5, 1.0, -0.5]).view(1, 4, 1, 1)
    s = torch.tensor([0.0, 0.0, 3.0, -1.0]).view(1, 4, 1, 1)
    m = torch.full((1, 4, 1, 1), -1.0)
    # [s > m, t <= m]: (0 + 1)^2; [s > t, m < t <= 0]: (0 + .5)^2; [t > 0]: (3 - 1)^2; s < t, t in (m, 0]: 0.
    assert float(feature_losses.ofd_loss([s], [t], [m])) == pytest.approx(1 + 0.25 + 4, rel=1e-12)


def test_hcl_by_hand():
    # 2x2 maps: the full MSE (weight 1) and the 1x1 pooled MSE (weight 1/2), over 1.5.
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    f_t = torch.zeros_like(f_s)
    expected = (30 / 4 + 0.5 * 2.5**2) / 1.5
    assert float(feature_losses.hcl_loss([f_s], [f_t])) == pytest.approx(expected, rel=1e-12)


def test_contrast_loss_by_hand():
    scores = torch.tensor([[0.5, 0.1, 0.2]], dtype=torch.float64)  # m = 2 negatives, N = 4: m Pn = 0.5
    expected = -(math.log(0.5 / (1.0 + 1e-7)) + math.log(0.5 / (0.6 + 1e-7)) + math.log(0.5 / (0.7 + 1e-7)))
    assert float(feature_losses.contrast_loss(scores, num_data=4)) == pytest.approx(expected, rel=1e-12)


def test_vid_by_hand():
    # Variance softplus(a) + eps with softplus(a) = 1: NLL = 0.5 * ((mu - t)^2 / (1 + eps) + log(1 + eps)).
    mu, t = torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 1.0)
    log_scale = torch.tensor([math.log(math.e - 1)])
    expected = 0.5 * (4 / (1 + 1e-5) + math.log(1 + 1e-5))
    assert float(feature_losses.vid_loss(mu, t, log_scale, eps=1e-5)) == pytest.approx(expected, rel=1e-6)


def test_crd_sampler_draws_other_classes_reproducibly():
    targets = torch.arange(40) % 4
    sampler = CRDSampler(targets, k=12, mode="exact")
    indices = torch.tensor([0, 5, 10, 39])
    drawn = sampler.draw(indices, torch.Generator().manual_seed(3))
    assert drawn.shape == (4, 13) and drawn[:, 0].tolist() == indices.tolist()
    for row, index in zip(drawn, indices):
        negatives = row[1:]
        assert (targets[negatives] != targets[index]).all()  # never the sample's own class
        assert len(set(negatives.tolist())) == 12  # without replacement: 30 candidates for 12
    assert torch.equal(drawn, sampler.draw(indices, torch.Generator().manual_seed(3)))
    relaxed = CRDSampler(targets, k=12, mode="relax").draw(indices, torch.Generator().manual_seed(3))
    assert (targets[relaxed[:, 0]] == targets[indices]).all()
    assert CRDSampler(targets, k=31, mode="exact").replacement  # more negatives than candidates


def test_logit_distillers_have_no_state_and_feature_ones_train_their_parts():
    for method in ("vanilla", "kd", "dkd", "ikl"):
        assert not build_distiller(KDConfig(method=method)).has_state()
    for method, trains in [("fitnet", True), ("at", False), ("ofd", True), ("vid", True), ("crd", True)]:
        distiller, _, _ = build(method)
        assert bool(list(distiller.parameters())) == trains
    fixed, _, _ = build("vid", "vid.learn_variance=false")
    assert all("log_scale" not in name for name, _ in fixed.named_parameters())
    assert any(name.startswith("log_scale") for name, _ in fixed.named_buffers())


# --- every config's distiller, built from its real pair -----------------------------------------

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "knowledge_distillation"


@functools.lru_cache(maxsize=None)
def real_models(arch: str, dataset: str):
    torch.manual_seed(0)
    return build_model(arch, 1000 if dataset == "imagenet" else 100, dataset=dataset)


def one_step(path: Path):
    """The config's distiller built from its teacher and student; one loss and backward on 3 random images
    (RKD's distances and angles are trivial for 2)."""
    cfg = load_config(KDConfig, path, ["crd.nce_k=16"])
    imagenet = cfg.data.dataset == "imagenet"
    size, classes = (224, 1000) if imagenet else (32, 100)
    teacher = real_models(cfg.teacher.arch, cfg.data.dataset).eval()
    student = real_models(cfg.student.arch, cfg.data.dataset).train()
    student.zero_grad(set_to_none=True)
    distiller = build_distiller(
        cfg, student, teacher, input_size=(3, size, size), train_targets=torch.arange(64) % classes
    )
    generator = torch.Generator().manual_seed(0)
    images, targets = torch.randn(3, 3, size, size, generator=generator), torch.randint(classes, (3,))
    with torch.no_grad():
        logits_teacher, features_teacher = teacher.train(distiller.teacher_in_train_mode).forward_features(images)
    teacher.eval()
    logits_student, features_student = student.forward_features(images)
    features = FeatureBatch(features_student, features_teacher, torch.tensor([3, 40, 17]), 0)
    loss, parts = distiller.loss(logits_student, logits_teacher, targets, epoch=30, features=features)
    loss.backward()
    assert math.isfinite(loss.item()) and parts["kd"].item() != 0, path
    assert all(p.grad is not None for p in distiller.parameters()), path
    return cfg, distiller


@pytest.mark.slow
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_cifar100_pair_config_builds_its_distiller_and_takes_a_step(method):
    paths = sorted((CONFIGS / "cifar100" / method).glob("*.yaml"))
    assert len(paths) == 11
    for path in paths:
        cfg, _ = one_step(path)
        assert cfg.method == method


@pytest.mark.slow
def test_imagenet_configs_build_mdistillers_stated_connectors():
    paths = sorted(p for p in (CONFIGS / "imagenet").glob("*/*.yaml") if p.parent.name in FEATURE_METHODS)
    assert len(paths) == 8
    built = {f"{p.parent.name}/{p.stem}": one_step(p)[1] for p in paths}
    # mdistiller's configs/imagenet/<pair>/reviewkd.yaml: SHAPES, OUT_SHAPES, IN_CHANNELS, OUT_CHANNELS.
    r18, mv1 = built["reviewkd/r34_r18"], built["reviewkd/r50_mv1"]
    assert r18.shapes == r18.out_shapes == mv1.shapes == mv1.out_shapes == [1, 7, 14, 28, 56]
    assert r18.in_channels == r18.out_channels == [64, 128, 256, 512, 512]
    assert mv1.in_channels == [128, 256, 512, 1024, 1024] and mv1.out_channels == [256, 512, 1024, 2048, 2048]
    assert mv1.abfs[0].conv1[0].out_channels == 256 and r18.abfs[0].conv1[0].out_channels == 512  # middle width
    # mdistiller's configs/imagenet/<pair>/crd.yaml: CRD.FEAT.STUDENT_DIM / TEACHER_DIM.
    assert built["crd/r34_r18"].embed_s.linear.in_features == built["crd/r34_r18"].embed_t.linear.in_features == 512
    assert (built["crd/r50_mv1"].embed_s.linear.in_features, built["crd/r50_mv1"].embed_t.linear.in_features) == (
        1024,
        2048,
    )


def test_nst_and_fitnet_by_hand():
    # One channel each, unit spatial maps after normalisation: k(s, s) = k(t, t) = 1, k(s, t) = <s, t>^2.
    f_s = torch.tensor([[[[3.0, 0.0]]]], dtype=torch.float64)  # -> (1, 0)
    f_t = torch.tensor([[[[1.0, 1.0]]]], dtype=torch.float64)  # -> (1, 1) / sqrt 2
    assert float(feature_losses.nst_loss([f_s], [f_t])) == pytest.approx(1 + 1 - 2 * 0.5, rel=1e-12)
    assert float(feature_losses.hint_loss(f_s, f_t)) == pytest.approx((4 + 1) / 2, rel=1e-12)


def test_models_a_distiller_cannot_read_are_one_clear_message():
    from engine.errors import UserError

    student, _ = pair_models()
    cfg = config("at", "teacher.arch=PreActResNet18")
    with pytest.raises(UserError, match="PreActResNet18 does not return them"):
        build_distiller(cfg, student, build_model("PreActResNet18", 100), input_size=(3, 32, 32))
    shuffle = build_model("ShuffleV1", 100)
    with pytest.raises(UserError, match="ShuffleV1 has none"):
        build_distiller(config("ofd", "teacher.arch=ShuffleV1"), student, shuffle, input_size=(3, 32, 32))
    with pytest.raises(UserError, match="past the last feature"):
        build_distiller(config("fitnet", "fitnet.hint_layer=9"), student, shuffle, input_size=(3, 32, 32))


def test_crd_sampler_draws_in_chunks_as_in_one(monkeypatch):
    targets = torch.arange(60) % 6
    indices = torch.tensor([0, 7, 14, 21, 28, 35, 42])
    sampler = CRDSampler(targets, k=5, mode="exact")
    whole = sampler.draw(indices, torch.Generator().manual_seed(2))
    monkeypatch.setattr(CRDSampler, "CHUNK_ELEMENTS", 120)  # two rows per chunk
    chunked = sampler.draw(indices, torch.Generator().manual_seed(2))
    assert chunked.shape == whole.shape == (7, 6) and chunked[:, 0].tolist() == indices.tolist()
    for row, index in zip(chunked, indices):
        assert (targets[row[1:]] != targets[index]).all() and len(set(row[1:].tolist())) == 5


def digits_distiller(method, *overrides, train_targets=None):
    cfg = load_config(KDConfig, CONFIGS / "digits_kd.yaml", [f"method={method}", *overrides])
    student, teacher = build_model("digits_cnn_small", 10), build_model("digits_cnn", 10)
    extra = {"train_targets": train_targets} if train_targets is not None else {}
    return build_distiller(cfg, student, teacher, input_size=(1, 8, 8), **extra)


def test_knobs_that_the_pair_or_the_data_cannot_hold_are_refused_by_key(capsys):
    from engine.config import ConfigError

    # the smallest maps after the stem, 16 x 4 x 4 (student) and 64 x 4 x 4 (teacher), have 4 singular vectors
    assert digits_distiller("kdsvd", "kdsvd.k=4").settings.k == 4
    with pytest.raises(ConfigError, match=r"'kdsvd.k' \(5\) asks for more singular vectors than the student's"):
        digits_distiller("kdsvd", "kdsvd.k=5")
    targets = torch.arange(100) % 10
    assert digits_distiller("crd", "crd.nce_k=99", train_targets=targets).sampler is not None
    with pytest.raises(ConfigError, match=r"'crd.nce_k' \(100\) asks for as many negatives .* images \(100\)"):
        digits_distiller("crd", "crd.nce_k=100", train_targets=targets)
    capsys.readouterr()
    digits_distiller("reviewkd", "reviewkd.max_mid_channel=1000")  # capped to the student's width: said
    assert "reviewkd.max_mid_channel=1000 is more than the student's pooled width 32" in capsys.readouterr().out
    digits_distiller("reviewkd", "reviewkd.max_mid_channel=16")
    assert "max_mid_channel" not in capsys.readouterr().out
