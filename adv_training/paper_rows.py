"""The published numbers of the adversarial-training rows a config may name with ``paper_row``.

Per row: where it was published, and per method the clean and AutoAttack accuracy (Linf
8/255, percent). These are the authors' numbers, not runs of this code; `experiments.report`
prints them beside the measured ones.
"""

from typing import Dict, NamedTuple


class PaperRow(NamedTuple):
    source: str
    values: Dict[str, Dict[str, float]]  # method -> {"clean": ..., "autoattack": ...}


NEURIPS = "Cui et al., NeurIPS 2024"
DKLV1_LOG = "the authors' AutoAttack log DKLv1/Adv-training-dkl/auto_attacks/logs/{}"


AWP_README = "csdongxian/AWP auto_attacks/README.md"
DAJAT_README = "val-iisc/DAJAT README.md, its result table {}"


def _ikl(clean: float, autoattack: float) -> Dict[str, Dict[str, float]]:
    return {"ikl": {"clean": clean, "autoattack": autoattack}}


def _pgd(clean: float, autoattack: float) -> Dict[str, Dict[str, float]]:
    return {"pgd": {"clean": clean, "autoattack": autoattack}}


def _trades(clean: float, autoattack: float) -> Dict[str, Dict[str, float]]:
    return {"trades": {"clean": clean, "autoattack": autoattack}}


PAPER_ROWS: Dict[str, PaperRow] = {
    "cifar100_ikl": PaperRow(f"{NEURIPS}, Table 2, IKL-AT on CIFAR-100 (mean of 3 runs)", _ikl(65.76, 31.91)),
    "cifar100_ikl_autoaug": PaperRow(f"{NEURIPS}, Table 2, IKL-AT on CIFAR-100 with AutoAugment", _ikl(66.08, 32.53)),
    "cifar10_ikl": PaperRow(f"{NEURIPS}, Table 3, IKL-AT on CIFAR-10", _ikl(84.80, 57.09)),
    "cifar100_ikl_a3b20t4_released": PaperRow(DKLV1_LOG.format("cifar100_dkl_a3_b20_T4.log"), _ikl(66.51, 31.43)),
    "cifar100_ikl_a4b20t2_released": PaperRow(DKLV1_LOG.format("cifar100_dkl_a4_b20_T2.log"), _ikl(64.08, 31.65)),
    "cifar10_ikl_a3b20t4_released": PaperRow(DKLV1_LOG.format("cifar10_dkl_a3_b20_T4.log"), _ikl(85.31, 57.09)),
    "cifar10_ikl_1m": PaperRow("DKLv1 README (IKL-AT, WRN-28-10, CIFAR-10 + 1M generated images)", _ikl(90.75, 63.54)),
    "cifar100_ikl_1m": PaperRow(
        "DKLv1 README (IKL-AT, WRN-28-10, CIFAR-100 + 1M generated images)", _ikl(68.99, 35.89)
    ),
    "cifar10_ikl_20m": PaperRow(
        "DKLv1 README (IKL-AT, WRN-28-10, CIFAR-10 + 20M generated images)", _ikl(92.16, 67.75)
    ),
    "cifar100_ikl_50m": PaperRow(
        "DKLv1 README (IKL-AT, WRN-28-10, CIFAR-100 + 50M generated images)", _ikl(73.85, 39.18)
    ),
    "cifar10_at_awp": PaperRow(
        f"{AWP_README}, AT-AWP, WRN-34-10, CIFAR-10 Linf (its AutoAttack log "
        "log_AT-AWP_cifar10_linf_wrn34-10.txt says 86.23 clean)",
        _pgd(85.36, 53.97),
    ),
    "cifar100_at_awp": PaperRow(
        f"{AWP_README} and its log log_AT-AWP_cifar100_linf_wrn34-10.txt, AT-AWP, WRN-34-10, CIFAR-100 "
        "Linf; the row the DKL READMEs and the NeurIPS Table 2 cite as AWP",
        _pgd(60.38, 28.86),
    ),
    "cifar10_trades_awp": PaperRow(
        f"{AWP_README} and its log log_TRADES-AWP_cifar10_linf_WRN34-10.txt, TRADES-AWP, WRN-34-10, "
        "CIFAR-10 Linf; the row the DKL READMEs cite as AWP on CIFAR-10",
        _trades(85.36, 56.17),
    ),
    "cifar100_lbgat": PaperRow(
        "jiequancui/DKL DKLv1/Adv-training-dkl/README.md CIFAR-100 table, LBGAT, WRN-34-10 (as the NeurIPS "
        "tables cite it; LBGAT's README: 60.64 / 29.33 for LBGAT6 at eps 0.031, 62.31 / 30.44 for LBGAT-AWP)",
        {"lbgat": {"clean": 62.31, "autoattack": 29.33}},
    ),
    "cifar100_acat": PaperRow(
        DAJAT_README.format("DAJAT_C100.png")
        + ', "ACAT (2)", WRN-34-10, CIFAR-100 (the DKL READMEs\' ACAT row cites the same numbers)',
        _trades(65.75, 30.23),
    ),
    "cifar10_acat": PaperRow(
        DAJAT_README.format("DAJAT_C10.png")
        + ', "ACAT (Base, 2step)", WRN-34-10, CIFAR-10; the DKL READMEs print 82.41 / 55.36, where 82.41 is '
        "that table's ResNet-18 clean accuracy",
        _trades(86.71, 55.36),
    ),
    "cifar100_dajat": PaperRow(
        DAJAT_README.format("DAJAT_C100.png")
        + ', "DAJAT (Base, 2*AA), 2+4", WRN-34-10, CIFAR-100 (the DKL READMEs\' CIFAR-100 + AutoAugment row)',
        {"dajat": {"clean": 68.74, "autoattack": 31.30}},
    ),
    "cifar100_dajat_200": PaperRow(
        DAJAT_README.format("DAJAT_200.png")
        + ", WRN-34-10, CIFAR-100, 200 epochs; RobustBench's Addepalli2022Efficient_WRN_34_10 lists the same",
        {"dajat": {"clean": 68.75, "autoattack": 31.85}},
    ),
    "cifar10_dajat_200": PaperRow(
        DAJAT_README.format("DAJAT_200.png")
        + ", WRN-34-10, CIFAR-10, 200 epochs; RobustBench's Addepalli2022Efficient_WRN_34_10 lists the same",
        {"dajat": {"clean": 88.71, "autoattack": 57.81}},
    ),
    "cifar10_las_at": PaperRow(
        "jiequancui/DKL DKLv1/Adv-training-dkl/README.md CIFAR-10 table, LAS-AT, WRN-34-10 (the LAS-AT paper's LAS-AWP "
        "row; RobustBench's Jia2022LAS-AT_34_10 lists 84.98 / 56.26 for the released model)",
        {"las_at": {"clean": 87.74, "autoattack": 55.52}},
    ),
    "cifar100_las_at": PaperRow(
        "jiequancui/DKL DKLv1/Adv-training-dkl/README.md CIFAR-100 table, LAS-AT, WRN-34-10; its 62.99 clean is "
        "RobustBench's LBGAT9 (Cui2020Learnable_34_10_LBGAT9_eps_8_255), LAS-AT's own is 64.89 / 30.77 "
        "(RobustBench's Jia2022LAS-AT_34_10)",
        {"las_at": {"clean": 62.99, "autoattack": 30.77}},
    ),
    "cifar10_lbgat": PaperRow(
        "jiequancui/DKL DKLv1/Adv-training-dkl/README.md CIFAR-10 table, LBGAT, WRN-34-20 (LBGAT's README: "
        "LBGAT0, AutoAttack at eps 0.031)",
        {"lbgat": {"clean": 88.70, "autoattack": 53.57}},
    ),
}
