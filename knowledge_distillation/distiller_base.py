"""The base of every distiller and the registry they are named in (`distillers` builds them).

A distiller follows the method contract of both tasks (`engine.method.TrainingMethod`): an
``nn.Module`` whose parameters (a feature distiller's connectors) train with the student, in a
group of their own, and whose state is saved in last.pt; the logit distillers have none.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch

from engine.config import ConfigError
from engine.method import MethodRegistry, TrainingMethod
from losses import logit_standardize

from .config import KDConfig

Parts = Dict[str, torch.Tensor]


def loss_warmup(epoch: int, warmup: int) -> float:
    """min(epoch / warmup, 1): the distillation term's factor in (1-based) ``epoch``; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


class FeatureBatch(NamedTuple):
    """What a feature distiller reads besides the logits: the forwards' feature dicts
    (`models.features`), the batch's dataset indices (``needs_indices``), its index in the epoch and
    the size of the global batch this process has a share of (None: the batch is the global one)."""

    student: Dict[str, Any]
    teacher: Dict[str, Any]
    indices: Optional[torch.Tensor] = None
    batch_index: int = 0
    global_batch_size: Optional[int] = None


class Distiller(TrainingMethod):
    """The base of every distiller: its flags and ``loss``.

    ``needs_features``: the forwards return features (`models.features`) and ``loss`` gets them;
    ``needs_indices``: the training set yields each sample's index; ``teacher_in_train_mode``:
    the teacher's forward normalises with the batch's statistics (OFD); ``training_views`` 2: each
    training image comes as a weak (crop, flip) and a strong (+ RandAugment) view, each view goes through
    its own forwards (its own BatchNorm statistics), and ``loss`` gets their logits as [weak; strong] rows (MLKD).
    """

    needs_teacher = True
    needs_features = False
    training_views = 1
    takes_logit_standardization = False  # its distillation term compares logits that the knob may z-score
    loss_groups = 1  # set by the trainer: the BatchNorm groups of this process's batch (`batchnorm_groups`)
    OLDER_CHECKPOINT_KEY = "distiller"
    needs_indices = False
    teacher_in_train_mode = False

    @classmethod
    def check(cls, cfg: KDConfig) -> None:
        if cls.needs_teacher and not cfg.teacher.arch:
            raise ConfigError(f"method={cfg.method} needs a teacher: set teacher.arch and teacher.checkpoint")
        if cfg.logit_standardization and not cls.takes_logit_standardization:
            raise ConfigError(
                f"config key 'logit_standardization' z-scores the logits of a logit distiller's term (kd, dkd, dist, "
                f"mlkd, ctkd, ikl); method={cfg.method} has none: set logit_standardization=false"
            )

    def __init__(self, cfg: KDConfig, *args, **kwargs):
        super().__init__()
        self.logit_standardization = cfg.logit_standardization

    def distillation_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits a distillation term compares: z-scored over the classes with ``logit_standardization``
        (`losses.logit_standardize`), else as they are."""
        return logit_standardize(logits) if self.logit_standardization else logits

    def per_group(self, term: Callable[..., torch.Tensor], *batches: torch.Tensor) -> torch.Tensor:
        """``term(*batches)``; with ``loss_groups`` > 1 the mean of ``term`` over that many chunks of every batch
        (``Tensor.chunk``): a term that couples the batch's samples (DIST's intra-class relation, MLKD's batch and
        class correlations) as the authors' nn.DataParallel replicas or per-GPU processes computed it, one share
        of the batch each, their losses averaged."""
        if self.loss_groups <= 1:
            return term(*batches)
        chunks = zip(*(batch.chunk(self.loss_groups) for batch in batches))
        return torch.stack([term(*chunk) for chunk in chunks]).mean()

    def parameter_groups(self, weight_decay: float, batchnorm_weight_decay: bool = True):
        """One group with the student's weight decay on everything (mdistiller's optimiser)."""
        return super().parameter_groups(weight_decay, True)

    def loss(
        self,
        logits_student: torch.Tensor,
        logits_teacher: Optional[torch.Tensor],
        targets: torch.Tensor,
        epoch: int,
        prior_rows: Optional[torch.Tensor] = None,
        features: Optional[FeatureBatch] = None,
    ) -> Tuple[torch.Tensor, Parts]:
        """The loss to minimise and its parts ``ce`` and ``kd`` (the weighted terms, detached), from
        the logits of the trainer's forwards and, for a distiller that uses the class prior, the
        batch's rows of it (``ClassPrior.rows(targets)``, fetched by the trainer); a feature
        distiller also gets ``features``."""
        raise NotImplementedError


DISTILLERS = MethodRegistry("distiller")
register = DISTILLERS.register  # class decorator: ``@register("name")`` makes ``method: name`` available
