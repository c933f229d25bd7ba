"""Random image augmentation for training batches, in plain torch (runs on the batch's device)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ImageAugmenter:
    """Random shifts, small rotations and horizontal flips of float (N, C, H, W) batches.

    Each image gets its own shift of up to `max_shift` pixels along each axis, rotation of
    up to `max_degrees` either way and, if `flip`, a horizontal flip with probability 1/2.
    All three are one affine map applied with a single bilinear resampling; pixels that
    come from outside the image are 0. With all three off the batch is returned unchanged.
    """

    def __init__(self, max_shift: int = 0, max_degrees: float = 0.0, flip: bool = False) -> None:
        if max_shift < 0 or max_degrees < 0:
            raise ValueError(f"max_shift and max_degrees must be >= 0, got {max_shift} and {max_degrees}")
        self.max_shift = int(max_shift)
        self.max_degrees = float(max_degrees)
        self.flip = flip

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """An augmented copy of `batch`; a seeded `generator` makes it repeatable."""
        if batch.dim() != 4 or not batch.is_floating_point():
            raise ValueError(f"expected a float batch shaped (N, C, H, W), got {batch.dtype} {tuple(batch.shape)}")
        if self.max_shift == 0 and self.max_degrees == 0 and not self.flip:
            return batch
        n, _, height, width = batch.shape
        device = generator.device if generator is not None else torch.device("cpu")
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (n, 2), generator=generator, device=device)
        angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(self.max_degrees)
        flipped = torch.rand(n, generator=generator, device=device) < 0.5 if self.flip else torch.zeros(n, dtype=bool)
        theta = affine_matrices(angle, shift.float(), flipped.to(device), height, width)
        grid = F.affine_grid(theta.to(batch), list(batch.shape), align_corners=False)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_matrices(
    angle: torch.Tensor, shift: torch.Tensor, flipped: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """(N, 2, 3) `affine_grid` matrices: output pixel -> input pixel, in normalised coordinates.

    In pixel units around the centre, input = R(angle) @ (flip * output) - shift, with shift
    as (dx, dy); the H/W ratios keep rotations of non-square images undistorted.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = 1.0 - 2.0 * flipped.float()
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin * height / width, -2 * shift[:, 0] / width], dim=1),
            torch.stack([sin * width / height * sign, cos, -2 * shift[:, 1] / height], dim=1),
        ],
        dim=1,
    )
    return theta
