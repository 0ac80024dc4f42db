r"""LAS-AT's learnable attack strategy (Jia et al., CVPR 2022; jiaxiaojunQAQ/LAS-AT ``LAS_AWP/``).

A strategy network (a CIFAR ResNet-18 with one categorical head per attack parameter) looks at each
clean training image and picks its attack: an epsilon, a number of steps and a step size from the
recipe's lists. The target model trains on the adversarial examples of those attacks; the strategy
network trains by REINFORCE on a reward that says how hard the attack was and how good a target it
makes:

.. math::

    R = \mathrm{clamp}\big(\mathrm{CE}(f(x'), y), 0, 10\big) + w_{rob}\, \mathrm{acc}(f^{+}, x^{PGD}) + w_{cln}\, \mathrm{acc}(f^{+}, x),
    \qquad L_\pi = -\sum_{h} \frac{1}{B} \sum_b \log \pi_h(a_{b,h} \mid x_b)\, R

with :math:`x'` the examples of the sampled attacks (before any clipping), :math:`f^{+}` a copy of the
target after one SGD step on them (AWP and label-smoothed CE, as their ``train_target_model``), its
robust accuracy under PGD-10 (2 restarts, eps 8/255, step 2/255, the copy in train mode as theirs) and
its clean accuracy on the same batch; one scalar reward per batch, no baseline, no entropy term; the
gradient clipped to norm ``clip_grad_norm`` before the strategy's own SGD step.
"""

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from torch.distributions import Categorical

from models import build_model

HEADS = ("epsilon", "steps", "step_size")  # their fourth head (the attack type) has one choice: IFGSM


class StrategyNetwork(nn.Module):
    """A CIFAR ResNet-18 (3x3 stem, stages of 64-512 channels, global average pooling) whose 512 features
    feed one linear head per attack parameter, each giving the logits over that parameter's choices."""

    def __init__(self, choices: Dict[str, Sequence[int]]):
        super().__init__()
        self.backbone = build_model("ResNet18", num_classes=1, dataset="cifar100")  # the CIFAR ResNet-18
        self.backbone.linear = nn.Identity()  # the 512 pooled features
        self.heads = nn.ModuleDict({name: nn.Linear(512, len(choices[name])) for name in HEADS})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {name: head(features) for name, head in self.heads.items()}


def sample_actions(logits: Dict[str, torch.Tensor], uniforms: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One choice per sample and head, drawn from softmax(logits) by inverse transform with ``uniforms``
    ([B, heads] numbers in [0, 1)): as a categorical sample, but from numbers the caller draws (every
    process the same numbers for the same global batch)."""
    actions = {}
    for column, name in enumerate(HEADS):
        cumulative = torch.softmax(logits[name].detach().double(), dim=1).cumsum(dim=1)
        choice = torch.searchsorted(cumulative, uniforms[:, column : column + 1].double(), right=True).squeeze(1)
        actions[name] = choice.clamp_max(logits[name].shape[1] - 1)  # the cumulative sum may end just below 1
    return actions


def log_probabilities(logits: Dict[str, torch.Tensor], actions: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    """Per head, the log-probability of each sample's choice ([B], with gradient)."""
    return [Categorical(logits=logits[name]).log_prob(actions[name]) for name in HEADS]


def policy_loss(logits: Dict[str, torch.Tensor], actions: Dict[str, torch.Tensor], reward: float) -> torch.Tensor:
    r"""REINFORCE's loss :math:`-\sum_h \mathrm{mean}_b \log \pi_h(a_{b,h}) R` (their ``policy_loss``)."""
    return sum(-(log_prob * reward).mean() for log_prob in log_probabilities(logits, actions))


def budgets(actions: Dict[str, torch.Tensor], choices: Dict[str, Sequence[int]]):
    """(eps, step size, steps) per sample: the chosen epsilon and step size in /255 of a pixel, the steps."""

    def values(name: str) -> torch.Tensor:
        table = torch.tensor(list(choices[name]), device=actions[name].device)
        return table[actions[name]]

    return values("epsilon") / 255.0, values("step_size") / 255.0, values("steps")
