"""Dropout whose masks cost a fraction of PyTorch's on a CPU.

On a CPU, `nn.Dropout` draws one Bernoulli variate per element from the Mersenne twister,
converting each to a double: on a 256 x 293 activation that is 0.57 ms of a 3.7 ms
training step of a 4-layer MLP, and four such layers made dropout 38 % of the step
(scratch timing on the 2-core machine). Here one 64-bit draw gives eight bytes, and an
element is kept when its byte is at or above `round(p * 256)`: the same Bernoulli masks
with the rate rounded to 1/256 (0.2 drops 51/256 = 0.199), 15x cheaper to draw. The kept
elements are scaled by 256 / (256 - dropped bytes), so the expected activation is
unchanged, as in `nn.Dropout`. The comparison writes the mask as floats at once
(`torch.ge(..., out=)`): a boolean mask and its conversion took 72 + 60 us on that
activation, the comparison into floats 14 us. On a GPU, PyTorch's fused dropout kernel is
already cheap, and it is used as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BYTE_VALUES = 256


class Dropout(nn.Dropout):
    """`nn.Dropout` with masks drawn eight elements to a random 64-bit integer on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True, self.inplace)
        dropped = min(round(self.p * BYTE_VALUES), BYTE_VALUES - 1)
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
        mask = torch.ge(words.view(torch.uint8)[:n].view(x.shape), dropped, out=torch.empty_like(x))  # 1.0: kept
        return x * mask.mul_(BYTE_VALUES / (BYTE_VALUES - dropped))
