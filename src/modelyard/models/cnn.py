"""The image CNN: conv-conv-pool blocks, global average pooling and a dense head."""

from __future__ import annotations

import torch
from torch import nn

from modelyard.models.dropout import Dropout


def conv_block(in_channels: int, out_channels: int, kernel_size: int, *, pool: bool, dropout: float) -> nn.Sequential:
    """(Conv2d -> BatchNorm2d -> ReLU) x 2, then MaxPool2d(2) if `pool`, then Dropout2d."""
    padding = kernel_size // 2
    layers: list[nn.Module] = []
    for width in (in_channels, out_channels):
        # No conv bias: the batch norm right after it has its own.
        layers += [
            nn.Conv2d(width, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """`n_blocks` conv blocks with `filters`, 2x`filters`, 4x`filters`... channels, then
    global average pooling -> Linear(`dense_units`) -> ReLU -> Dropout -> Linear(`n_outputs`).

    Takes float images shaped (N, C, H, W) and returns logits (classification) or values.
    Convolutions keep the spatial size (odd `kernel_size`, same padding); each block halves
    it with max pooling until a side would drop below 1, so an 8x8 digit takes four
    blocks (8 -> 4 -> 2 -> 1 -> 1, the last one without pooling).

    Global average pooling rather than flatten: the head has the same size whatever the
    image size, and the network has far fewer weights to overfit a small image set with.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        n_outputs: int,
        *,
        n_blocks: int = 2,
        filters: int = 32,
        kernel_size: int = 3,
        dense_units: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        height, width = self.image_size
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(n_blocks):
            out_channels = filters * 2**i
            pool = height >= 2 and width >= 2
            blocks.append(conv_block(channels, out_channels, kernel_size, pool=pool, dropout=dropout))
            if pool:
                height, width = height // 2, width // 2
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, dense_units),
            nn.ReLU(),
            Dropout(dropout),
            nn.Linear(dense_units, n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"CNN expects images shaped (N, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                "images read as (N, H, W, C) need x.permute(0, 3, 1, 2)"
            )
        return self.head(self.features(x))
