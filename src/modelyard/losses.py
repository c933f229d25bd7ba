"""Training losses, per problem. The network returns logits for classification and
standardised values for regression; every loss here takes those and the encoded targets.

- regression: `mse` (the default), `mae`, `huber`, and in target units `msle` (squared
  error of log1p; targets must be >= 0) and `mape` (mean absolute percentage error);
- binary: `logistic` (the default), `hinge` (targets as -1 / +1; the sigmoid of its output
  still ranks rows, but is no calibrated probability), `kl`;
- multiclass: `cross_entropy` (the default), `kl`.

`kl` is the Kullback-Leibler divergence from the (smoothed) target distribution to the
predicted one: cross-entropy minus the targets' own entropy, so it reads 0 for a perfect
fit. `label_smoothing` moves classification targets towards the uniform distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modelyard.config import LOSSES, TARGET_UNIT_LOSSES, Problem

EPS = 1e-6


def default_loss(problem: Problem) -> str:
    return LOSSES[problem][0]


class _TargetUnits(nn.Module):
    """A regression loss on values decoded back to target units (value * scale + offset)."""

    def __init__(self, name: str, offset: float, scale: float) -> None:
        super().__init__()
        self.name, self.offset, self.scale = name, offset, scale

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        predicted, actual = output * self.scale + self.offset, target * self.scale + self.offset
        if self.name == "mape":
            return ((predicted - actual).abs() / actual.abs().clamp(min=EPS)).mean()
        # msle: a prediction below zero counts as zero (log1p is undefined below -1)
        return ((torch.log1p(predicted.clamp(min=0.0)) - torch.log1p(actual.clamp(min=0.0))) ** 2).mean()


class _Binary(nn.Module):
    """Binary losses on one logit per row; targets are 0 / 1 floats."""

    def __init__(self, name: str, smoothing: float) -> None:
        super().__init__()
        self.name, self.smoothing = name, smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothed = target * (1.0 - self.smoothing) + 0.5 * self.smoothing if self.smoothing else target
        if self.name == "hinge":
            return torch.relu(1.0 - (2.0 * smoothed - 1.0) * logits).mean()
        loss = F.binary_cross_entropy_with_logits(logits, smoothed)
        if self.name == "kl":
            p = smoothed.clamp(EPS, 1 - EPS)
            loss = loss + (p * p.log() + (1 - p) * (1 - p).log()).mean()
        return loss


class _MulticlassKL(nn.Module):
    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n_classes = logits.shape[1]
        smoothed = F.one_hot(target, n_classes).float() * (1.0 - self.smoothing) + self.smoothing / n_classes
        return F.kl_div(torch.log_softmax(logits.float(), dim=1), smoothed, reduction="batchmean")


def loss_function(
    problem: Problem, loss: str = "auto", label_smoothing: float = 0.0, offset: float = 0.0, scale: float = 1.0
) -> nn.Module:
    """The loss for a problem; `auto` is the problem's default. `offset` and `scale` turn
    standardised regression values back into target units (msle, mape)."""
    name = default_loss(problem) if loss == "auto" else loss
    if name not in LOSSES[problem]:
        raise ValueError(f"loss {name!r} is not for {problem} tasks; use one of: {', '.join(LOSSES[problem])}")
    if name in TARGET_UNIT_LOSSES:
        return _TargetUnits(name, offset, scale)
    if problem == "regression":
        return {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}[name]()
    if problem == "binary":
        return _Binary(name, label_smoothing)
    if name == "kl":
        return _MulticlassKL(label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
