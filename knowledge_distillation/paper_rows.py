"""The published numbers of the distillation rows a config may name with ``paper_row``.

Per row: where it was published, and per method the student's top-1 (percent). These are the
authors' numbers, not runs of this code; `experiments.report` prints them beside the measured ones.
"""

from typing import Dict, NamedTuple


class PaperRow(NamedTuple):
    source: str
    values: Dict[str, Dict[str, float]]  # method -> {"top1": ...}


NEURIPS = "Cui et al., NeurIPS 2024"
_CIFAR = f"{NEURIPS}, CIFAR-100 distillation table (student top-1, mean of 3 runs)"
_IMAGENET = f"{NEURIPS}, ImageNet distillation table (student top-1)"


def _top1(ikl: float, dkd: float, kd: float) -> Dict[str, Dict[str, float]]:
    return {"ikl": {"top1": ikl}, "dkd": {"top1": dkd}, "kd": {"top1": kd}}


PAPER_ROWS: Dict[str, PaperRow] = {
    "kd_cifar100_res32x4_res8x4": PaperRow(_CIFAR, _top1(76.59, 76.32, 73.33)),
    "kd_cifar100_res110_res32": PaperRow(_CIFAR, _top1(74.26, 74.11, 73.08)),
    "kd_cifar100_res56_res20": PaperRow(_CIFAR, _top1(71.44, 71.97, 70.66)),
    "kd_cifar100_wrn40_2_wrn16_2": PaperRow(_CIFAR, _top1(76.45, 76.24, 74.92)),
    "kd_cifar100_wrn40_2_wrn40_1": PaperRow(_CIFAR, _top1(74.98, 74.81, 73.54)),
    "kd_cifar100_vgg13_vgg8": PaperRow(_CIFAR, _top1(74.98, 74.68, 72.98)),
    "kd_cifar100_res32x4_shuv1": PaperRow(_CIFAR, _top1(76.64, 76.45, 74.07)),
    "kd_cifar100_res32x4_shuv2": PaperRow(_CIFAR, _top1(77.16, 77.07, 74.45)),
    "kd_cifar100_res50_mv2": PaperRow(_CIFAR, _top1(70.62, 70.35, 67.35)),
    "kd_cifar100_vgg13_mv2": PaperRow(_CIFAR, _top1(70.40, 69.71, 67.37)),
    "kd_cifar100_wrn40_2_shuv1": PaperRow(_CIFAR, _top1(77.19, 76.70, 74.83)),
    "kd_imagenet_r34_r18": PaperRow(_IMAGENET, _top1(71.91, 71.70, 71.03)),
    "kd_imagenet_r50_mv1": PaperRow(_IMAGENET, _top1(72.84, 72.05, 70.50)),
}
