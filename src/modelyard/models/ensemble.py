"""Several trained networks as one: the registered model of `train.ensemble: k`."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-7


class Ensemble(nn.Module):
    """Averages its members' predictions and returns them in the members' own output form,
    so prediction, serving and drift treat an ensemble like any single network: logits whose
    sigmoid (binary) or softmax (multiclass) is the mean of the members' probabilities, or
    the mean of their values (regression)."""

    def __init__(self, members: list[nn.Module], problem: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.problem = problem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(x).float() for member in self.members])
        if self.problem == "multiclass":
            return torch.softmax(outputs, dim=-1).mean(dim=0).clamp(min=EPS).log()
        if self.problem == "binary":
            p = torch.sigmoid(outputs).mean(dim=0).clamp(EPS, 1 - EPS)
            return p.log() - (1 - p).log()
        return outputs.mean(dim=0)
