r"""The feature-distillation losses of mdistiller's baselines, one pure function each.

Inputs are the features `models.features` describes (lists of ``(B, C, H, W)`` stage
features, ``(B, D)`` pooled features); the teacher's are used as given (the caller takes them
from a ``torch.no_grad`` forward). Each formula follows mdistiller's implementation
(megvii-research/mdistiller, ``mdistiller/distillers/<Method>.py`` at commit a08d46f),
including its normalisations, so that its weights (``feat_weight``) carry over; the
connectors some of them need (FitNet's regressor, OFD's, ReviewKD's fusion, VID's, CRD's
embeddings and memory) are modules in ``knowledge_distillation.feature_modules``.
Every loss computes in float32 or wider: half-precision inputs are promoted.
"""

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

Features = Sequence[torch.Tensor]


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor):
    """Average-pool whichever of the two square maps is larger to the other's size (mdistiller's rule)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def hint_loss(regressed_student: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    r"""FitNet (Romero et al., 2015): :math:`\mathrm{mean}\,(r(f_s) - f_t)^2` over every element,
    ``regressed_student`` being the regressor's output r(f_s), shaped like the teacher's hint f_t."""
    return F.mse_loss(_wide(regressed_student), _wide(f_t))


def attention_transfer_loss(feats_s: Features, feats_t: Features, p: float = 2.0) -> torch.Tensor:
    r"""Attention transfer (Zagoruyko & Komodakis, 2017), summed over the stages:

    .. math::

        \sum_l \mathrm{mean}_{b,i}\big(a(f^l_s)_{b,i} - a(f^l_t)_{b,i}\big)^2,\qquad
        a(f)_b = \frac{\mathrm{vec}(\mathrm{mean}_c |f_{b,c}|^p)}{\|\mathrm{vec}(\mathrm{mean}_c |f_{b,c}|^p)\|_2}

    after pooling the larger map of each pair to the smaller one's size.
    """

    def attention(f):
        return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)

    total = 0.0
    for f_s, f_t in zip(feats_s, feats_t):
        f_s, f_t = pool_to_smaller(_wide(f_s), _wide(f_t))
        total = total + (attention(f_s) - attention(f_t)).pow(2).mean()
    return total


def nst_loss(feats_s: Features, feats_t: Features) -> torch.Tensor:
    r"""Neuron selectivity transfer (Huang & Wang, 2017): the squared MMD with the polynomial
    kernel k(x, y) = (x^T y)^2 between the channels of each stage, each channel's spatial map
    L2-normalised, summed over the stages:

    .. math::

        \sum_l \mathrm{mean}\,k(F_t, F_t) + \mathrm{mean}\,k(F_s, F_s) - 2\,\mathrm{mean}\,k(F_s, F_t)

    with the means over the batch and all channel pairs (the teacher-teacher term is a constant).
    """
    total = 0.0
    for f_s, f_t in zip(feats_s, feats_t):
        f_s, f_t = pool_to_smaller(_wide(f_s), _wide(f_t))
        f_s = F.normalize(f_s.flatten(2), dim=2)
        f_t = F.normalize(f_t.flatten(2), dim=2)

        def kernel_mean(a, b):
            return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

        total = total + kernel_mean(f_t, f_t).detach() + kernel_mean(f_s, f_s) - 2 * kernel_mean(f_s, f_t)
    return total


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Probabilistic knowledge transfer (Passalis & Tefas, 2018) on the pooled features:
    cosine similarities mapped to [0, 1], rows normalised to conditional probabilities P (student)
    and Q (teacher), and

    .. math::

        \frac{1}{B^2} \sum_{i,j} Q_{ij} \log\frac{Q_{ij} + \epsilon}{P_{ij} + \epsilon}

    (each feature divided by its norm + eps; a 0/0 becomes 0, as in mdistiller).
    """

    def conditional(f):
        f = _wide(f)
        f = torch.nan_to_num(f / (f.norm(dim=1, keepdim=True) + eps), nan=0.0)
        similarity = (f @ f.t() + 1.0) / 2.0
        return similarity / similarity.sum(dim=1, keepdim=True)

    p, q = conditional(f_s), conditional(f_t)
    return (q * torch.log((q + eps) / (p + eps))).mean()


def _top_singular(feat: torch.Tensor, n: int):
    """The first ``n`` singular values and right-singular vectors of each sample's feature reshaped to
    (C*H, W) as mdistiller does, each L2-normalised, in float32; non-finite entries zeroed."""
    b, c, h, w = feat.shape
    _, s, vh = torch.linalg.svd(feat.reshape(b, c * h, w).float(), full_matrices=False)
    v = vh.transpose(-2, -1)
    s, v = torch.nan_to_num(s, 0.0, 0.0, 0.0), torch.nan_to_num(v, 0.0, 0.0, 0.0)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def kdsvd_loss(feats_s: Features, feats_t: Features, k: int = 1) -> torch.Tensor:
    r"""KD via singular value decomposition (Lee et al., 2018), mdistiller's form.

    Per stage, the teacher's first k right-singular vectors V_t (scaled by its normalised singular
    values s_t) and the student's first k + 3, each student vector sign-aligned to the teacher
    vector it is most parallel with (others zeroed), and scaled by s_t as well. Between consecutive
    stages l-1, l (each pair of maps first brought to the smaller size by `pool_to_smaller`, which
    leaves mdistiller's pairs of equal sizes as they are, and lets pairs of unequal sizes, where its
    code fails, run), the RBF correlations :math:`G_{b,i,j} = \exp(-(v^l_{b,i} - v^{l-1}_{b,j})^2 / 8)`
    (over the W rows i, j, per singular direction) of student and teacher are compared:

    .. math::

        \frac{1}{B} \sum_{l \ge 1} \sum \big(G_s - G_t\big)^2 \qquad (\text{non-finite terms dropped})
    """
    previous_s = previous_t = None
    total = 0.0
    for index, (f_s, f_t) in enumerate(zip(feats_s, feats_t)):
        f_s, f_t = pool_to_smaller(f_s, f_t)  # mdistiller's code needs equal sizes; a no-op for such pairs
        s_t, v_t = _top_singular(f_t, k)
        _, v_s = _top_singular(f_s, k + 3)
        cosine = v_s.transpose(-2, -1) @ v_t  # (B, k + 3, k)
        most_parallel = cosine.abs().amax(dim=1, keepdim=True)
        alignment = torch.where(most_parallel == cosine.abs(), cosine.sign(), torch.zeros_like(cosine))
        v_s = v_s @ alignment  # (B, W, k)
        v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
        if index > 0:
            rbf_s = torch.exp(-(v_s.unsqueeze(2) - previous_s.unsqueeze(1)).pow(2) / 8)
            rbf_t = torch.exp(-(v_t.unsqueeze(2) - previous_t.unsqueeze(1)).pow(2) / 8)
            difference = (rbf_s - rbf_t.detach()).pow(2)
            total = total + torch.where(torch.isfinite(difference), difference, torch.zeros_like(difference)).sum()
        previous_s, previous_t = v_s, v_t
    return total / feats_s[0].shape[0]


def ofd_margins(bn_weight: torch.Tensor, bn_bias: torch.Tensor) -> torch.Tensor:
    r"""OFD's margin per channel of a teacher's pre-ReLU BatchNorm with scale :math:`\sigma = |\gamma|`
    and shift :math:`\mu = \beta`: the expectation of the negative part of N(mu, sigma^2),

    .. math::

        m = \mu - \sigma\,\frac{\varphi(\mu/\sigma)}{\Phi(-\mu/\sigma)}\quad\text{if }\Phi(-\mu/\sigma) > 0.001,
        \text{ else } -3\sigma

    returned as a float32 tensor shaped (1, C, 1, 1).
    """
    margins = []
    for gamma, beta in zip(bn_weight.detach().double().tolist(), bn_bias.detach().double().tolist()):
        sigma, mu = abs(gamma), beta
        tail = 0.5 * math.erfc((mu / sigma) / math.sqrt(2.0))  # Phi(-mu / sigma)
        if tail > 0.001:
            margins.append(mu - sigma * math.exp(-((mu / sigma) ** 2) / 2) / math.sqrt(2 * math.pi) / tail)
        else:
            margins.append(-3 * sigma)
    return torch.tensor(margins, dtype=torch.float32).view(1, -1, 1, 1)


def ofd_loss(connected_s: Features, preact_t: Features, margins: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Overhaul of feature distillation (Heo et al., 2019), with the partial L2 distance
    between the connected student feature s and the teacher's pre-ReLU feature t (pooled to s's size)
    and the teacher's margin m per channel:

    .. math::

        d = (s - m)^2 [s > m][t \le m] + (s - t)^2 [s > t][m < t \le 0] + (s - t)^2 [t > 0]

    summed over C, H, W and averaged over the batch, stage l of n weighted by 1 / 2^{n-1-l}.
    """
    n = len(connected_s)
    total = 0.0
    for index, (s, t, m) in enumerate(zip(connected_s, preact_t, margins)):
        s = _wide(s)
        t = F.adaptive_avg_pool2d(_wide(t), s.shape[-2:]).detach()
        m = m.to(s)
        distance = (
            (s - m).pow(2) * ((s > m) & (t <= m)).to(s.dtype)
            + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0)).to(s.dtype)
            + (s - t).pow(2) * (t > 0).to(s.dtype)
        )
        total = total + distance.mean(dim=0).sum() / 2 ** (n - index - 1)
    return total


def _pairwise_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    squares = e.pow(2).sum(dim=1)
    distances = (squares.unsqueeze(1) + squares.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        distances = distances.sqrt()
    return distances * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))  # a zero diagonal


def rkd_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    squared: bool = False,
    eps: float = 1e-12,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    r"""Relational KD (Park et al., 2019) on the flattened features:

    .. math::

        w_d\,\mathrm{SmoothL1}\Big(\frac{D_s}{\bar D_s}, \frac{D_t}{\bar D_t}\Big)
        + w_a\,\mathrm{SmoothL1}(A_s, A_t)

    D the pairwise Euclidean distances (squared with ``squared``; squares clamped at eps), D-bar
    the mean of the positive ones, and :math:`A_{ijk} = \langle e_{ij}, e_{kj} \rangle` the
    cosines of the angles between the unit difference vectors (both SmoothL1s averaged over all entries).
    """
    stu, tea = _wide(f_s).flatten(1), _wide(f_t).flatten(1)
    with torch.no_grad():
        d_t = _pairwise_distances(tea, squared, eps)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pairwise_distances(stu, squared, eps)
    d_s = d_s / d_s[d_s > 0].mean()

    def angles(e):
        differences = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(differences, differences.transpose(1, 2)).flatten()

    with torch.no_grad():
        a_t = angles(tea)
    a_s = angles(stu)
    return distance_weight * F.smooth_l1_loss(d_s, d_t) + angle_weight * F.smooth_l1_loss(a_s, a_t)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    r"""Similarity-preserving KD (Tung & Mori, 2019): the batch Gram matrices of the flattened
    features, each row L2-normalised, compared as :math:`\|G_t - G_s\|_F^2 / B^2`."""
    b = f_s.shape[0]
    f_s, f_t = _wide(f_s).reshape(b, -1), _wide(f_t).reshape(b, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (b * b)


def vid_loss(predicted_mean: torch.Tensor, f_t: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5):
    r"""Variational information distillation (Ahn et al., 2019): the Gaussian negative log-likelihood
    of the teacher feature under the regressor's mean mu(f_s) and a per-channel variance
    :math:`\sigma_c^2 = \log(1 + e^{\alpha_c}) + \epsilon`,

    .. math::

        \mathrm{mean}_{b,c,h,w}\ \tfrac12\Big(\frac{(\mu - t)^2}{\sigma_c^2} + \log \sigma_c^2\Big)

    (the spatial sizes already matched by the caller, `pool_to_smaller`).
    """
    mu, t = _wide(predicted_mean), _wide(f_t)
    variance = (F.softplus(log_scale.to(mu.dtype)) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mu - t).pow(2) / variance + torch.log(variance))).mean()


def contrast_loss(scores: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    r"""CRD's NCE loss (Tian et al., 2020) on the scores of one positive (column 0) and m negatives
    per sample, with the noise distribution P_n = 1 / N over the N training samples:

    .. math::

        -\frac{1}{B}\sum_b \Big(\log\frac{P_{b,0}}{P_{b,0} + m P_n + \epsilon}
            + \sum_{k \ge 1} \log\frac{m P_n}{P_{b,k} + m P_n + \epsilon}\Big)
    """
    scores = _wide(scores)
    m = scores.shape[1] - 1
    noise = m / float(num_data)
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def hcl_loss(feats_s: Features, feats_t: Features) -> torch.Tensor:
    r"""ReviewKD's hierarchical context loss (Chen et al., 2021), summed over the stages: per stage
    the MSE of the full maps and of their average-pooled 4x4, 2x2 and 1x1 versions (the sizes
    smaller than the map), weighted 1, 1/2, 1/4, 1/8 and divided by the sum of the weights used."""
    total = 0.0
    for f_s, f_t in zip(feats_s, feats_t):
        f_s, f_t = _wide(f_s), _wide(f_t)
        height = f_s.shape[2]
        loss, weight, weights = F.mse_loss(f_s, f_t), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= height:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(f_s, (size, size)), F.adaptive_avg_pool2d(f_t, (size, size))
            )
            weights += weight
        total = total + loss / weights
    return total


__all__: List[str] = [
    "pool_to_smaller",
    "hint_loss",
    "attention_transfer_loss",
    "nst_loss",
    "pkt_loss",
    "kdsvd_loss",
    "ofd_margins",
    "ofd_loss",
    "rkd_loss",
    "sp_loss",
    "vid_loss",
    "contrast_loss",
    "hcl_loss",
]
