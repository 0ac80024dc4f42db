"""The per-epoch monitor: clean and PGD accuracy on a test subset, without autocast, in eval mode.

It tracks training and picks best.pt; the robustness number to report is AutoAttack's
(`adv_training.auto_attacks`, always strict float32). It runs at the run's float32 matrix
precision (`engine.environment.configure_precision`): TF32 in tf32 and bf16 runs, where a strict
float32 monitor would cost a large share of a bf16 epoch and TF32's products keep the
budget of 8/255 (far above TF32's rounding of the images), strict float32 in fp32 runs.

The attack's random start of each test image is a function of the run's seed and the
image's index (`adv_training.attacks.pgd`'s ``start_keys``), drawn for a whole batch at once,
not from the training RNG. So the monitor gives the same number under any number of processes (with the
batches of `engine.data.make_eval_loader`, each computed as one process computes it), the
same images start from the same points at every epoch, and evaluating does not move the
training's random stream.
"""

from typing import Dict

import torch

from engine.distributed import reduce_sum

from .attacks import attack_mode, pgd
from .methods import cross_entropy_objective, margin_objective

OBJECTIVES = {"ce": cross_entropy_objective, "margin": margin_objective}


def clean_and_pgd_accuracy(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    channels_last: bool = False,
    seed: int = 0,
    objective: str = "ce",
) -> Dict[str, float]:
    """Clean and PGD-``steps`` accuracy (``objective`` ce or margin, uniform random start) in
    percent, summed over processes.

    ``loader`` yields ``(images, targets, indices)`` (`engine.data.WithIndices`); image ``i``'s
    random start depends only on (``seed``, ``i``). This is the training-time monitor; the
    number to report is AutoAttack's.
    """
    correct_clean = torch.zeros((), dtype=torch.long, device=device)
    correct_robust = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    with attack_mode(model, eval_mode=True):
        for images, targets, indices in loader:
            images, targets = images.to(device), targets.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                correct_clean += (model(images).argmax(1) == targets).sum()
            if steps > 0:
                adversarial = pgd(
                    model,
                    images,
                    OBJECTIVES[objective](targets),
                    eps=eps,
                    step_size=step_size,
                    steps=steps,
                    norm=norm,
                    random_start="uniform",
                    start_keys=indices,
                    start_seed=seed,
                )
                with torch.no_grad():
                    correct_robust += (model(adversarial).argmax(1) == targets).sum()
            seen += targets.numel()
    counts = reduce_sum(torch.stack([correct_clean, correct_robust, seen])).tolist()
    total = max(counts[2], 1)
    result = {"clean_acc": 100.0 * counts[0] / total}
    if steps > 0:
        result["robust_acc"] = 100.0 * counts[1] / total
    return result
