"""Every knob of knowledge distillation, with its default and meaning.

The defaults are mdistiller's CIFAR-100 recipe (240 epochs, batch 64, SGD lr 0.05 with
decays at 150/180/210, weight decay 5e-4) with the authors' IKL-KD settings (CE weight 1,
T 4, T2 100, no class prior, warm-up 20 epochs). One YAML file per teacher/student pair
states the pair, its learning rate and each distiller's pair-specific weights, so that
``method=kd`` or ``method=dkd`` on the command line switches method on the same pair.
"""

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Literal

from engine.batchnorm_groups import require_whole_groups
from engine.config import (
    BATCH,
    EPOCHS,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    Range,
    RunConfig,
    knob,
    require_increasing,
    section,
)
from models.registry import require_model

from .paper_rows import PAPER_ROWS, PaperRow


@dataclass
class KDDataConfig:
    dataset: Literal["cifar100", "imagenet", "imagenet_lt", "digits"] = knob(
        "cifar100",
        "training and validation set; imagenet_lt: ImageNet-LT, the ImageNet images that data.lists names, with "
        "many/medium/few-shot accuracy",
    )
    root: str = knob(
        "data",
        "cifar-100-python/ folder for cifar100; train/ and val/ ImageFolder trees for imagenet; the ImageNet folder "
        "the ImageNet-LT lists' paths start from (train/..., val/...) for imagenet_lt",
        changes_result=False,
    )
    lists: str = knob(
        "data/ImageNet_LT",
        "imagenet_lt: the folder of ImageNet_LT_train.txt, ImageNet_LT_val.txt and ImageNet_LT_test.txt (the OLTR "
        "authors' published split lists: 'relative/path label' lines)",
        changes_result=False,
    )
    eval_list: Literal["test", "val"] = knob(
        "test",
        "imagenet_lt: the list evaluated every epoch (the DKL authors': the 50,000-image test list; val: the "
        "20,000-image validation list)",
    )
    long_tail: List[int] = knob(
        [],
        "[max, min]: train on a long-tailed subset, the first n_c images of class c in the files' order with n_c "
        "from max (class 0) down to min (the last class) exponentially, and report many/medium/few-shot accuracy "
        "(for digits and cifar100 demos of imagenet_lt); empty = the whole training set",
        valid=Range(1),
    )
    drop_last: bool = knob(
        False, "drop the last incomplete training batch (the DKL authors' ImageNet-LT script: 905 batches of 128)"
    )
    download: bool = knob(
        False, "download CIFAR-100 into `root` when missing (ImageNet cannot be downloaded)", changes_result=False
    )
    verify_checksum: bool = knob(
        True, "check CIFAR's official MD5 sums; false only for locally written test data", changes_result=False
    )
    normalize: bool = knob(True, "mean/std normalisation in the data pipeline, as mdistiller (the teachers expect it)")
    batch_size: int = knob(64, "global training batch size (several processes share it)", valid=BATCH)
    test_batch_size: int = knob(
        128,
        "validation batch size of each process (whole batches are dealt to the processes)",
        valid=BATCH,
        changes_result=False,
    )
    num_workers: int = knob(4, "DataLoader worker processes", valid=Range(0, 256), changes_result=False)


@dataclass
class TeacherConfig:
    arch: str = knob(
        "resnet32x4", "teacher architecture (models.available_models()); empty = none (method=vanilla only)"
    )
    checkpoint: str = knob(
        "download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth",
        "teacher weights: a file (mdistiller {'model': ...}, a plain state dict, ...), or "
        "torchvision:WEIGHTS (e.g. torchvision:IMAGENET1K_V1) for the ImageNet ResNets",
        changes_result=False,
    )
    report_accuracy: bool = knob(
        True, "evaluate the teacher on the validation set before training", changes_result=False
    )


@dataclass
class StudentConfig:
    arch: str = knob("resnet8x4", "student architecture (models.available_models())")


@dataclass
class KDLossConfig:
    ce_weight: float = knob(0.1, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    kd_weight: float = knob(0.9, "weight of the KD term", valid=NON_NEGATIVE)
    temperature: float = knob(4.0, "softmax temperature (the KD term carries T^2)", valid=POSITIVE)


@dataclass
class DKDLossConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    alpha: float = knob(1.0, "weight of TCKD (target-class KD)", valid=NON_NEGATIVE)
    beta: float = knob(8.0, "weight of NCKD (non-target-class KD); mdistiller tunes it per pair", valid=NON_NEGATIVE)
    temperature: float = knob(4.0, "softmax temperature (DKD carries T^2)", valid=POSITIVE)
    warmup: int = knob(20, "the DKD term ramps linearly to full weight over this many epochs", valid=NON_NEGATIVE)


@dataclass
class DISTConfig:
    ce_weight: float = knob(
        1.0, "weight of the cross-entropy with the labels (DIST's ori_loss_weight)", valid=NON_NEGATIVE
    )
    kd_weight: float = knob(
        2.0, "weight of the DIST term (its kd_loss_weight: 2 in its CIFAR and ImageNet recipes)", valid=NON_NEGATIVE
    )
    beta: float = knob(
        1.0, "weight of the inter-class relation (each sample's Pearson over the classes)", valid=NON_NEGATIVE
    )
    gamma: float = knob(
        1.0, "weight of the intra-class relation (each class's Pearson over the batch)", valid=NON_NEGATIVE
    )
    temperature: float = knob(
        4.0, "softmax temperature tau, tau^2 on both terms (its CIFAR recipe: dist_t4; ImageNet: 1)", valid=POSITIVE
    )


@dataclass
class MLKDConfig:
    ce_weight: float = knob(
        0.1, "weight of each view's cross-entropy with the labels (the weak and the strong view's)", valid=NON_NEGATIVE
    )
    kd_weight: float = knob(
        0.9, "weight of every KD, class- and batch-correlation term (mdistiller's KD weight)", valid=NON_NEGATIVE
    )
    temperature: float = knob(
        4.0,
        "the configured temperature; every term also runs at 3, 5, 2 and 6 (hard-coded by its authors)",
        valid=POSITIVE,
    )


@dataclass
class CTKDConfig:
    ce_weight: float = knob(0.1, "weight of the cross-entropy with the labels (CTKD's -r gamma)", valid=NON_NEGATIVE)
    kd_weight: float = knob(0.9, "weight of the KD term at the learned temperature (its -a alpha)", valid=NON_NEGATIVE)
    temperature_start: float = knob(
        1.0, "t_start: the learned temperature is t_start + t_span * sigmoid(p), p a scalar from 1", valid=POSITIVE
    )
    temperature_span: float = knob(
        20.0, "t_span (CTKD's t_end): the width of the temperature's range above t_start", valid=POSITIVE
    )
    curriculum_epochs: int = knob(
        10,
        "the gradient reversal ramps from 0 to max_reversal over these epochs by half a cosine, then stays (its "
        "decay_loops: CIFAR 10, ImageNet 5)",
        valid=Range(1),
    )
    max_reversal: float = knob(
        1.0,
        "lambda at the curriculum's end: the temperature climbs the distillation loss with this factor on its "
        "gradient while the student descends it (its -decay_min); 0 stops that gradient, but the optimizer's "
        "weight decay and momentum still move p (as theirs)",
        valid=NON_NEGATIVE,
    )


@dataclass
class IKLLossConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    alpha: float = knob(1.0, "weight of the soft-label CE term of IKL", valid=NON_NEGATIVE)
    beta: float = knob(8.0, "weight of the wMSE term of IKL", valid=NON_NEGATIVE)
    temperature: float = knob(4.0, "temperature of the soft-label CE term (no T^2)", valid=POSITIVE)
    prior_temperature: float = knob(
        100.0,
        "T2: temperature of the teacher softmax that weights wMSE (averaged per class with class_prior, "
        "else per sample); the same key as adversarial training's class-prior temperature",
        valid=POSITIVE,
    )
    gamma: float = knob(1.0, "exponent on the wMSE weights", valid=NON_NEGATIVE)
    class_prior: bool = knob(
        False,
        "weights = previous epoch's class-wise mean of softmax(teacher / T2), else per sample; the rows are "
        "replaced every epoch, with no momentum (DKLv2's KD code has none; DKLv1 adversarial training's --m "
        "defaults to 1, which is this)",
    )
    warmup: int = knob(20, "the IKL term ramps linearly to full weight over this many epochs", valid=NON_NEGATIVE)


# The feature distillers, with mdistiller's defaults (mdistiller/engine/cfg.py at a08d46f; its
# configs/cifar100/<method>.yaml change only ReviewKD's weight, to 5). ``feat_weight`` is
# mdistiller's LOSS.FEAT_WEIGHT, the factor on the distiller's own term.


@dataclass
class FitNetConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(100.0, "weight of the hint MSE", valid=NON_NEGATIVE)
    hint_layer: int = knob(
        2, "index into the feature list (0 = stem) of the student's and teacher's hint", valid=Range(0)
    )


@dataclass
class AttentionTransferConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(1000.0, "weight of the attention-transfer term", valid=NON_NEGATIVE)
    p: float = knob(2.0, "attention map = mean over channels of |f|^p, L2-normalised", valid=POSITIVE)


@dataclass
class NSTConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(50.0, "weight of the neuron-selectivity (polynomial-kernel MMD) term", valid=NON_NEGATIVE)


@dataclass
class PKTConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(30000.0, "weight of the probabilistic-transfer KL term", valid=NON_NEGATIVE)


@dataclass
class KDSVDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(1.0, "weight of the SVD term", valid=NON_NEGATIVE)
    k: int = knob(
        1,
        "singular vectors kept of the teacher (the student keeps k + 3); at most what the smallest feature "
        "map has (its width; k + 3 for the student's)",
        valid=Range(1, 1024),
    )


@dataclass
class OFDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(0.001, "weight of the margin-based feature term", valid=NON_NEGATIVE)
    kernel_size: int = knob(
        1, "kernel size of the student-to-teacher connectors: odd (they keep the map's size)", valid=Range(1, 15)
    )


@dataclass
class RKDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(1.0, "weight of the relational term", valid=NON_NEGATIVE)
    distance_weight: float = knob(25.0, "weight of the distance-wise loss inside the term", valid=NON_NEGATIVE)
    angle_weight: float = knob(50.0, "weight of the angle-wise loss inside the term", valid=NON_NEGATIVE)
    eps: float = knob(1e-12, "lower clamp of the squared pairwise distances", valid=POSITIVE)
    squared: bool = knob(False, "use squared Euclidean distances")


@dataclass
class VIDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(1.0, "weight of the variational term", valid=NON_NEGATIVE)
    eps: float = knob(1e-5, "floor added to the predicted variance", valid=POSITIVE)
    init_pred_var: float = knob(
        5.0, "initial predicted variance of every teacher channel", valid=Range(0, low_open=True)
    )
    learn_variance: bool = knob(
        True,
        "train the per-channel variances with the student's optimizer (Ahn et al.; CRD's code); mdistiller "
        "a08d46f keeps them at their initial value (a plain list, not in its optimizer): false reproduces that",
    )


@dataclass
class SPConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(3000.0, "weight of the similarity-preserving term", valid=NON_NEGATIVE)


@dataclass
class CRDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    feat_weight: float = knob(0.8, "weight of the contrastive term", valid=NON_NEGATIVE)
    mode: Literal["exact", "relax"] = knob(
        "exact", "positive of a sample: itself (exact) or a random sample of its class (relax)"
    )
    feat_dim: int = knob(128, "dimension of the embeddings and of the memory bank", valid=Range(1, 65536))
    nce_k: int = knob(
        16384,
        "negatives per sample, drawn from the other classes; fewer than the training images",
        valid=Range(1, 10_000_000),
    )
    nce_momentum: float = knob(0.5, "momentum of the memory-bank update", valid=Range(0, 1, high_open=True))
    nce_temperature: float = knob(0.07, "temperature of the contrastive scores", valid=POSITIVE)


@dataclass
class ReviewKDConfig:
    ce_weight: float = knob(1.0, "weight of the cross-entropy with the labels", valid=NON_NEGATIVE)
    reviewkd_weight: float = knob(
        1.0,
        "weight of the hierarchical-context loss (mdistiller's default; its CIFAR-100 config sets 5, "
        "its ImageNet R50->MV1 config 8)",
        valid=NON_NEGATIVE,
    )
    warmup: int = knob(20, "the ReviewKD term ramps linearly to full weight over this many epochs", valid=NON_NEGATIVE)
    stu_preact: bool = knob(False, "fuse the student's pre-activation features instead of its features")
    max_mid_channel: int = knob(
        512,
        "middle width of the fusion modules = min(this, the student's pooled width); mdistiller's "
        "configs set it (256 for R50->MV1), its code ignores it and caps at 512",
        valid=Range(1, 65536),
    )


@dataclass
class KDOptimConfig:
    lr: float = knob(
        0.05, "learning rate of SGD (mdistiller: 0.05, or 0.01 for ShuffleNet/MobileNet students)", valid=POSITIVE
    )
    momentum: float = knob(0.9, "SGD momentum", valid=Range(0, 1, high_open=True))
    weight_decay: float = knob(5e-4, "L2 weight decay", valid=NON_NEGATIVE)
    nesterov: bool = knob(False, "Nesterov momentum")
    batchnorm_weight_decay: bool = knob(
        True,
        "apply weight_decay to the student's BatchNorm weights and biases too (mdistiller); false = none on them "
        "(DIST's ImageNet recipe, whose filter also spares the classifier's bias, which keeps it here)",
    )
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = knob(
        "auto",
        "SGD's update kernel: fused (one kernel for all parameters), foreach, for_loop; the same update "
        "to 1e-6; auto = fused on CUDA, torch's default elsewhere",
        changes_result=False,
    )
    milestones: List[int] = knob(
        [150, 180, 210], "epochs after which lr is multiplied by decay (LR_DECAY_STAGES)", valid=Range(1)
    )
    decay: float = knob(0.1, "step decay factor (LR_DECAY_RATE)", valid=Range(0, 1, low_open=True))
    warmup_epochs: int = knob(0, "linear learning-rate warm-up epochs: lr * e / w while e < w", valid=NON_NEGATIVE)
    schedule: Literal["step", "cosine"] = knob(
        "step",
        "step: x decay after each milestone (mdistiller); cosine: lr (1 + cos(pi (e - w) / (E - w + 1))) / 2 after the "
        "w warm-up epochs, set once per epoch (the DKL authors' ImageNet-LT script: w 10, E 90)",
    )


@dataclass
class KDEvalConfig:
    every: int = knob(1, "evaluate every N epochs (the last epoch always)", valid=Range(1))


@dataclass
class KDConfig(RunConfig):
    PAPER_ROWS: ClassVar[Dict[str, PaperRow]] = PAPER_ROWS
    TASK: ClassVar[str] = "knowledge_distillation"

    method: str = knob(
        "ikl",
        "distiller, a name in knowledge_distillation.distillers: vanilla = CE only; kd = Hinton; "
        "dkd = Zhao et al.; dist = Huang et al.; mlkd = Jin et al.; ctkd = Li et al.; ikl = IKL-KD",
    )
    logit_standardization: bool = knob(
        False,
        "z-score the student's and the teacher's logits over the classes, (z - mean) / (1e-7 + std), before the "
        "distillation term of kd, dkd, dist, mlkd (its KD terms, as theirs), ctkd and ikl (Sun et al., CVPR 2024; the method's temperature is then their "
        "'base temperature'); the CE with the labels keeps the raw logits, and ikl's class prior averages the "
        "standardised teacher logits",
    )
    epochs: int = knob(240, "training epochs", valid=EPOCHS)
    precision: Literal["fp32", "tf32", "bf16"] = knob(
        "fp32",
        "fp32 = strict float32; tf32 = TF32 matrix products and convolutions (Ampere GPUs and later); bf16 = "
        "bf16 autocast for the training forwards (stems and heads in float32), TF32 elsewhere; validation in float32 "
        "at that TF32 setting",
    )
    compile: bool = knob(
        False,
        "torch.compile the teacher's and the student's training forwards (the first "
        "epoch compiles, reported as compile_seconds; a last smaller batch runs uncompiled)",
        changes_result=False,
    )
    name: str = knob(
        "",
        "run folder name under out_dir; empty = <dataset>_<method>[_ls]_<teacher>_<student>_seed<seed> (_ls: with "
        "logit_standardization)",
        changes_result=False,
    )
    data: KDDataConfig = section(KDDataConfig, "dataset and loaders")
    teacher: TeacherConfig = section(TeacherConfig, "the frozen teacher")
    student: StudentConfig = section(StudentConfig, "the student being trained")
    kd: KDLossConfig = section(KDLossConfig, "Hinton KD (method=kd), mdistiller's defaults")
    dkd: DKDLossConfig = section(DKDLossConfig, "DKD (method=dkd), mdistiller's defaults")
    dist: DISTConfig = section(DISTConfig, "DIST loss (method=dist; Huang et al., NeurIPS 2022)")
    ctkd: CTKDConfig = section(
        CTKDConfig,
        "curriculum temperature (method=ctkd; Li et al., AAAI 2023): KD at a temperature learned adversarially, "
        "trained with the student's optimizer",
    )
    mlkd: MLKDConfig = section(
        MLKDConfig,
        "multi-level logit distillation (method=mlkd; Jin et al., CVPR 2023): a weak and a strong (RandAugment) "
        "view of every training image, mdistiller's KD weights",
    )
    ikl: IKLLossConfig = section(IKLLossConfig, "IKL-KD (method=ikl)")
    fitnet: FitNetConfig = section(FitNetConfig, "FitNet hints (method=fitnet), mdistiller's defaults")
    at: AttentionTransferConfig = section(
        AttentionTransferConfig, "attention transfer (method=at), mdistiller's defaults"
    )
    nst: NSTConfig = section(NSTConfig, "neuron selectivity transfer (method=nst), mdistiller's defaults")
    pkt: PKTConfig = section(PKTConfig, "probabilistic knowledge transfer (method=pkt), mdistiller's defaults")
    kdsvd: KDSVDConfig = section(KDSVDConfig, "KD via SVD (method=kdsvd), mdistiller's defaults")
    ofd: OFDConfig = section(OFDConfig, "overhaul of feature distillation (method=ofd), mdistiller's defaults")
    rkd: RKDConfig = section(RKDConfig, "relational KD (method=rkd), mdistiller's defaults")
    vid: VIDConfig = section(VIDConfig, "variational information distillation (method=vid), mdistiller's defaults")
    sp: SPConfig = section(SPConfig, "similarity-preserving KD (method=sp), mdistiller's defaults")
    crd: CRDConfig = section(CRDConfig, "contrastive representation distillation (method=crd), mdistiller's defaults")
    reviewkd: ReviewKDConfig = section(ReviewKDConfig, "ReviewKD (method=reviewkd), mdistiller's CIFAR-100 config")
    optim: KDOptimConfig = section(KDOptimConfig, "optimiser and step schedule")
    eval: KDEvalConfig = section(KDEvalConfig, "validation")

    # Keys of earlier versions: loading one is an error that names its new name.
    RENAMED_KEYS: ClassVar[Dict[str, str]] = {"distiller": "method", "ikl.weight_temperature": "ikl.prior_temperature"}

    def validate(self) -> None:
        super().validate()
        require_whole_groups(self.batchnorm_groups, self.data.batch_size)
        if self.ofd.kernel_size % 2 == 0:
            raise ConfigError(
                f"config key 'ofd.kernel_size' ({self.ofd.kernel_size}) must be odd: an even kernel would change "
                f"the size of the student's maps, which the teacher's must match"
            )
        require_model("student.arch", self.student.arch, self.data.dataset, {})
        if self.teacher.arch:
            require_model("teacher.arch", self.teacher.arch, self.data.dataset, {})
        require_increasing("optim.milestones", self.optim.milestones)
        if self.optim.warmup_epochs >= self.epochs and self.optim.warmup_epochs > 0:
            raise ConfigError(
                f"config key 'optim.warmup_epochs' ({self.optim.warmup_epochs}) must be smaller "
                f"than epochs ({self.epochs})"
            )
        if self.data.eval_list != "test" and self.data.dataset != "imagenet_lt":
            raise ConfigError(
                f"config key 'data.eval_list' chooses an ImageNet-LT list, and data.dataset is {self.data.dataset} "
                "(evaluated on its test set): set data.eval_list=test"
            )
        if self.data.long_tail:
            if len(self.data.long_tail) != 2 or self.data.long_tail[0] < self.data.long_tail[1]:
                raise ConfigError(
                    f"config key 'data.long_tail' must be [max, min] images per class with max >= min, got "
                    f"{self.data.long_tail}; e.g. data.long_tail=[150,5], or [] for the whole training set"
                )
            if self.data.dataset in ("imagenet", "imagenet_lt"):
                raise ConfigError(
                    f"config key 'data.long_tail' subsamples digits or cifar100, not {self.data.dataset} (ImageNet-LT "
                    "is data.dataset=imagenet_lt with its published lists): set data.long_tail=[]"
                )
        if self.paper_row.endswith("_ls") != self.logit_standardization and self.paper_row:
            published = "with" if self.paper_row.endswith("_ls") else "without"
            raise ConfigError(
                f"config key 'paper_row' ({self.paper_row}) names numbers published {published} logit standardization, "
                f'and logit_standardization is {str(self.logit_standardization).lower()}: set paper_row="" for this '
                "ablation, or run the recipe that row belongs to"
            )
        if self.data.dataset == "digits" and self.data.normalize:
            raise ConfigError(
                "data.normalize=true is not available for digits (pixels stay in [0, 1]); set data.normalize=false"
            )

    def run_name(self) -> str:
        pair = f"{self.teacher.arch}_{self.student.arch}" if self.teacher.arch else self.student.arch
        method = f"{self.method}_ls" if self.logit_standardization else self.method  # beside the plain run's folder
        return self.name or f"{self.data.dataset}_{method}_{pair}_seed{self.seed}"
