"""The pairwise O(B*C^2) form of wMSE, written straight from the equation.

Not used by training. It is the independent oracle the tests compare `wmse_loss`
against, and the baseline `bench/loss.py` times the closed form against (it is what
the authors' code computes, materialising [B, C, C] tensors).
"""

import torch


def wmse_loss_pairwise(
    logits_student: torch.Tensor, logits_teacher: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    r"""1/4 sum_b sum_{j,k} w_bj w_bk ((t_bj - t_bk) - (s_bj - s_bk))^2 / sum_b (sum_j w_bj)^2."""
    teacher_gaps = logits_teacher.unsqueeze(2) - logits_teacher.unsqueeze(1)
    student_gaps = logits_student.unsqueeze(2) - logits_student.unsqueeze(1)
    w = weights.detach()
    pair_weights = w.unsqueeze(2) * w.unsqueeze(1)
    numerator = 0.25 * (pair_weights * (teacher_gaps - student_gaps).square()).sum()
    return numerator / w.sum(dim=1).square().sum()
