"""Does bf16 see the adversarial perturbation? The change of the logits for x_adv - x, bf16 against fp32.

    python bench/bf16_perturbation.py                          # WRN-16-2, CPU bf16 autocast
    python bench/bf16_perturbation.py --arch WideResNet34_10 --device cuda --batch-size 256

For each budget eps of IKL-AT's ramp (eps_t = 8/255 * epoch / 200) it takes one
perturbation of that size, delta = eps * sign(grad of CE in fp32) (the first step of the
attack), and compares the change of the logits that it causes,

    change_p = f_p(x + delta) - f_p(x),    p in {fp32, bf16},

by their cosine (over the whole batch of logits) and by the norm of the bf16 error
relative to the fp32 change, ||change_bf16 - change_fp32|| / ||change_fp32||. A cosine
near 1 and an error well under 1 mean bf16 sees the perturbation as fp32 does; an error
above 1 means rounding noise dominates. Rows are printed for the layers of `build_model`
(stem and head outside autocast, `models.float32_ends`, at the TF32 a bf16 run sets), for
every layer in bf16 (plain stem and head, the state before), and for TF32 (no autocast,
convolutions and matrix products on TF32 operands). TF32 is real on a CUDA GPU; on the CPU
it is emulated by rounding the float32 operands of every convolution and matrix product to
TF32's 10-bit mantissa (`TF32Operands`).

Random images (uniform in [0, 1]) and a freshly initialised model in eval mode: the
question is one of number formats, which trained weights change little. Prints a table;
asserts nothing.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from models import build_model  # noqa: E402
from models.float32_ends import Float32Conv2d, Float32Linear  # noqa: E402

EPOCHS = (1, 2, 5, 10, 25, 50, 100, 200)


def plain_ends(model: nn.Module) -> nn.Module:
    """The same model with its float32 stem and head swapped back for plain layers (shared weights)."""
    for name, module in list(model.named_modules()):
        if type(module) in (Float32Conv2d, Float32Linear):
            plain = nn.Conv2d.__new__(nn.Conv2d) if isinstance(module, nn.Conv2d) else nn.Linear.__new__(nn.Linear)
            plain.__dict__ = module.__dict__.copy()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """float32 rounded to the nearest number with TF32's 10 mantissa bits (its 13 lowest bits zero)."""
    bits = tensor.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view_as(tensor)


class TF32Operands(TorchDispatchMode):
    """Convolutions and matrix products of float32 operands rounded to TF32, accumulated in float32:
    what TF32 tensor cores compute, for a CPU that has none."""

    PRODUCTS = {
        torch.ops.aten.convolution.default: (0, 1),
        torch.ops.aten.mm.default: (0, 1),
        torch.ops.aten.addmm.default: (1, 2),
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        operands = self.PRODUCTS.get(func, ())
        args = tuple(round_to_tf32(a) if i in operands and a.dtype == torch.float32 else a for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


def logits(model, x, precision):
    """fp32, bf16 (autocast) or tf32 logits of ``x``, as float32, as training computes them: a bf16
    run's float32 layers (the stem and the head) run with TF32 on (`engine.environment.configure_precision`)."""
    tf32 = precision in ("tf32", "bf16")
    emulate = tf32 and x.device.type != "cuda"  # rounds float32 operands only: bf16 ones are TF32 already
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if emulate:
                with TF32Operands():
                    return model(x).float()
            return model(x).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def compare(model, x, delta, precision="bf16"):
    reference = logits(model, x + delta, "fp32") - logits(model, x, "fp32")
    change = logits(model, x + delta, precision) - logits(model, x, precision)
    cosine = F.cosine_similarity(change.flatten(), reference.flatten(), dim=0).item()
    error = ((change - reference).norm() / reference.norm()).item()
    return cosine, error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="WideResNet")
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--widen-factor", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    kwargs = dict(depth=args.depth, widen_factor=args.widen_factor) if args.arch == "WideResNet" else {}
    model = build_model(args.arch, args.num_classes, dataset="cifar100", **kwargs).to(device).eval()
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), targets), [x])
    x, direction = x.detach(), grad.sign()

    plain = plain_ends(build_model(args.arch, args.num_classes, dataset="cifar100", **kwargs).to(device).eval())
    plain.load_state_dict(model.state_dict())

    print(
        f"{args.arch}{'-%d-%d' % (args.depth, args.widen_factor) if args.arch == 'WideResNet' else ''}, "
        f"batch {args.batch_size}, {device}, torch {torch.__version__}"
    )
    tf32 = "TF32" if device.type == "cuda" else "TF32 (emulated)"
    print("cosine / relative error of the logit change against fp32's")
    print(f"| epoch of 200 | eps (/255) | bf16, float32 stem+head | bf16, every layer | {tf32} |")
    print("|---:|---:|---:|---:|---:|")
    for epoch in EPOCHS:
        eps = 8 / 255 * epoch / 200
        delta = (x + eps * direction).clamp(0, 1) - x
        cells = [compare(model, x, delta), compare(plain, x, delta), compare(model, x, delta, "tf32")]
        print(f"| {epoch} | {eps * 255:.2f} | " + " | ".join(f"{c:.4f} / {e:.3f}" for c, e in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
