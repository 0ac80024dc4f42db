r"""The feature distillers of mdistiller, registered beside the logit ones (`distillers`).

    fitnet, at, nst, pkt, kdsvd, ofd, rkd, vid, sp, crd:
        ce_weight * CE(s, y) + feat_weight * L(features of s, features of t)
    reviewkd:
        ce_weight * CE(s, y) + warmup(e) * reviewkd_weight * HCL(fused s features, t features)

which features each reads follows mdistiller (megvii-research/mdistiller a08d46f,
``mdistiller/distillers/<Method>.py``); the losses are `losses.feature`, the trainable parts
`feature_modules`. Every feature distiller is built from the student and the teacher (the
shapes of their features size its connectors, `models.feature_shapes`); its parameters train
with the student's optimizer and, with its buffers (CRD's memory), are saved in last.pt and
resumed; the exported student never holds them.

Where mdistiller's code and its configs disagree, the config's intent is followed and the
knob says so (``vid.learn_variance``, ``reviewkd.max_mid_channel``).
"""

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import distributed
from engine.config import ConfigError
from engine.data.samplers import shard_bounds
from engine.data.transforms import keyed_generator
from engine.errors import UserError
from losses import feature as feature_losses
from models import feature_shapes

from .config import KDConfig
from .distiller_base import Distiller, FeatureBatch, loss_warmup, register
from .feature_modules import (
    AttentionFusion,
    ContrastMemory,
    ConvRegressor,
    CRDSampler,
    Embed,
    ofd_connector,
    vid_initial_log_scale,
    vid_regressor,
)


class FeatureDistiller(Distiller):
    """CE with the labels plus ``feature_loss`` (already weighted) on the forwards' features."""

    needs_features = True
    section = ""  # the config section of the distiller's knobs

    def __init__(self, cfg: KDConfig, student: nn.Module, teacher: nn.Module, input_size, **_):
        super().__init__(cfg)
        self.settings = getattr(cfg, self.section)
        for role, arch, model in (("student", cfg.student.arch, student), ("teacher", cfg.teacher.arch, teacher)):
            if not hasattr(model, "forward_features"):
                raise UserError(
                    f"method={cfg.method} reads the {role}'s features, and {arch} does not return them "
                    f"(models/features.py lists the models that do: the CIFAR KD zoo, the ImageNet networks, "
                    f"the digits CNNs); choose one of those as {role}.arch"
                )

    def feature_loss(self, features: FeatureBatch, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits_student, logits_teacher, targets, epoch, prior_rows=None, features=None):
        ce = self.settings.ce_weight * F.cross_entropy(logits_student, targets)
        distill = self.feature_loss(features, targets, epoch)
        return ce + distill, {"ce": ce.detach(), "kd": distill.detach()}


@register("fitnet")
class FitNet(FeatureDistiller):
    """FitNets (Romero et al., 2015): the student's hint layer regressed onto the teacher's, MSE."""

    section = "fitnet"

    def __init__(self, cfg, student, teacher, input_size, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        layer = self.settings.hint_layer
        s_shapes, _ = feature_shapes(student, input_size)
        t_shapes, _ = feature_shapes(teacher, input_size)
        if layer >= min(len(s_shapes), len(t_shapes)):
            raise UserError(
                f"fitnet.hint_layer={layer} is past the last feature of {cfg.student.arch} or {cfg.teacher.arch} "
                f"({len(s_shapes)} and {len(t_shapes)} features, counted from 0)"
            )
        self.conv_reg = ConvRegressor(s_shapes[layer], t_shapes[layer])

    def feature_loss(self, features, targets, epoch):
        layer = self.settings.hint_layer
        regressed = self.conv_reg(features.student["feats"][layer])
        return self.settings.feat_weight * feature_losses.hint_loss(regressed, features.teacher["feats"][layer])


@register("at")
class AttentionTransfer(FeatureDistiller):
    """Attention transfer on every stage after the stem."""

    section = "at"

    def feature_loss(self, features, targets, epoch):
        return self.settings.feat_weight * feature_losses.attention_transfer_loss(
            features.student["feats"][1:], features.teacher["feats"][1:], self.settings.p
        )


@register("nst")
class NST(FeatureDistiller):
    """Neuron selectivity transfer on every stage after the stem."""

    section = "nst"

    def feature_loss(self, features, targets, epoch):
        return self.settings.feat_weight * feature_losses.nst_loss(
            features.student["feats"][1:], features.teacher["feats"][1:]
        )


@register("pkt")
class PKT(FeatureDistiller):
    """Probabilistic knowledge transfer on the pooled features."""

    section = "pkt"

    def feature_loss(self, features, targets, epoch):
        return self.settings.feat_weight * feature_losses.pkt_loss(
            features.student["pooled_feat"], features.teacher["pooled_feat"]
        )


@register("kdsvd")
class KDSVD(FeatureDistiller):
    """KD via SVD on every stage after the stem."""

    section = "kdsvd"

    def __init__(self, cfg, student, teacher, input_size, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        k = self.settings.k
        for role, model in (("student", student), ("teacher", teacher)):
            shapes, _ = feature_shapes(model, input_size)
            # each stage's map is reshaped to (C*H, W): it has min(C*H, W) singular vectors. The student's
            # k + 3 are capped at that, as in mdistiller (whose configs do so on 2-wide maps); k itself is not.
            available = min(min(c * h, w) for _, c, h, w in shapes[1:])
            if k > available:
                raise ConfigError(
                    f"config key 'kdsvd.k' ({k}) asks for more singular vectors than the {role}'s smallest "
                    f"feature map has ({available}); use kdsvd.k={available} or less"
                )

    def feature_loss(self, features, targets, epoch):
        return self.settings.feat_weight * feature_losses.kdsvd_loss(
            features.student["feats"][1:], features.teacher["feats"][1:], self.settings.k
        )


@register("ofd")
class OFD(FeatureDistiller):
    """Overhaul of feature distillation: the student's pre-ReLU stages (after the stem, the last as many
    as both have) through conv-BN connectors, against the teacher's pre-ReLU stages with the margins of
    its pre-ReLU BatchNorms. The teacher runs in train mode (BatchNorm on the batch's statistics), as
    in mdistiller and Heo et al.'s code; its running statistics are never read during training."""

    section = "ofd"
    teacher_in_train_mode = True

    def __init__(self, cfg, student, teacher, input_size, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        s_channels, t_channels = student.get_stage_channels()[1:], teacher.get_stage_channels()[1:]
        self.stages = min(len(s_channels), len(t_channels))
        s_channels, t_channels = s_channels[-self.stages :], t_channels[-self.stages :]
        self.connectors = nn.ModuleList(
            ofd_connector(s, t, self.settings.kernel_size) for s, t in zip(s_channels, t_channels)
        )
        try:
            pre_relu_norms = teacher.get_bn_before_relu()
        except NotImplementedError:
            raise UserError(
                f"method=ofd reads the margins of the teacher's BatchNorms before its stages' ReLUs, and "
                f"{cfg.teacher.arch} has none (as in mdistiller); choose another teacher or method"
            ) from None
        margins = [feature_losses.ofd_margins(bn.weight, bn.bias) for bn in pre_relu_norms]
        for index, margin in enumerate(margins[-self.stages :]):
            self.register_buffer(f"margin{index}", margin, persistent=False)  # a function of the frozen teacher

    def feature_loss(self, features, targets, epoch):
        student = features.student["preact_feats"][1:][-self.stages :]
        teacher = features.teacher["preact_feats"][1:][-self.stages :]
        connected = [connector(f) for connector, f in zip(self.connectors, student)]
        margins = [getattr(self, f"margin{i}") for i in range(self.stages)]
        return self.settings.feat_weight * feature_losses.ofd_loss(connected, teacher, margins)


@register("rkd")
class RKD(FeatureDistiller):
    """Relational KD (distance and angle) on the pooled features."""

    section = "rkd"

    def feature_loss(self, features, targets, epoch):
        s = self.settings
        return s.feat_weight * feature_losses.rkd_loss(
            features.student["pooled_feat"],
            features.teacher["pooled_feat"],
            squared=s.squared,
            eps=s.eps,
            distance_weight=s.distance_weight,
            angle_weight=s.angle_weight,
        )


@register("vid")
class VID(FeatureDistiller):
    """Variational information distillation on every stage after the stem: per stage a 1x1-conv mean
    regressor and per-channel variances (trained with ``vid.learn_variance``, mdistiller keeps them fixed)."""

    section = "vid"

    def __init__(self, cfg, student, teacher, input_size, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        s_shapes, _ = feature_shapes(student, input_size)
        t_shapes, _ = feature_shapes(teacher, input_size)
        pairs = list(zip([s[1] for s in s_shapes[1:]], [t[1] for t in t_shapes[1:]]))
        self.regressors = nn.ModuleList(vid_regressor(s, t) for s, t in pairs)
        start = vid_initial_log_scale(self.settings.init_pred_var, self.settings.eps)
        scales = [torch.full((t,), start) for _, t in pairs]
        if self.settings.learn_variance:
            self.log_scales = nn.ParameterList(nn.Parameter(scale) for scale in scales)
        else:
            for index, scale in enumerate(scales):
                self.register_buffer(f"log_scale{index}", scale)

    def _log_scale(self, index: int) -> torch.Tensor:
        return self.log_scales[index] if self.settings.learn_variance else getattr(self, f"log_scale{index}")

    def feature_loss(self, features, targets, epoch):
        total = 0.0
        pairs = zip(features.student["feats"][1:], features.teacher["feats"][1:])
        for index, (f_s, f_t) in enumerate(pairs):
            f_s, f_t = feature_losses.pool_to_smaller(f_s, f_t)
            mean = self.regressors[index](f_s)
            total = total + feature_losses.vid_loss(mean, f_t, self._log_scale(index), self.settings.eps)
        return self.settings.feat_weight * total


@register("sp")
class SP(FeatureDistiller):
    """Similarity-preserving KD on the last stage."""

    section = "sp"

    def feature_loss(self, features, targets, epoch):
        return self.settings.feat_weight * feature_losses.sp_loss(
            features.student["feats"][-1], features.teacher["feats"][-1]
        )


@register("crd")
class CRD(FeatureDistiller):
    """Contrastive representation distillation on the pooled features: linear embeddings of both, scored
    against a memory bank of every training sample's embeddings (`ContrastMemory`), with ``crd.nce_k``
    negatives per sample from the other classes (`CRDSampler`).

    Under torchrun the memory stays the same on every process: the embeddings and indices of the whole
    global batch are gathered (rank order = one process's batch order), every process applies the same
    update, and Z is fixed from the global batch's mean; the contrast indices are drawn for the global
    batch from a generator keyed by (seed, epoch, batch), each process taking its rows.
    """

    section = "crd"
    needs_indices = True

    def __init__(self, cfg, student, teacher, input_size, *, train_targets: torch.Tensor, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        s = self.settings
        _, s_dim = feature_shapes(student, input_size)
        _, t_dim = feature_shapes(teacher, input_size)
        self.embed_s, self.embed_t = Embed(s_dim, s.feat_dim), Embed(t_dim, s.feat_dim)
        self.num_data = len(train_targets)
        if s.nce_k >= self.num_data:
            raise ConfigError(
                f"config key 'crd.nce_k' ({s.nce_k}) asks for as many negatives per sample as the training set has "
                f"images ({self.num_data}) or more; use fewer (mdistiller: 16384 of CIFAR-100's 50000)"
            )
        self.contrast = ContrastMemory(s.feat_dim, self.num_data, s.nce_temperature, s.nce_momentum)
        self.sampler = CRDSampler(train_targets, s.nce_k, s.mode)
        self.seed = cfg.seed

    def feature_loss(self, features, targets, epoch):
        local = features.indices
        world = distributed.world_size()
        total = features.global_batch_size or len(local)
        # Every process's share, known on the host (`shard_bounds`: the loaders' one sharding rule).
        shares = [end - start for start, end in (shard_bounds(total, r, world) for r in range(world))]
        everyone = distributed.gather_rows(local, shares)
        generator = keyed_generator(self.seed, epoch, features.batch_index, device=local.device)
        start, end = shard_bounds(total, distributed.rank(), world)
        contrast_indices = self.sampler.draw(everyone, generator)[start:end]

        return self.settings.feat_weight * self.crd_loss(
            features.student["pooled_feat"], features.teacher["pooled_feat"], everyone, contrast_indices, shares
        )

    def crd_loss(
        self, pooled_s, pooled_t, everyone: torch.Tensor, contrast_indices: torch.Tensor, shares=None
    ) -> torch.Tensor:
        """The two NCE losses of this process's samples (unweighted), then the memory update with the
        global batch ``everyone`` (the dataset indices of every process's samples, in rank order; their
        counts ``shares``)."""
        v_s, v_t = self.embed_s(pooled_s), self.embed_t(pooled_t)
        scores_s, scores_t = self.contrast.scores(v_s, v_t, contrast_indices)
        gathered_s = distributed.gather_rows(v_s.detach(), shares)
        gathered_t = distributed.gather_rows(v_t.detach(), shares)
        self.contrast.update(everyone, gathered_s, gathered_t)
        return feature_losses.contrast_loss(scores_s, self.num_data) + feature_losses.contrast_loss(
            scores_t, self.num_data
        )


@register("reviewkd")
class ReviewKD(FeatureDistiller):
    """ReviewKD (Chen et al., 2021): the student's stages and pooled feature, deepest first, fused by
    attention-based fusion modules into maps of the teacher's sizes and widths, compared with the
    teacher's pre-ReLU stages (after the stem) and pooled feature by the hierarchical context loss.

    The fusion's widths and sizes come from the two models' features (mdistiller's configs state them
    per pair: ``SHAPES``, ``OUT_SHAPES``, ``IN_CHANNELS``, ``OUT_CHANNELS``); the student entries are the
    last as many of its features + pooled feature as the teacher has entries."""

    section = "reviewkd"

    def __init__(self, cfg, student, teacher, input_size, **kwargs):
        super().__init__(cfg, student, teacher, input_size, **kwargs)
        s_shapes, s_dim = feature_shapes(student, input_size)
        t_shapes, t_dim = feature_shapes(teacher, input_size)
        t_entries = [(shape[1], shape[2]) for shape in t_shapes[1:]] + [(t_dim, 1)]
        s_entries = ([(shape[1], shape[2]) for shape in s_shapes] + [(s_dim, 1)])[-len(t_entries) :]
        self.count = len(t_entries)
        self.in_channels = [c for c, _ in s_entries]
        self.out_channels = [c for c, _ in t_entries]
        # Deepest first, as the fusion runs: mdistiller's SHAPES and OUT_SHAPES.
        self.shapes = [size for _, size in s_entries][::-1]
        self.out_shapes = [size for _, size in t_entries][::-1]
        mid = min(self.settings.max_mid_channel, self.in_channels[-1])
        if self.settings.max_mid_channel > mid:
            distributed.log(
                f"note: reviewkd.max_mid_channel={self.settings.max_mid_channel} is more than the student's pooled "
                f"width {mid}: the fusion modules are {mid} wide (mdistiller's min)"
            )
        fusions = [
            AttentionFusion(c_in, mid, c_out, fuse=index < self.count - 1)
            for index, (c_in, c_out) in enumerate(zip(self.in_channels, self.out_channels))
        ]
        self.abfs = nn.ModuleList(fusions[::-1])

    def _student_entries(self, student) -> List[torch.Tensor]:
        stages = student["preact_feats"] if self.settings.stu_preact else student["feats"]
        return (list(stages) + [student["pooled_feat"][:, :, None, None]])[-self.count :]

    def feature_loss(self, features, targets, epoch):
        entries = self._student_entries(features.student)[::-1]
        out, previous = self.abfs[0](entries[0], None, self.shapes[0], self.out_shapes[0])
        results = [out]
        for entry, fusion, size, out_size in zip(entries[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, previous = fusion(entry, previous, size, out_size)
            results.insert(0, out)
        teacher = list(features.teacher["preact_feats"][1:]) + [features.teacher["pooled_feat"][:, :, None, None]]
        s = self.settings
        return s.reviewkd_weight * loss_warmup(epoch, s.warmup) * feature_losses.hcl_loss(results, teacher)
