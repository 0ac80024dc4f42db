"""Checks our models' ``forward_features`` against mdistiller's own model code and prints the
golden numbers of ``tests/models/test_models_features.py``. Not a test: it needs mdistiller.

    PYTHONPATH=. python tests/golden/mdistiller_features.py <mdistiller checkout or bare git repo>

mdistiller is megvii-research/mdistiller at commit a08d46f; its model files
``mdistiller/models/cifar/{resnet,resnetv2,wrn,vgg,mobilenetv2,ShuffleNetv1,ShuffleNetv2}.py`` and
``mdistiller/models/imagenet/{resnet,mobilenetv1}.py`` need only torch and are loaded one by one
(from a bare repository they are first extracted with ``git show a08d46f:<path>``).

For every model: ``torch.manual_seed(0)``, our bare architecture (``resolve(name, dataset).build``:
the same state dict as ``build_model``, whose float32 stem and head cannot run in float64),
``.double().eval()``; mdistiller's model of the same name, ``.double().eval()``, loads its state
dict strictly (the keys are the same, in the same order); ``torch.manual_seed(1)``,
``x = torch.randn(2, *input_size, dtype=torch.float64)``: 3x32x32 for CIFAR, 3x64x64 for ImageNet,
for which mdistiller's ``AvgPool2d(7)`` is replaced by global average pooling (the same thing at
224x224, where the unpatched models are compared first). Every ``feats``/``preact_feats`` entry,
``pooled_feat`` and the logits must agree to 1e-12 (``allclose``, rtol = atol = 1e-12), in eval
mode and in train mode; our ``forward`` must give the very logits of our ``forward_features``.
mdistiller's MobileNetV2 has no ``preact_feats``: ours are compared with its ``feats``.

It prints ``GOLDEN`` (per entry: shape, sum, sum of squares, and the sum against a linear ramp
from -1 to 1 over the flattened tensor, all float64, computed from mdistiller's tensors),
``STATE_DICT_KEYS`` (the number of mdistiller's state-dict keys and the first 16 hex digits of the
sha256 of the keys joined by newlines), ``STAGE_CHANNELS`` and ``BN_BEFORE_RELU`` (state-dict names
of the modules; None where NotImplementedError is raised) of ours and, on stderr, where those two
differ from mdistiller's.
"""

import contextlib
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from models.registry import resolve

COMMIT = "a08d46f"
FILES = [f"cifar/{n}" for n in ("resnet", "resnetv2", "wrn", "vgg", "mobilenetv2", "ShuffleNetv1", "ShuffleNetv2")]
FILES += ["imagenet/resnet", "imagenet/mobilenetv1"]
RESNETS = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def load_mdistiller(source: Path):
    """mdistiller's model modules by file name (``cifar/resnet`` ...)."""
    folder = source / "mdistiller" / "models"
    if not folder.is_dir():  # a bare repository: extract the files at COMMIT
        folder = Path(tempfile.mkdtemp())
        for rel in FILES:
            text = subprocess.run(
                ["git", "-C", str(source), "show", f"{COMMIT}:mdistiller/models/{rel}.py"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{rel}.py").write_text(text)
    modules = {}
    for rel in FILES:
        spec = importlib.util.spec_from_file_location("mdistiller_" + rel.replace("/", "_"), folder / f"{rel}.py")
        modules[rel] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[rel])
    return modules


def constructors(md):
    cifar = {n: getattr(md["cifar/resnet"], n) for n in RESNETS}
    cifar.update(ResNet18=md["cifar/resnetv2"].ResNet18, ResNet50=md["cifar/resnetv2"].ResNet50)
    cifar.update({n: getattr(md["cifar/wrn"], n) for n in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")})
    cifar.update({n: getattr(md["cifar/vgg"], n + "_bn") for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")})
    cifar.update(
        MobileNetV2=lambda num_classes: md["cifar/mobilenetv2"].mobile_half(num_classes),
        ShuffleV1=md["cifar/ShuffleNetv1"].ShuffleV1,
        ShuffleV2=md["cifar/ShuffleNetv2"].ShuffleV2,
    )
    resnet = md["imagenet/resnet"]
    imagenet = {"ResNet18": resnet.resnet18, "ResNet34": resnet.resnet34, "ResNet50": resnet.resnet50}
    imagenet["MobileNetV1"] = lambda num_classes: md["imagenet/mobilenetv1"].MobileNetV1()  # always 1000 classes
    return [(n, "cifar100", c, 100, (3, 32, 32)) for n, c in cifar.items()] + [
        (n, "imagenet", c, 1000, (3, 64, 64)) for n, c in imagenet.items()
    ]


def summary(t):
    t = t.detach().double()
    ramp = torch.linspace(-1.0, 1.0, t.numel(), dtype=torch.float64).reshape(t.shape)
    return (tuple(t.shape), t.sum().item(), (t * t).sum().item(), (t * ramp).sum().item())


def close(a, b):
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def check(name, ours, md, x):
    with torch.no_grad():
        md_logits, md_feats = md(x)
        logits, feats = ours.forward_features(x)
        plain = ours(x)
    assert set(feats) == {"feats", "preact_feats", "pooled_feat"}, name
    md_feats.setdefault("preact_feats", md_feats["feats"])
    assert torch.equal(logits, plain) and close(logits, md_logits), name
    for key in ("feats", "preact_feats"):
        assert len(feats[key]) == len(md_feats[key]), (name, key)
        for i, (a, b) in enumerate(zip(feats[key], md_feats[key])):
            assert close(a, b), (name, key, i)
    assert close(feats["pooled_feat"], md_feats["pooled_feat"]), name
    return md_logits, md_feats


def bn_names(model):
    names = {id(m): n for n, m in model.named_modules()}
    try:
        return [names[id(bn)] for bn in model.get_bn_before_relu()]
    except NotImplementedError:
        return None


def main(source):
    golden, keys, channels, bns = {}, {}, {}, {}
    for name, dataset, constructor, num_classes, size in constructors(load_mdistiller(Path(source))):
        torch.manual_seed(0)
        ours = resolve(name, dataset).build(num_classes, dataset).double().eval()
        with contextlib.redirect_stdout(sys.stderr):  # mdistiller's MobileNetV2 prints its T and width
            md = constructor(num_classes=num_classes).double().eval()
        md.load_state_dict(ours.state_dict(), strict=True)
        assert list(md.state_dict()) == list(ours.state_dict()), name
        names = list(md.state_dict())
        keys[(name, dataset)] = (len(names), hashlib.sha256("\n".join(names).encode()).hexdigest()[:16])
        if dataset == "imagenet":  # unpatched at 224x224, then global pooling for 64x64
            check(name, ours, md, torch.randn(2, 3, 224, 224, dtype=torch.float64))
            if hasattr(md, "avgpool"):
                md.avgpool = nn.AdaptiveAvgPool2d(1)
            else:
                md.model[14] = nn.AdaptiveAvgPool2d(1)
        torch.manual_seed(1)
        x = torch.randn(2, *size, dtype=torch.float64)
        md_logits, md_feats = check(name, ours, md, x)
        golden[(name, dataset)] = {
            "logits": summary(md_logits),
            **{key: [summary(t) for t in md_feats[key]] for key in ("feats", "preact_feats")},
            "pooled_feat": summary(md_feats["pooled_feat"]),
        }
        check(name, ours.train(), md.train(), x)  # batch statistics: the same values
        channels[(name, dataset)] = ours.get_stage_channels()
        bns[(name, dataset)] = bn_names(ours)
        md_channels = md.get_stage_channels() if hasattr(md, "get_stage_channels") else "(no method)"
        if md_channels != channels[(name, dataset)] or bn_names(md) != bns[(name, dataset)]:
            print(f"differs: {name} {dataset}: stage channels mdistiller {md_channels}, ours", end=" ", file=sys.stderr)
            print(
                f"{channels[(name, dataset)]}; BNs mdistiller {bn_names(md)}, ours {bns[(name, dataset)]}",
                file=sys.stderr,
            )
        print(f"{name} ({dataset}): agrees with mdistiller", file=sys.stderr)
    print(f"GOLDEN = {golden!r}\n\nSTATE_DICT_KEYS = {keys!r}\n")
    print(f"STAGE_CHANNELS = {channels!r}\n\nBN_BEFORE_RELU = {bns!r}")


if __name__ == "__main__":
    main(sys.argv[1])
