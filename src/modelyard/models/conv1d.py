"""1-D convolutional classifiers for padded sequences: the FCN and ResNet baselines of Wang,
Yan and Oates, "Time Series Classification from Scratch with Deep Neural Networks: A Strong
Baseline" (IJCNN 2017), with global average pooling over each sequence's real steps."""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.dropout import Dropout

KERNELS = (8, 5, 3)  # the paper's kernel sizes, one per convolution of a block


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv1d keeping the length (kernel 8 pads 3 left, 4 right), then BatchNorm1d."""
    left = (kernel_size - 1) // 2
    return nn.Sequential(
        # explicit zero padding: padding="same" with an even kernel warns and copies the input anyway
        nn.ConstantPad1d((left, kernel_size - 1 - left), 0.0),
        # no conv bias: the batch norm right after it has its own shift
        nn.Conv1d(in_channels, out_channels, kernel_size, bias=False),
        nn.BatchNorm1d(out_channels),
    )


def _masked(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`h` (N, C, T) with its padded steps zeroed, so the next convolution sees there the same
    zeros as beyond the end of a sequence that needs no padding."""
    return h * mask.to(h.dtype)


class _MaskedConvClassifier(nn.Module):
    """Shared input handling and head: (N, T, F + 1) floats whose last channel marks real steps
    (1) and padding (0) -> `encode` -> mean over real steps -> Dropout -> Linear (logits)."""

    def __init__(self, n_features: int, width: int, n_outputs: int, dropout: float) -> None:
        super().__init__()
        self.n_features = n_features
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(width, n_outputs)

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N, T, n_features + 1), the step mask last; returns logits (N, n_outputs)."""
        if x.dim() != 3 or x.shape[-1] != self.n_features + 1:
            raise ValueError(
                f"{type(self).__name__} expects (batch, steps, {self.n_features} features + 1 step-mask channel), "
                f"got shape {tuple(x.shape)}"
            )
        mask = x[..., -1].unsqueeze(1)  # (N, 1, T)
        h = self.encode(_masked(x[..., :-1].transpose(1, 2), mask), mask)
        # pool in float32: a sum over thousands of half-precision steps can overflow
        h, mask = h.float(), mask.float()
        pooled = (h * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


class FCN(_MaskedConvClassifier):
    """Three conv-BN-ReLU blocks of `filters`, 2x`filters`, `filters` channels (the paper's
    128/256/128 at `filters`=128) and kernels 8, 5, 3; then masked global average pooling."""

    def __init__(self, n_features: int, n_outputs: int, *, filters: int = 128, dropout: float = 0.0) -> None:
        widths = (filters, 2 * filters, filters)
        super().__init__(n_features, widths[-1], n_outputs, dropout)
        self.blocks = nn.ModuleList(
            _conv_bn(c_in, c_out, k) for c_in, c_out, k in zip((n_features, *widths[:-1]), widths, KERNELS, strict=True)
        )

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = _masked(torch.relu(block(h)), mask)
        return h


class _ResidualBlock(nn.Module):
    """Three conv-BN layers (kernels 8, 5, 3; ReLU after the first two) plus a shortcut
    (1x1 conv + BN when the width changes, else BN), ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _conv_bn(in_channels if i == 0 else out_channels, out_channels, k) for i, k in enumerate(KERNELS)
        )
        self.shortcut = (
            nn.Sequential(nn.Conv1d(in_channels, out_channels, 1, bias=False), nn.BatchNorm1d(out_channels))
            if in_channels != out_channels
            else nn.BatchNorm1d(out_channels)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = h
        for layer in self.layers[:-1]:
            out = _masked(torch.relu(layer(out)), mask)
        # the last conv and the shortcut act step by step here, so masking the sum suffices
        return _masked(torch.relu(self.layers[-1](out) + self.shortcut(h)), mask)


class ResNet1D(_MaskedConvClassifier):
    """Three residual blocks of `filters`, 2x`filters`, 2x`filters` channels (the paper's
    64/128/128 at `filters`=64); then masked global average pooling."""

    def __init__(self, n_features: int, n_outputs: int, *, filters: int = 64, dropout: float = 0.0) -> None:
        widths = (filters, 2 * filters, 2 * filters)
        super().__init__(n_features, widths[-1], n_outputs, dropout)
        self.blocks = nn.ModuleList(
            _ResidualBlock(c_in, c_out) for c_in, c_out in zip((n_features, *widths[:-1]), widths, strict=True)
        )

    def encode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, mask)
        return h
