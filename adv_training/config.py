"""Every knob of adversarial training, with its default and meaning.

The defaults are the authors' CIFAR-100 IKL-AT recipe (WRN-34-10, 200 epochs, batch 128,
SGD lr 0.2 cosine, eps 8/255 ramped linearly, the `high` attack budget, alpha 4, beta 20,
prior temperature 4, AWP gamma 0.005 from epoch 10, EMA tau 0.9996 from epoch 150, the
epoch average of swa.py with tau 0.9 from epoch 1), so a
YAML file only states what differs. ``python -m adv_training.train --print-config`` lists
them all.
"""

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Literal, Optional

from engine.batchnorm_groups import require_whole_groups
from engine.config import (
    BATCH,
    EPOCHS,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    Range,
    RunConfig,
    knob,
    require_increasing,
    section,
)
from models.preprocess import MEAN_STD
from models.registry import require_model

from .paper_rows import PAPER_ROWS, PaperRow


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "cifar100", "digits"] = knob(
        "cifar100", "training and test set (digits: scikit-learn's 8x8 digits, for the quickstart)"
    )
    root: str = knob("data", "folder holding cifar-10-batches-py / cifar-100-python", changes_result=False)
    download: bool = knob(False, "download the dataset into `root` when it is missing", changes_result=False)
    verify_checksum: bool = knob(
        True, "check the official MD5 sums; false only for locally written test data", changes_result=False
    )
    augment: Literal["none", "basic", "autoaug", "cutout"] = knob(
        "basic", "basic = crop+flip; autoaug/cutout add a second, augmented view per image; none = as stored"
    )
    augmented_views: int = knob(
        1,
        "augmented views of each image beside the basic one with augment autoaug or cutout (independent draws; "
        "batches hold the basic view, then each augmented view: [basic; aug_1; ...]); DAJAT: 2",
        valid=Range(1, 8),
    )
    padding_mode: Literal["constant", "reflect"] = knob(
        "constant",
        "how the CIFAR crop pads the image by 4 pixels: constant = zeros (RandomCrop(32, padding=4)); "
        "reflect = mirrored without repeating the edge (np.pad/torchvision 'reflect': csdongxian/AWP's "
        "CIFAR-10 AT script). The real training set's loader only (not generated.path, not data.loader=device)",
    )
    rotate_degrees: float = knob(
        0.0,
        "after crop and flip, rotate every real training image by an angle uniform in [-d, d] degrees, "
        "nearest neighbour, zero fill (torchvision's RandomRotation(d): csdongxian/AWP's CIFAR-100 AT "
        "script, 15); 0 = none. As generated.rotate_degrees, for the real training set's loader (not "
        "generated.path, whose loader has its own, not data.loader=device)",
        valid=Range(0, 180),
    )
    aug_weight: float = knob(
        1.0,
        "weight of the augmented view's robust term in the training loss (dual-view modes; DKLv1's "
        "autoaug launcher calls it --gamma, 0.3; DKLv2's --aug_weight, 0.5). AWP's proxy step ignores it, "
        "as the reference: one robust term over both views",
        valid=NON_NEGATIVE,
    )
    batch_size: int = knob(128, "global training batch size (per view; several processes share it)", valid=BATCH)
    drop_last: bool = knob(False, "drop the last incomplete training batch (the reference's TRADES script does)")
    test_batch_size: int = knob(
        256,
        "evaluation batch size of each process (whole batches are dealt to the processes)",
        valid=BATCH,
        changes_result=False,
    )
    validation_size: int = knob(
        0,
        "hold the first N real training images out of training as a validation set (test "
        "transform; Wang et al.: 1024, for eval.split=validation); 0 = none",
        valid=NON_NEGATIVE,
    )
    validation_per_class: int = knob(
        0,
        "hold the first N real training images of each class (in the files' order) out of training as a "
        "validation set (DAJAT: 10, so 49,000 CIFAR-100 and 49,900 CIFAR-10 training images); 0 = none; "
        "excludes validation_size",
        valid=NON_NEGATIVE,
    )
    num_workers: int = knob(4, "DataLoader worker processes", valid=Range(0, 256), changes_result=False)
    loader: Literal["auto", "workers", "device"] = knob(
        "auto",
        "device: the whole CIFAR training set on the device as uint8, shuffled, cropped and flipped there a "
        "batch at a time (RandomCrop(32, padding=4) + flip's distribution, no workers; augment basic or none, no "
        "generated data, default padding_mode and rotate_degrees); workers: DataLoader worker processes; auto: "
        "device on CUDA where it applies, else workers",
        changes_result=False,
    )

    def views(self) -> int:
        """How many views of each image a training batch holds: 1, or the basic and the augmented ones."""
        return 1 + self.augmented_views if self.augment in ("autoaug", "cutout") else 1


@dataclass
class GeneratedConfig:
    path: str = knob(
        "",
        "folder written by `python -m adv_training.prepare_generated` from Wang et al.'s generated "
        "images, mixed into every batch; empty = the real training set only",
    )
    unsup_fraction: float = knob(
        0.7,
        "share of generated images in every batch, int(fraction * batch_size) of them, drawn with replacement; "
        "the rest real images without replacement (Wang et al.'s --unsup-fraction, 0.7 in their README's 1M "
        "command)",
        valid=Range(0, 1, high_open=True),
    )
    epoch_images: int = knob(
        50_000,
        "an epoch is ceil(epoch_images / batch_size) batches whatever the amount of generated data (Wang "
        "et al.'s semisup.py: the 50,000 real CIFAR training images)",
        valid=Range(1),
    )
    verify_hashes: bool = knob(
        False, "recompute the prepared files' sha256 before training (reads them all once)", changes_result=False
    )
    rotate_degrees: float = knob(
        0.0,
        "after crop and flip, rotate every training image by an angle uniform in "
        "[-d, d] degrees, nearest neighbour, zero fill (Wang et al.'s CIFAR-100 loader: "
        "RandomRotation(15)); 0 = none",
        valid=Range(0, 180),
    )


@dataclass
class ModelConfig:
    arch: str = knob("WideResNet34_10", "name in the model zoo (models.available_models())")
    depth: Optional[int] = knob(
        None, "depth of the generic `WideResNet` arch (null = the architecture's own)", valid=Range(10, 1000)
    )
    widen_factor: Optional[int] = knob(
        None, "width of the generic `WideResNet` arch (null = the architecture's own)", valid=Range(1, 64)
    )
    preprocess: Literal["01", "meanstd"] = knob(
        "01",
        "input normalisation inside the model (attacks stay in [0, 1] pixels): 01 = none; meanstd = "
        "(x - mean) / std with the CIFAR statistics of csdongxian/AWP's AT scripts (models.MEAN_STD). "
        "Checkpoints stay plain architecture state dicts: AutoAttack's eval.py reads it from the run "
        "folder, or takes --preprocess meanstd for a checkpoint file",
    )

    view_batchnorm: bool = knob(
        False,
        "the augmented views (data.augmented_views) go through BatchNorms of their own, one set shared by every "
        "augmented view, each view normalised with its own batch statistics, also inside the attack (DAJAT's "
        "WideResNet, batch_norm='auto'); the weights files, the export and the evaluation hold the basic "
        "view's BatchNorms only, in the architecture's plain layout (last.pt keeps both)",
    )

    def build_kwargs(self) -> dict:
        return {k: v for k, v in (("depth", self.depth), ("widen_factor", self.widen_factor)) if v is not None}


@dataclass
class IKLConfig:
    alpha: float = knob(4.0, "weight of the soft-label CE term of IKL (the paper's beta)", valid=NON_NEGATIVE)
    beta: float = knob(20.0, "weight of the wMSE term of IKL (the paper's alpha)", valid=NON_NEGATIVE)
    gamma: float = knob(
        1.0, "exponent on the class-prior weights (GKL uses 0.4 on CIFAR-100, 0.2 on CIFAR-10)", valid=NON_NEGATIVE
    )
    temperature: float = knob(1.0, "temperature of the IKL soft-label CE term", valid=POSITIVE)
    prior_temperature: float = knob(
        4.0,
        "temperature of the softmax averaged into the class prior, which each epoch replaces: the authors' "
        "DKLv1 --m (prior momentum) at its default 1, which none of their launchers changes",
        valid=POSITIVE,
    )


@dataclass
class TradesConfig:
    beta: float = knob(6.0, "weight of TRADES' KL term (also each view's in method=dajat)", valid=NON_NEGATIVE)


@dataclass
class MARTConfig:
    beta: float = knob(
        6.0, "weight of MART's misclassification-aware KL term (lambda; MART's own default 6)", valid=NON_NEGATIVE
    )


@dataclass
class LBGATConfig:
    beta: float = knob(
        6.0,
        "weight of LBGAT's TRADES term KL(robust(x) || robust(x_adv)) (jiequancui/LBGAT --beta: 6 = LBGAT6, "
        "0 = LBGAT0)",
        valid=NON_NEGATIVE,
    )
    natural_arch: str = knob(
        "ResNet18_cifar",
        "the natural classifier trained beside the robust model (LBGAT's -teacher_model); saved in last.pt "
        "with the method's state, never exported or evaluated",
    )


@dataclass
class DAJATConfig:
    js_weight: float = knob(
        2.0,
        "weight of the Jensen-Shannon term over the clean softmaxes of all views (DAJAT's --JS_weight: "
        "defaults.py, 2 on CIFAR-100, 3 for CIFAR-10 WRN-34-10)",
        valid=NON_NEGATIVE,
    )


@dataclass
class LASATConfig:
    epsilons: List[int] = knob(
        [7, 8, 9, 10, 11, 12, 13, 14, 15],
        "the strategy network's epsilon choices, in /255 of a pixel (LAS-AT's README: --epsilon_types 7 ... 15)",
        valid=Range(1, 255),
    )
    steps: List[int] = knob(
        [8, 9, 10, 11, 12, 13, 14, 15, 16],
        "its choices of attack steps (README: --attack_iters_types 8 ... 16 on CIFAR-10, 8 ... 15 on CIFAR-100)",
        valid=Range(1, 1000),
    )
    step_sizes: List[int] = knob(
        [2, 3, 4, 5],
        "its step-size choices, in /255 of a pixel (README: --step_size_types 2 3 4 5)",
        valid=Range(1, 255),
    )
    interval: int = knob(
        1,
        "the strategy network learns every N training steps (LAS_AWP CIFAR-10: every step; CIFAR-100: "
        "--interval_num 10)",
        valid=Range(1),
    )
    policy_lr: float = knob(
        1e-4,
        "the strategy network's SGD learning rate, scaled with the model's schedule (--policy_model_lr)",
        valid=POSITIVE,
    )
    policy_momentum: float = knob(
        0.0, "its SGD momentum (CIFAR-10: none; CIFAR-100's SGD_with_momentum: 0.9)", valid=Range(0, 1, high_open=True)
    )
    policy_weight_decay: float = knob(0.0, "its SGD weight decay (CIFAR-100: 5e-4)", valid=NON_NEGATIVE)
    clip_grad_norm: float = knob(1.0, "its gradient is clipped to this norm (--clip_grad_norm)", valid=POSITIVE)
    robust_weight: float = knob(
        1.0,
        "weight of the look-ahead copy's robust accuracy in the reward (--R2_param: 1 CIFAR-10, 4 CIFAR-100)",
        valid=NON_NEGATIVE,
    )
    clean_weight: float = knob(
        1.0, "weight of its clean accuracy in the reward (--R3_param: 1 CIFAR-10, 2 CIFAR-100)", valid=NON_NEGATIVE
    )
    lookahead_label_smoothing: float = knob(
        0.3,
        "label smoothing of the look-ahead step's CE, off_target form (their --factor 0.7: 0.7 on the label)",
        valid=Range(0, 1, high_open=True),
    )
    reward_epsilon: float = knob(
        8 / 255,
        "the radius of the look-ahead copy's PGD and the random start of every sampled attack (their 8/255)",
        valid=POSITIVE,
    )
    reward_step_size: float = knob(2 / 255, "the step size of the look-ahead copy's PGD", valid=POSITIVE)
    reward_steps: int = knob(10, "the steps of the look-ahead copy's PGD", valid=Range(1, 1000))
    reward_restarts: int = knob(2, "the restarts of the look-ahead copy's PGD", valid=Range(1, 100))


@dataclass
class AttackConfig:
    norm: Literal["linf", "l2"] = knob("linf", "threat model of the training attack")
    epsilon: float = knob(8 / 255, "perturbation budget (accepts fractions such as 8/255)", valid=POSITIVE)
    eps_ramp: bool = knob(True, "ramp the training epsilon linearly: eps_t = eps * epoch / epochs")
    budget: Literal["low", "high", "high_piecewise", "fixed"] = knob(
        "high",
        "low: 2 steps of eps_t; high: 5 steps of eps_t/2 (what the reference runs); "
        "high_piecewise: the 2/3/4/5-step schedule the reference intended; fixed: `steps` of `step_size`",
    )
    steps: int = knob(10, "number of steps for budget=fixed", valid=Range(0, 10000))
    step_size: float = knob(2 / 255, "step size for budget=fixed", valid=NON_NEGATIVE)
    random_start: Literal["normal", "uniform", "none"] = knob(
        "normal", "normal: x + 0.001*N(0,1) (TRADES/reference); uniform: U(-eps, eps) (Madry PGD-AT)"
    )
    alpha: float = knob(
        1.0, "IKL inner objective: CE weight (reference: 1 on CIFAR-100 and CIFAR-10)", valid=NON_NEGATIVE
    )
    beta: float = knob(
        1.0, "IKL inner objective: wMSE weight (reference: 1 on CIFAR-100, 0 on CIFAR-10)", valid=NON_NEGATIVE
    )
    eval_mode: bool = knob(True, "model in eval mode (BN running statistics) while attacking")
    freeze_bn_stats: bool = knob(
        False,
        "with eval_mode=false: BatchNorm normalises with the batch's statistics but "
        "does not update its running ones while attacking (Wang et al.'s TRADES attack)",
    )


@dataclass
class AWPConfig:
    enabled: bool = knob(True, "adversarial weight perturbation (Wu et al. 2020)")
    gamma: float = knob(0.005, "relative size of the weight perturbation", valid=NON_NEGATIVE)
    warmup: int = knob(10, "first epoch with AWP", valid=NON_NEGATIVE)
    proxy_lr: float = knob(
        0.01, "proxy SGD step (cancels out of the per-layer normalised perturbation)", valid=POSITIVE
    )


@dataclass
class EMAConfig:
    enabled: bool = knob(True, "keep an exponential moving average of weights and BN buffers")
    tau: float = knob(0.9996, "EMA decay per iteration", valid=Range(0, 1, high_open=True))
    start_epoch: int = knob(150, "epoch at which the average starts from a copy of the model", valid=NON_NEGATIVE)
    warmup_fraction: float = knob(
        0.0,
        "0 = the DKL reference (copy through start_epoch, then tau); > 0 = Wang et al.'s weight average: copy "
        "for the first warmup_fraction * epochs * batches-per-epoch updates, then decay min(tau, (1+d)/(10+d)) d "
        "updates later (theirs: 0.025, tau 0.995, from epoch 1)",
        valid=FRACTION,
    )
    average_buffers: bool = knob(
        True,
        "average the BatchNorm statistics too (the DKL reference); false = copy the "
        "model's (Wang et al.'s average shares them)",
    )


@dataclass
class EpochAverageConfig:
    enabled: bool = knob(
        True,
        "average the end-of-epoch weights as the reference's `swa.py TAU START END` (run after every launcher "
        "run) and write ours-model-epoch-SWA{tau}{start}{end}.pt; the released models are this average",
    )
    tau: float = knob(
        0.9,
        "weight of the running average: avg = (1 - tau) * epoch weights + tau * avg",
        valid=Range(0, 1, high_open=True),
    )
    start: int = knob(1, "first epoch of the average (its weights start the average)", valid=Range(1))
    end: Optional[int] = knob(None, "last epoch of the average; null = the last epoch of the run", valid=Range(1))

    def last_epoch(self, epochs: int) -> int:
        return self.end if self.end is not None else epochs


@dataclass
class OptimConfig:
    lr: float = knob(0.2, "peak learning rate of SGD", valid=POSITIVE)
    momentum: float = knob(0.9, "SGD momentum", valid=Range(0, 1, high_open=True))
    weight_decay: float = knob(5e-4, "L2 weight decay", valid=NON_NEGATIVE)
    batchnorm_weight_decay: bool = knob(
        True,
        "apply weight_decay to BatchNorm weights and biases too (the DKL "
        "scripts); false = none on them (Wang et al.'s watrain.py)",
    )
    nesterov: bool = knob(False, "Nesterov momentum")
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = knob(
        "auto",
        "SGD's update kernel: fused (one kernel for all parameters), foreach, for_loop; the same update "
        "to 1e-6; auto = fused on CUDA, torch's default elsewhere",
        changes_result=False,
    )
    schedule: Literal["cosine", "cosine_trades", "step", "cosinew"] = knob(
        "cosine",
        "cosine: lr*(1+cos(pi*(e-w)/(E-w+1)))/2 after w warmup epochs (the DKL scripts); "
        "cosine_trades: lr*(1+cos(pi*(e-1)/E))/2 (the reference's TRADES script); step: decays at milestones; "
        "cosinew: Wang et al.'s OneCycleLR per epoch (lr/25 rising to lr at 2.5% of the epochs, then falling to "
        "lr/2.5e5; momentum cycles 0.95 -> 0.85 -> 0.95 and replaces optim.momentum)",
    )
    warmup_epochs: int = knob(0, "linear warmup epochs: lr*e/w for e < w", valid=NON_NEGATIVE)
    milestones: List[int] = knob([100, 150], "epochs at which the step schedule multiplies lr by decay", valid=Range(1))
    decay: float = knob(0.1, "step schedule factor", valid=Range(0, 1, low_open=True))
    first_epoch_lr: Optional[float] = knob(
        None, "the learning rate of epoch 1 alone (LBGAT's warm-up: 0.02); null = the schedule's", valid=POSITIVE
    )


@dataclass
class EvalConfig:
    num_examples: Optional[int] = knob(
        1000, "first N test images evaluated each epoch; null = the whole test set", valid=Range(1)
    )
    pgd_steps: int = knob(
        20, "steps of the per-epoch PGD evaluation (CE objective, uniform random start)", valid=Range(0, 10000)
    )
    step_size: float = knob(2 / 255, "step size of the per-epoch PGD evaluation", valid=NON_NEGATIVE)
    epsilon: Optional[float] = knob(None, "evaluation budget; null = attack.epsilon", valid=POSITIVE)
    every: int = knob(1, "evaluate every N epochs (the last epoch always)", valid=Range(1))
    split: Literal["test", "validation"] = knob(
        "test",
        "the set the per-epoch PGD monitor attacks: test = the first num_examples test images; validation = "
        "the data.validation_size held-out training images (Wang et al.), with clean accuracy on the test set too",
    )
    objective: Literal["ce", "margin"] = knob(
        "ce",
        "the monitor's attack loss: ce, or margin = -max(o_y - max_{k!=y} o_k, 0) (Carlini-Wagner's, Wang et "
        "al.'s PGD-40 on the validation set)",
    )
    select: Literal["model", "ema"] = knob(
        "model",
        "whose monitored robust accuracy picks best.pt, which then holds "
        "that model's weights (Wang et al.: their weight average, ema)",
    )


@dataclass
class ATConfig(RunConfig):
    PAPER_ROWS: ClassVar[Dict[str, PaperRow]] = PAPER_ROWS
    TASK: ClassVar[str] = "adv_training"
    RENAMED_KEYS: ClassVar[Dict[str, str]] = {"swa": "epoch_average"}

    method: str = knob(
        "ikl",
        "training objective, a name in adv_training.methods: ikl (IKL-AT), trades, pgd (Madry PGD-AT), "
        "mart, lbgat (Cui et al. 2021), dajat (Addepalli et al. 2022), las_at (Jia et al. 2022), or standard "
        "(clean CE, no attack); ACAT is trades with its own recipe",
    )
    epochs: int = knob(200, "training epochs", valid=EPOCHS)
    precision: Literal["fp32", "tf32", "bf16"] = knob(
        "fp32",
        "fp32 = strict float32; tf32 = TF32 matrix products and convolutions (Ampere GPUs and later); bf16 = "
        "bf16 autocast for training and attacks (stem and head in float32), TF32 elsewhere, the per-epoch monitor "
        "included; AutoAttack always evaluates in float32",
    )
    bf16_min_eps: float = knob(
        1 / 255,
        "precision=bf16: epochs whose attack budget eps_t is below this train and attack in TF32 instead "
        "(bf16's rounding hides smaller perturbations: the README's 'Precision' table); 0 = bf16 throughout",
        valid=Range(0, 1),
    )
    compile: bool = knob(
        False,
        "torch.compile the model for the attack and training forwards (the first epoch "
        "compiles, reported as compile_seconds; a last smaller batch runs uncompiled)",
        changes_result=False,
    )
    name: str = knob(
        "", "run folder name under out_dir; empty = <dataset>_<method>_<arch>_seed<seed>", changes_result=False
    )
    save_every: int = knob(
        0,
        "also write ours-model-epoch{N}.pt every N epochs ({'model', 'epoch', ...}, for swa.py); 0 = never",
        valid=NON_NEGATIVE,
        changes_result=False,
    )
    label_smoothing: float = knob(
        0.0,
        "label smoothing of the clean-image CE term of ikl, trades and dajat, in the form label_smoothing_form says (Wang "
        "et al.'s --ls 0.1 in their generated-data runs); 0 = none, as the DKL scripts",
        valid=Range(0, 1, high_open=True),
    )
    label_smoothing_form: Literal["uniform", "off_target"] = knob(
        "uniform",
        "where label_smoothing puts its mass: uniform = ls/C on every class, the true one included (torch's, Wang "
        "et al.'s); off_target = 1-ls on the true class and ls/(C-1) on each other (DAJAT's LabelSmoothingLoss: a "
        "target of 0.9 with ls 0.1). AWP's proxy loss never smooths (DAJAT's utils_awp.py)",
    )
    data: DataConfig = section(DataConfig, "dataset, augmentation and loaders")
    generated: GeneratedConfig = section(
        GeneratedConfig, "generated images mixed into the training batches (Wang et al. 2023)"
    )
    model: ModelConfig = section(ModelConfig, "architecture")
    ikl: IKLConfig = section(IKLConfig, "IKL-AT loss (method=ikl)")
    trades: TradesConfig = section(TradesConfig, "TRADES loss (method=trades)")
    mart: MARTConfig = section(MARTConfig, "MART loss (method=mart)")
    lbgat: LBGATConfig = section(LBGATConfig, "LBGAT loss and its natural classifier (method=lbgat)")
    las_at: LASATConfig = section(LASATConfig, "LAS-AT's strategy network and its reward (method=las_at)")
    dajat: DAJATConfig = section(
        DAJATConfig, "DAJAT's Jensen-Shannon term over the views (method=dajat; each view's TRADES beta is trades.beta)"
    )
    attack: AttackConfig = section(AttackConfig, "inner maximisation during training")
    awp: AWPConfig = section(AWPConfig, "adversarial weight perturbation")
    ema: EMAConfig = section(EMAConfig, "weight averaging during training (every iteration)")
    epoch_average: EpochAverageConfig = section(
        EpochAverageConfig,
        "exponential average of the end-of-epoch weights (the reference's swa.py; its numbers are swa_*, its file "
        "ours-model-epoch-SWA{tau}{start}{end}.pt, --which swa)",
    )
    optim: OptimConfig = section(OptimConfig, "optimiser and learning-rate schedule")
    eval: EvalConfig = section(EvalConfig, "per-epoch evaluation")

    def validate(self) -> None:
        """What involves several knobs (each knob's own range is checked from its declaration)."""
        super().validate()
        require_model("model.arch", self.model.arch, self.data.dataset, self.model.build_kwargs())
        require_increasing("optim.milestones", self.optim.milestones)
        require_whole_groups(self.batchnorm_groups, self.data.batch_size, self.data.views())
        if self.model.view_batchnorm:
            if self.data.views() == 1:
                raise ConfigError(
                    "config key 'model.view_batchnorm' gives augmented views BatchNorms of their own, and "
                    f"data.augment is {self.data.augment} (one view): use data.augment=autoaug or cutout, or "
                    "model.view_batchnorm=false"
                )
            for key, value, plain in (("batchnorm_groups", self.batchnorm_groups, 1), ("sync_bn", self.sync_bn, False)):
                if value != plain:
                    raise ConfigError(
                        f"config key '{key}' ({value}) cannot be combined with model.view_batchnorm (each view's "
                        f"BatchNorm normalises that view on its process): set {key}={str(plain).lower()}"
                    )
        if self.data.augmented_views != 1 and self.data.views() == 1:
            raise ConfigError(
                f"config key 'data.augmented_views' ({self.data.augmented_views}) needs data.augment autoaug or "
                f"cutout, got {self.data.augment}: set data.augmented_views=1"
            )
        if self.attack.norm == "linf":
            for key, eps in (
                ("attack.epsilon", self.attack.epsilon),
                ("eval.epsilon", self.eval.epsilon),
                ("las_at.reward_epsilon", self.las_at.reward_epsilon),
                ("las_at.reward_step_size", self.las_at.reward_step_size),
            ):
                if eps is not None and eps > 1:
                    raise ConfigError(
                        f"config key '{key}' must be at most 1 for linf (images lie in [0, 1]), "
                        f"got {eps}; write 8/255, not 8"
                    )
        average_end = self.epoch_average.last_epoch(self.epochs)
        if not self.epoch_average.start <= average_end <= self.epochs:
            raise ConfigError(
                f"config keys 'epoch_average.start' ({self.epoch_average.start}) and 'epoch_average.end' "
                f"({self.epoch_average.end}) must satisfy "
                f"1 <= start <= end <= epochs ({self.epochs})"
            )
        for key, enabled, first in (
            ("awp.warmup", self.awp.enabled, self.awp.warmup),
            ("ema.start_epoch", self.ema.enabled, self.ema.start_epoch),
        ):
            if enabled and first > self.epochs:
                raise ConfigError(
                    f"config key '{key}' ({first}) is after the last epoch ({self.epochs}), so it would "
                    f"never act; lower it, or switch it off ({key.split('.')[0]}.enabled=false)"
                )
        if self.data.validation_size and self.data.validation_per_class:
            raise ConfigError(
                "config keys 'data.validation_size' and 'data.validation_per_class' both hold training images "
                "out: set one of them to 0"
            )
        if self.eval.split == "validation" and self.data.validation_size == 0 and self.data.validation_per_class == 0:
            raise ConfigError(
                "config key 'eval.split' is validation but no training image is held out: set data.validation_size "
                "(Wang et al.: 1024) or data.validation_per_class, or use eval.split=test"
            )
        if self.eval.select == "ema" and not self.ema.enabled:
            raise ConfigError(
                "config key 'eval.select' is ema but ema.enabled is false: enable the average or "
                "select by the model (eval.select=model)"
            )
        if self.generated.path:
            if self.data.dataset not in ("cifar10", "cifar100"):
                raise ConfigError(
                    f"config key 'generated.path' needs data.dataset cifar10 or cifar100 (32x32 RGB "
                    f"images), got {self.data.dataset}"
                )
            if self.data.augment not in ("basic", "none"):
                raise ConfigError(
                    f"config key 'data.augment' must be basic or none with generated.path (the mixing "
                    f"loader crops and flips whole batches), got {self.data.augment}"
                )
            if self.data.augment == "none" and self.generated.rotate_degrees > 0:
                raise ConfigError(
                    "config key 'generated.rotate_degrees' rotates after crop and flip, and "
                    "data.augment is none: use data.augment=basic or generated.rotate_degrees=0"
                )
            if self.data.drop_last:
                raise ConfigError(
                    "config key 'data.drop_last' has no meaning with generated.path (every mixed batch "
                    "is full): set data.drop_last=false"
                )
            if self.data.loader == "device":
                raise ConfigError(
                    "config key 'data.loader' is device, but generated.path mixes generated images in "
                    "with its own loader: use data.loader=auto or workers"
                )
        elif self.generated.rotate_degrees > 0:
            raise ConfigError(
                "config key 'generated.rotate_degrees' acts on the mixing loader only: set "
                "generated.path, or generated.rotate_degrees=0"
            )
        if self.data.dataset == "digits" and self.data.augment in ("autoaug", "cutout"):
            raise ConfigError(
                f"config key 'data.augment' is {self.data.augment}, which digits does not have (8x8 digits are "
                f"not augmented; none and basic both give the plain images): use data.augment=none"
            )
        if self.model.preprocess == "meanstd" and self.data.dataset not in MEAN_STD:
            raise ConfigError(
                f"config key 'model.preprocess' is meanstd, which has statistics for {', '.join(MEAN_STD)} only, "
                f"got data.dataset={self.data.dataset}: use model.preprocess=01"
            )
        crop_knobs = {
            key: default
            for key, default, changed in (
                ("data.padding_mode", "constant", self.data.padding_mode != "constant"),
                ("data.rotate_degrees", 0, self.data.rotate_degrees > 0),
            )
            if changed
        }
        if crop_knobs:
            if self.data.dataset not in ("cifar10", "cifar100"):
                why = f"data.dataset is {self.data.dataset}, not CIFAR"
            elif self.data.augment == "none":
                why = "data.augment is none (nothing is cropped)"
            elif self.generated.path:
                why = "generated.path mixes its own crops in (generated.rotate_degrees rotates those)"
            elif self.data.loader == "device":
                why = "data.loader is device, whose crops pad with zeros and never rotate (use data.loader=auto)"
            else:
                why = None
            if why is not None:
                key = next(iter(crop_knobs))
                raise ConfigError(
                    f"config key '{key}' acts on the crops of the real CIFAR training set's loader, but {why}; "
                    f"or drop it: " + ", ".join(f"{name}={default}" for name, default in crop_knobs.items())
                )
        if self.data.loader == "device" and (
            self.data.dataset not in ("cifar10", "cifar100") or self.data.augment not in ("basic", "none")
        ):
            raise ConfigError(
                f"config key 'data.loader' is device, which holds CIFAR images and crops and flips "
                f"them (augment basic or none); got data.dataset={self.data.dataset} and "
                f"data.augment={self.data.augment}: use data.loader=workers"
            )
        if self.optim.schedule == "cosinew" and self.optim.warmup_epochs > 0:
            raise ConfigError(
                "config key 'optim.warmup_epochs' does not apply to optim.schedule=cosinew (it warms "
                "up by itself over 2.5% of the epochs): set optim.warmup_epochs=0"
            )
        if self.optim.warmup_epochs >= self.epochs and self.optim.warmup_epochs > 0:
            raise ConfigError(
                f"config key 'optim.warmup_epochs' ({self.optim.warmup_epochs}) must be smaller "
                f"than epochs ({self.epochs})"
            )

    def run_name(self) -> str:
        return self.name or f"{self.data.dataset}_{self.method}_{self.model.arch}_seed{self.seed}"
