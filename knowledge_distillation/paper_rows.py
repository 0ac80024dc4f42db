"""The published numbers of the distillation rows a config may name with ``paper_row``.

Per row: where it was published, and per method the student's top-1 (percent). These are the
authors' numbers, not runs of this code; `experiments.report` prints them beside the measured ones.
One row per pair and source: ``kd_<dataset>_<pair>`` is the NeurIPS 2024 paper's (IKL-KD, DKD,
KD); ``kd_imagenet_<pair>_gkl`` the authors' DKLv2 README's GKL-KD (method ikl, its only number);
the feature distillers' rows (``..._repdistiller``, ``..._reviewkd``, ``..._at``, ``..._ofd``)
each hold what one other text publishes for that pair, and that text is the row's source.
"""

from typing import Dict, NamedTuple


class PaperRow(NamedTuple):
    source: str
    values: Dict[str, Dict[str, float]]  # method -> {"top1": ...}


NEURIPS = "Cui et al., NeurIPS 2024"
_CIFAR = f"{NEURIPS}, CIFAR-100 distillation table (student top-1, mean of 3 runs)"
_IMAGENET = f"{NEURIPS}, ImageNet distillation table (student top-1)"


_LT = "jiequancui/DKL DKLv1/Imbalanced_KD-dkl/README.md, ImageNet-LT (student top-1 on the test list)"
_LT_SELF = "jiequancui/DKL DKLv1/Imbalanced_KD-dkl/README.md, ImageNet-LT self-distillation (top-1 on the test list)"
_LT_GKL = "jiequancui/DKL DKLv2/Imbalanced_KD-dkl/README.md, ImageNet-LT GKL-KD (student top-1 on the test list)"


def _top1(ikl: float, dkd: float, kd: float) -> Dict[str, Dict[str, float]]:
    return {"ikl": {"top1": ikl}, "dkd": {"top1": dkd}, "kd": {"top1": kd}}


# The CRD authors' benchmark of 12 distillers on CIFAR-100 (Tian et al., ICLR 2020), as their
# repository's README publishes it (the paper's own Tables 1-2 were not at hand to compare). Its KD
# column equals the NeurIPS rows' KD numbers, pair by pair.
_REPDISTILLER = "HobbitLong/RepDistiller README.md, 'Benchmark Results on CIFAR-100'"
_REPDISTILLER_SAME = f"{_REPDISTILLER}, table 1 (same architectural type; student top-1)"
_REPDISTILLER_DIFFERENT = f"{_REPDISTILLER}, table 2 (different architectural type; student top-1)"
# ReviewKD (Chen et al., CVPR 2021) on CIFAR-100: the two pairs of the paper's results that
# Papers with Code lists (its ReviewKD repository's CIFAR-100 README publishes no numbers).
_REVIEWKD_CIFAR = (
    "Chen et al., CVPR 2021 (ReviewKD), as Papers with Code lists its 'Results from the Paper' "
    "(paperswithcode.com/paper/distilling-knowledge-via-knowledge-review; student top-1)"
)
_REVIEWKD_IMAGENET = (
    "jiequancui/DKL DKLv1/KD-dkl/README.md, ImageNet tables, ReviewKD rows (as dvlab-research/ReviewKD "
    "ImageNet/README.md, 'Results'; student top-1)"
)
# GKL-KD (the authors' DKLv2, their "Generalized Kullback-Leibler Divergence Loss"): ImageNet only.
_GKL_IMAGENET = "jiequancui/DKL DKLv2/KD-dkl/README.md, ImageNet tables, GKL-KD rows (student top-1)"
_AT_IMAGENET = (
    "szagoruyko/attention-transfer README.md, ImageNet 'Pretrained model' table: ResNet-18-ResNet-34-AT "
    "val error 29.3 (top-1 = 100 - error; its own ResNet-34 teacher)"
)
_OFD_IMAGENET = (
    "clovaai/overhaul-distillation ImageNet/README.md, 'Experimental results', MobileNet table: "
    "Proposed 28.75, a top-1 error as the table's teacher row (23.84) shows: top-1 = 100 - 28.75"
)


# DIST (Huang et al., NeurIPS 2022): hunto/DIST_KD's README, its only pairs (mean of its runs on CIFAR-100).
_DIST_CIFAR = "hunto/DIST_KD README.md, CIFAR-100 table (student top-1, mean of their runs)"
_DIST_IMAGENET = "hunto/DIST_KD README.md, ImageNet table of its baseline settings (student top-1)"
# Logit standardization (Sun et al., CVPR 2024): the "+ Ours" rows of sunshangquan/logit-standardization-KD's
# README (f6e5aa5), each a link to a log; they sit near each log's best epoch, not its last. The fork publishes
# no number for resnet32x4 -> ShuffleV1 or wrn_40_2 -> ShuffleV1, and none on ImageNet (one log, no table).
_LS = (
    "sunshangquan/logit-standardization-KD README.md, CIFAR-100 tables, the '+ Ours' rows (student top-1, near "
    "the best epoch of the linked logs)"
)
# MLKD (Jin et al., CVPR 2023): its repository's README publishes no table; the logit-standardization fork's README
# has an "MLKD" row for nine of the eleven pairs (no ShuffleV1 student, no ImageNet).
_MLKD = (
    "sunshangquan/logit-standardization-KD README.md, CIFAR-100 tables, the 'MLKD' row (student top-1; "
    "Jin-Ying/Multi-Level-Logit-Distillation's README publishes none)"
)
# CTKD (Li et al., AAAI 2023): zhengli97/CTKD's README (six CIFAR-100 pairs, ImageNet R34 -> R18), its project page's
# table image for five more; resnet32x4 -> resnet8x4 only in the logit-standardization fork's README.
_CTKD_README = "zhengli97/CTKD README.md, CIFAR-100 table (KD + CTKD; student top-1)"
_CTKD_PAGE = "zhengli97/CTKD project page (gh-pages a8b278e, static/images/cifar_acc.jpg; student top-1)"
_CTKD_FORK = (
    "sunshangquan/logit-standardization-KD README.md, CIFAR-100 table, the 'CTKD' row (CTKD's authors publish no "
    "number for this pair)"
)
_CTKD_IMAGENET = "zhengli97/CTKD README.md, ImageNet table (KD + CTKD; top-1)"


def _dist(top1: float) -> Dict[str, Dict[str, float]]:
    return {"dist": {"top1": top1}}


def _ls(kd: float, dkd: float, mlkd: float, ctkd: float) -> Dict[str, Dict[str, float]]:
    return {"kd": {"top1": kd}, "dkd": {"top1": dkd}, "mlkd": {"top1": mlkd}, "ctkd": {"top1": ctkd}}


def _mlkd(top1: float) -> Dict[str, Dict[str, float]]:
    return {"mlkd": {"top1": top1}}


def _ctkd(top1: float) -> Dict[str, Dict[str, float]]:
    return {"ctkd": {"top1": top1}}


def _repdistiller(
    fitnet: float, at: float, sp: float, vid: float, rkd: float, pkt: float, nst: float, crd: float
) -> Dict[str, Dict[str, float]]:
    return {
        "fitnet": {"top1": fitnet},
        "at": {"top1": at},
        "sp": {"top1": sp},
        "vid": {"top1": vid},
        "rkd": {"top1": rkd},
        "pkt": {"top1": pkt},
        "nst": {"top1": nst},
        "crd": {"top1": crd},
    }


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
    "kd_imagenet_r34_r18_gkl": PaperRow(_GKL_IMAGENET, {"ikl": {"top1": 71.91}}),
    "kd_imagenet_r50_mv1_gkl": PaperRow(_GKL_IMAGENET, {"ikl": {"top1": 72.92}}),
    # ImageNet-LT (test list, 50,000 images): jiequancui/DKL DKLv1/Imbalanced_KD-dkl/README.md, top-1 to 3 decimals
    # there (41.150, ...), two here; GKL-KD: DKLv2/Imbalanced_KD-dkl/README.md
    "kd_imagenet_lt_r18_baseline": PaperRow(_LT, {"vanilla": {"top1": 41.15}}),
    "kd_imagenet_lt_r50_baseline": PaperRow(_LT, {"vanilla": {"top1": 45.48}}),
    "kd_imagenet_lt_x101_baseline": PaperRow(_LT, {"vanilla": {"top1": 48.02}}),
    "kd_imagenet_lt_x101_r18": PaperRow(_LT, {"ikl": {"top1": 45.21}, "kd": {"top1": 44.32}}),
    "kd_imagenet_lt_x101_r50": PaperRow(_LT, {"ikl": {"top1": 49.22}, "kd": {"top1": 48.31}}),
    "kd_imagenet_lt_r18_r18": PaperRow(_LT_SELF, {"ikl": {"top1": 43.06}, "kd": {"top1": 42.73}}),
    "kd_imagenet_lt_r50_r50": PaperRow(_LT_SELF, {"ikl": {"top1": 47.50}, "kd": {"top1": 47.04}}),
    "kd_imagenet_lt_x101_r18_gkl": PaperRow(_LT_GKL, {"ikl": {"top1": 45.40}}),
    "kd_imagenet_lt_x101_r50_gkl": PaperRow(_LT_GKL, {"ikl": {"top1": 49.40}}),
    # FitNet, AT, SP, VID, RKD, PKT, NST, CRD
    "kd_cifar100_res32x4_res8x4_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(73.50, 73.44, 72.94, 73.09, 71.90, 73.64, 73.30, 75.51)
    ),
    "kd_cifar100_res110_res32_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(71.06, 72.31, 72.69, 72.61, 71.82, 72.61, 71.96, 73.48)
    ),
    "kd_cifar100_res56_res20_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(69.21, 70.55, 69.67, 70.38, 69.61, 70.34, 69.60, 71.16)
    ),
    "kd_cifar100_wrn40_2_wrn16_2_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(73.58, 74.08, 73.83, 74.11, 73.35, 74.54, 73.68, 75.48)
    ),
    "kd_cifar100_wrn40_2_wrn40_1_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(72.24, 72.77, 72.43, 73.30, 72.22, 73.45, 72.24, 74.14)
    ),
    "kd_cifar100_vgg13_vgg8_repdistiller": PaperRow(
        _REPDISTILLER_SAME, _repdistiller(71.02, 71.43, 72.68, 71.23, 71.48, 72.88, 71.53, 73.94)
    ),
    "kd_cifar100_res32x4_shuv1_repdistiller": PaperRow(
        _REPDISTILLER_DIFFERENT, _repdistiller(73.59, 71.73, 73.48, 73.38, 72.28, 74.10, 74.12, 75.11)
    ),
    "kd_cifar100_res32x4_shuv2_repdistiller": PaperRow(
        _REPDISTILLER_DIFFERENT, _repdistiller(73.54, 72.73, 74.56, 73.40, 73.21, 74.69, 74.68, 75.65)
    ),
    "kd_cifar100_res50_mv2_repdistiller": PaperRow(
        _REPDISTILLER_DIFFERENT, _repdistiller(63.16, 58.58, 68.08, 67.57, 64.43, 66.52, 64.96, 69.11)
    ),
    "kd_cifar100_vgg13_mv2_repdistiller": PaperRow(
        _REPDISTILLER_DIFFERENT, _repdistiller(64.14, 59.40, 66.30, 65.56, 64.52, 67.13, 58.16, 69.73)
    ),
    "kd_cifar100_wrn40_2_shuv1_repdistiller": PaperRow(
        _REPDISTILLER_DIFFERENT, _repdistiller(73.73, 73.32, 74.52, 73.61, 72.21, 73.89, 74.89, 76.05)
    ),
    "kd_cifar100_res32x4_res8x4_reviewkd": PaperRow(_REVIEWKD_CIFAR, {"reviewkd": {"top1": 75.63}}),
    "kd_cifar100_vgg13_vgg8_reviewkd": PaperRow(_REVIEWKD_CIFAR, {"reviewkd": {"top1": 74.84}}),
    "kd_imagenet_r34_r18_reviewkd": PaperRow(_REVIEWKD_IMAGENET, {"reviewkd": {"top1": 71.61}}),
    "kd_imagenet_r50_mv1_reviewkd": PaperRow(_REVIEWKD_IMAGENET, {"reviewkd": {"top1": 72.56}}),
    "kd_imagenet_r34_r18_at": PaperRow(_AT_IMAGENET, {"at": {"top1": 70.7}}),
    "kd_imagenet_r50_mv1_ofd": PaperRow(_OFD_IMAGENET, {"ofd": {"top1": 71.25}}),
    "kd_cifar100_wrn40_2_wrn40_1_dist": PaperRow(_DIST_CIFAR, _dist(74.43)),
    "kd_cifar100_res56_res20_dist": PaperRow(_DIST_CIFAR, _dist(71.75)),
    "kd_cifar100_res32x4_res8x4_dist": PaperRow(_DIST_CIFAR, _dist(76.31)),
    "kd_cifar100_res50_mv2_dist": PaperRow(_DIST_CIFAR, _dist(68.66)),
    "kd_cifar100_res32x4_shuv1_dist": PaperRow(_DIST_CIFAR, _dist(76.34)),
    "kd_cifar100_res32x4_shuv2_dist": PaperRow(_DIST_CIFAR, _dist(77.35)),
    "kd_imagenet_r34_r18_dist": PaperRow(_DIST_IMAGENET, _dist(72.07)),
    "kd_imagenet_r50_mv1_dist": PaperRow(_DIST_IMAGENET, _dist(73.24)),
    "kd_cifar100_res32x4_res8x4_mlkd": PaperRow(_MLKD, _mlkd(77.08)),
    "kd_cifar100_vgg13_vgg8_mlkd": PaperRow(_MLKD, _mlkd(75.18)),
    "kd_cifar100_wrn40_2_wrn40_1_mlkd": PaperRow(_MLKD, _mlkd(75.35)),
    "kd_cifar100_wrn40_2_wrn16_2_mlkd": PaperRow(_MLKD, _mlkd(76.63)),
    "kd_cifar100_res56_res20_mlkd": PaperRow(_MLKD, _mlkd(72.19)),
    "kd_cifar100_res110_res32_mlkd": PaperRow(_MLKD, _mlkd(74.11)),
    "kd_cifar100_res32x4_shuv2_mlkd": PaperRow(_MLKD, _mlkd(78.44)),
    "kd_cifar100_vgg13_mv2_mlkd": PaperRow(_MLKD, _mlkd(70.57)),
    "kd_cifar100_res50_mv2_mlkd": PaperRow(_MLKD, _mlkd(71.04)),
    "kd_cifar100_res56_res20_ctkd": PaperRow(_CTKD_README, _ctkd(71.19)),
    "kd_cifar100_res110_res32_ctkd": PaperRow(_CTKD_README, _ctkd(73.52)),
    "kd_cifar100_wrn40_2_wrn16_2_ctkd": PaperRow(_CTKD_README, _ctkd(75.45)),
    "kd_cifar100_wrn40_2_wrn40_1_ctkd": PaperRow(_CTKD_README, _ctkd(73.93)),
    "kd_cifar100_vgg13_vgg8_ctkd": PaperRow(_CTKD_README, _ctkd(73.52)),
    "kd_cifar100_wrn40_2_shuv1_ctkd": PaperRow(_CTKD_PAGE, _ctkd(75.78)),
    "kd_cifar100_vgg13_mv2_ctkd": PaperRow(_CTKD_PAGE, _ctkd(68.46)),
    "kd_cifar100_res50_mv2_ctkd": PaperRow(_CTKD_PAGE, _ctkd(68.47)),
    "kd_cifar100_res32x4_shuv1_ctkd": PaperRow(_CTKD_PAGE, _ctkd(74.48)),
    "kd_cifar100_res32x4_shuv2_ctkd": PaperRow(_CTKD_PAGE, _ctkd(75.31)),
    "kd_cifar100_res32x4_res8x4_ctkd": PaperRow(_CTKD_FORK, _ctkd(73.39)),
    "kd_imagenet_r34_r18_ctkd": PaperRow(_CTKD_IMAGENET, _ctkd(71.32)),
    # KD, DKD, MLKD, CTKD, each + logit standardization
    "kd_cifar100_res32x4_res8x4_ls": PaperRow(_LS, _ls(76.62, 77.01, 78.28, 76.67)),
    "kd_cifar100_vgg13_vgg8_ls": PaperRow(_LS, _ls(74.36, 74.81, 75.22, 74.47)),
    "kd_cifar100_wrn40_2_wrn40_1_ls": PaperRow(_LS, _ls(74.37, 74.89, 75.56, 74.58)),
    "kd_cifar100_wrn40_2_wrn16_2_ls": PaperRow(_LS, _ls(76.11, 76.39, 76.95, 76.08)),
    "kd_cifar100_res56_res20_ls": PaperRow(_LS, _ls(71.43, 72.32, 72.33, 71.34)),
    "kd_cifar100_res110_res32_ls": PaperRow(_LS, _ls(74.17, 74.29, 74.32, 74.01)),
    "kd_cifar100_res32x4_shuv2_ls": PaperRow(_LS, _ls(75.56, 77.37, 78.76, 76.18)),
    "kd_cifar100_vgg13_mv2_ls": PaperRow(_LS, _ls(68.61, 69.98, 70.94, 68.98)),
    "kd_cifar100_res50_mv2_ls": PaperRow(_LS, _ls(69.02, 70.45, 71.19, 69.36)),
}
