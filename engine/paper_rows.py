"""Published numbers a config reproduces, for `engine.report` to print beside measured ones.

A config names its row with ``paper_row``; a row holds, per method, the published clean and
AutoAttack accuracy (adversarial training, Linf 8/255) or the student's top-1 (distillation),
in percent, with where they were published. These are the authors' numbers, not runs of
this code.
"""
from typing import Dict, NamedTuple, Optional, Tuple


class PaperRow(NamedTuple):
    source: str
    values: Dict[str, Dict[str, float]]  # method -> {"clean": ..., "autoattack": ...} or {"top1": ...}


NEURIPS = "Cui et al., NeurIPS 2024"
DKLV1_LOG = "the authors' AutoAttack log DKLv1/Adv-training-dkl/auto_attacks/logs/{}"


def _at(clean: float, autoattack: float) -> Dict[str, Dict[str, float]]:
    return {"ikl": {"clean": clean, "autoattack": autoattack}}


def _kd(ikl: float, dkd: float, kd: float) -> Dict[str, Dict[str, float]]:
    return {"ikl": {"top1": ikl}, "dkd": {"top1": dkd}, "kd": {"top1": kd}}


_KD_CIFAR = f"{NEURIPS}, CIFAR-100 distillation table (student top-1, mean of 3 runs)"
_KD_IMAGENET = f"{NEURIPS}, ImageNet distillation table (student top-1)"

PAPER_ROWS: Dict[str, PaperRow] = {
    # adversarial training
    "cifar100_ikl": PaperRow(f"{NEURIPS}, Table 2, IKL-AT on CIFAR-100 (mean of 3 runs)", _at(65.76, 31.91)),
    "cifar100_ikl_autoaug": PaperRow(f"{NEURIPS}, Table 2, IKL-AT on CIFAR-100 with AutoAugment", _at(66.08, 32.53)),
    "cifar10_ikl": PaperRow(f"{NEURIPS}, Table 3, IKL-AT on CIFAR-10", _at(84.80, 57.09)),
    "cifar100_ikl_a3b20t4_released": PaperRow(DKLV1_LOG.format("cifar100_dkl_a3_b20_T4.log"), _at(66.51, 31.43)),
    "cifar100_ikl_a4b20t2_released": PaperRow(DKLV1_LOG.format("cifar100_dkl_a4_b20_T2.log"), _at(64.08, 31.65)),
    "cifar10_ikl_a3b20t4_released": PaperRow(DKLV1_LOG.format("cifar10_dkl_a3_b20_T4.log"), _at(85.31, 57.09)),
    "cifar10_ikl_1m": PaperRow("DKLv1 README (IKL-AT, WRN-28-10, CIFAR-10 + 1M generated images)", _at(90.75, 63.54)),
    "cifar100_ikl_1m": PaperRow("DKLv1 README (IKL-AT, WRN-28-10, CIFAR-100 + 1M generated images)", _at(68.99, 35.89)),
    "cifar10_ikl_20m": PaperRow("DKLv1 README (IKL-AT, WRN-28-10, CIFAR-10 + 20M generated images)", _at(92.16, 67.75)),
    "cifar100_ikl_50m": PaperRow("DKLv1 README (IKL-AT, WRN-28-10, CIFAR-100 + 50M generated images)",
                                 _at(73.85, 39.18)),
    # knowledge distillation, CIFAR-100
    "kd_cifar100_res32x4_res8x4": PaperRow(_KD_CIFAR, _kd(76.59, 76.32, 73.33)),
    "kd_cifar100_res110_res32": PaperRow(_KD_CIFAR, _kd(74.26, 74.11, 73.08)),
    "kd_cifar100_res56_res20": PaperRow(_KD_CIFAR, _kd(71.44, 71.97, 70.66)),
    "kd_cifar100_wrn40_2_wrn16_2": PaperRow(_KD_CIFAR, _kd(76.45, 76.24, 74.92)),
    "kd_cifar100_wrn40_2_wrn40_1": PaperRow(_KD_CIFAR, _kd(74.98, 74.81, 73.54)),
    "kd_cifar100_vgg13_vgg8": PaperRow(_KD_CIFAR, _kd(74.98, 74.68, 72.98)),
    "kd_cifar100_res32x4_shuv1": PaperRow(_KD_CIFAR, _kd(76.64, 76.45, 74.07)),
    "kd_cifar100_res32x4_shuv2": PaperRow(_KD_CIFAR, _kd(77.16, 77.07, 74.45)),
    "kd_cifar100_res50_mv2": PaperRow(_KD_CIFAR, _kd(70.62, 70.35, 67.35)),
    "kd_cifar100_vgg13_mv2": PaperRow(_KD_CIFAR, _kd(70.40, 69.71, 67.37)),
    "kd_cifar100_wrn40_2_shuv1": PaperRow(_KD_CIFAR, _kd(77.19, 76.70, 74.83)),
    # knowledge distillation, ImageNet
    "kd_imagenet_r34_r18": PaperRow(_KD_IMAGENET, _kd(71.91, 71.70, 71.03)),
    "kd_imagenet_r50_mv1": PaperRow(_KD_IMAGENET, _kd(72.84, 72.05, 70.50)),
}


def paper_values(row: str, method: Optional[str]) -> Optional[Tuple[Dict[str, float], str]]:
    """(values, source) of ``row`` for ``method``; None when the paper has no number for it."""
    entry = PAPER_ROWS.get(row)
    if entry is None or method not in entry.values:
        return None
    return entry.values[method], entry.source
