"""The trainable parts of the feature distillers: connectors, fusion modules, embeddings, memory.

Each is built from the feature shapes of the student and the teacher (`models.features`), as
mdistiller builds them (megvii-research/mdistiller a08d46f, ``mdistiller/distillers/*.py``),
and keeps mdistiller's parameter names where it has one module (``conv``/``bn``, ``conv1``/
``conv2``/``att_conv``, ``linear``, ``memory_v1``/``memory_v2``). They train with the student's
optimizer, are saved in last.pt with the distiller, and are never part of the exported student.
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import distributed
from engine.errors import UserError

Shape = Sequence[int]  # (B, C, H, W) of a feature map


class ConvRegressor(nn.Module):
    """FitNet's regressor from the student's hint to the teacher's (mdistiller ``ConvReg``): a stride-2
    3x3 convolution when the student's map is twice the size, a stride-2 4x4 transposed one when it is
    half, else a (1 + Hs - Ht) x (1 + Ws - Wt) valid convolution; then BatchNorm and ReLU."""

    def __init__(self, student_shape: Shape, teacher_shape: Shape, use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = student_shape
        _, t_c, t_h, t_w = teacher_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise UserError(
                f"FitNet cannot regress a {s_h}x{s_w} student hint onto a larger {t_h}x{t_w} teacher hint "
                f"(neither twice nor equal to its size); choose another fitnet.hint_layer"
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def ofd_connector(s_channels: int, t_channels: int, kernel_size: int) -> nn.Sequential:
    """OFD's connector: a bias-free convolution (weights N(0, 2 / (k*k*C_out))) and BatchNorm (1, 0)."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


def vid_regressor(s_channels: int, t_channels: int) -> nn.Sequential:
    """VID's mean regressor: three bias-free 1x1 convolutions with ReLUs between them."""

    def conv1x1(c_in, c_out):
        return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)

    return nn.Sequential(
        conv1x1(s_channels, t_channels), nn.ReLU(), conv1x1(t_channels, t_channels), nn.ReLU(),
        conv1x1(t_channels, t_channels),
    )  # fmt: skip


def vid_initial_log_scale(init_pred_var: float, eps: float) -> float:
    """The softplus-inverse of ``init_pred_var - eps``: the variance starts at ``init_pred_var``."""
    return float(np.log(np.exp(init_pred_var - eps) - 1.0))


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF): a 1x1 convolution of the student feature to the middle
    width, fused with the upsampled output of the previous (deeper) module by two sigmoid attention
    maps (not for the first module), resized to the teacher's size, then a 3x3 convolution to the
    teacher's width. Returns (output, the fused middle feature the next module reads)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x, previous: Optional[torch.Tensor], size: int, out_size: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            previous = F.interpolate(previous, (size, size), mode="nearest")
            attention = self.att_conv(torch.cat([x, previous], dim=1))
            x = x * attention[:, 0].view(n, 1, h, w) + previous * attention[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), x


class Embed(nn.Module):
    """CRD's embedding: a linear map of the flattened feature, then L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(nn.Module):
    """CRD's memory bank: one embedding per training sample for each of the two views (student, teacher).

    ``scores(v_s, v_t, contrast_indices)`` gives each sample's exp(<memory row, v> / T) / Z for the
    rows ``contrast_indices`` (the positive first, then the negatives) of the other view's memory;
    Z = N * the mean score of the first batch, fixed from then on (``normalizers``, -1 until set).
    ``update(indices, v_s, v_t)`` moves the samples' rows to ``momentum * row + (1 - momentum) * v``,
    renormalised. Both are mdistiller's ``ContrastMemory.forward``, split in two so that under torchrun
    every process can apply the update of the whole global batch (see `CRDSampler`).
    """

    def __init__(self, dim: int, num_data: int, temperature: float, momentum: float):
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_v2", torch.rand(num_data, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("normalizers", torch.full((2,), -1.0))
        self._fixed: Optional[bool] = None  # whether Z is set, read from the buffer once (a host sync)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._fixed = None

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor, contrast_indices: torch.Tensor):
        batch, count = contrast_indices.shape
        rows = contrast_indices.reshape(-1)
        rows_v1 = self.memory_v1.index_select(0, rows).view(batch, count, -1)
        rows_v2 = self.memory_v2.index_select(0, rows).view(batch, count, -1)
        scores_t = torch.exp(torch.bmm(rows_v1, v_t.unsqueeze(2)).squeeze(2) / self.temperature)
        scores_s = torch.exp(torch.bmm(rows_v2, v_s.unsqueeze(2)).squeeze(2) / self.temperature)
        if self._fixed is None:
            self._fixed = bool(self.normalizers[0] >= 0)
        if not self._fixed:  # the first batch of the run fixes Z, over the whole global batch
            self._fixed = True
            with torch.no_grad():
                sums = torch.stack([scores_s.sum(), scores_t.sum(), scores_s.new_tensor(float(scores_s.numel()))])
                sums = distributed.reduce_sum(sums.double()).float()
                self.normalizers.copy_(sums[:2] / sums[2] * self.memory_v1.shape[0])
        return scores_s / self.normalizers[0], scores_t / self.normalizers[1]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        for memory, v in ((self.memory_v1, v_s), (self.memory_v2, v_t)):
            rows = memory.index_select(0, indices) * self.momentum + v.to(memory.dtype) * (1 - self.momentum)
            memory.index_copy_(0, indices, rows / rows.pow(2).sum(1, keepdim=True).sqrt())


class CRDSampler:
    """The contrast indices of CRD, drawn as mdistiller's ``CIFAR100InstanceSample`` draws them: per
    sample its positive (itself with ``mode=exact``, a random sample of its class with ``relax``), then
    ``k`` negatives uniform over the samples of the other classes, without replacement unless ``k``
    exceeds their number.

    Drawn on the device from a generator keyed by (seed, epoch, batch), for the whole global batch
    (every process draws the same and takes its own rows): the draws of a resumed run, and of any
    number of processes, equal one uninterrupted process's. Rows are drawn in chunks whose candidate
    weights hold at most ``CHUNK_ELEMENTS`` numbers (ImageNet's 1.28 M samples: 13 rows at a time,
    not a 256 x 1.28 M matrix); CIFAR's batches are one chunk.
    """

    CHUNK_ELEMENTS = 2**24

    def __init__(self, targets: torch.Tensor, k: int, mode: str):
        self.targets, self.k, self.mode = targets.long(), k, mode
        counts = torch.bincount(self.targets)
        self.replacement = bool(k > len(self.targets) - counts.max())

    def draw(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        targets = self.targets.to(indices.device)
        rows = max(1, self.CHUNK_ELEMENTS // len(targets))
        return torch.cat([self._draw_rows(chunk, targets, generator) for chunk in indices.split(rows)])

    def _draw_rows(self, indices: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        own_class = targets[indices]
        negatives = (targets.unsqueeze(0) != own_class.unsqueeze(1)).float()
        chosen = torch.multinomial(negatives, self.k, replacement=self.replacement, generator=generator)
        if self.mode == "exact":
            positives = indices
        else:
            same = (targets.unsqueeze(0) == own_class.unsqueeze(1)).float()
            positives = torch.multinomial(same, 1, generator=generator).squeeze(1)
        return torch.cat([positives.unsqueeze(1), chosen], dim=1)


__all__: List[str] = [
    "ConvRegressor",
    "ofd_connector",
    "vid_regressor",
    "vid_initial_log_scale",
    "AttentionFusion",
    "Embed",
    "ContrastMemory",
    "CRDSampler",
]
