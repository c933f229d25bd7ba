"""The tabular ANN: a multilayer perceptron, optionally over embeddings of its numeric
columns (periodic or piecewise-linear)."""

from __future__ import annotations

import math

import torch
from torch import nn

from modelyard.models.dropout import Dropout

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


class PeriodicFeatures(torch.autograd.Function):
    """[cos(a), sin(a)] along the last axis for the angles a = 2 pi c x of features x
    (F, N, 1) and frequencies c (F, 1, k), computed as one sine over [a + pi/2, a]: one
    multiply-add writes both halves' angles and one in-place sine their values, with no
    concatenation. The backward reuses the values (the derivative of cos is -sin and that
    of sin is cos, both already computed: on a CPU they are the dearest elementwise
    functions there are) and sums the frequencies' gradient over the rows as one batched
    product."""

    generate_vmap_rule = True  # for trial fusion's `vmap`

    @classmethod
    def apply(cls, x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
        """`torch.autograd.Function.apply`, less what it adds for a function that has a
        `setup_context` (as `vmap` needs): binding the arguments through `inspect.signature`
        on every call (34 us a call against 16 us without it, scratch loop), which only
        `vmap` and other torch.func transforms use."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(x, frequencies)
        return super(torch.autograd.Function, cls).apply(x, frequencies)

    @staticmethod
    def forward(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
        scaled = (2 * math.pi) * frequencies
        phases = torch.cat([torch.full_like(scaled, math.pi / 2), torch.zeros_like(scaled)], dim=-1)
        return torch.addcmul(phases, torch.cat([scaled, scaled], dim=-1), x).sin_()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, frequencies, values = ctx.saved_tensors
        k = values.shape[-1] // 2
        angles = grad[..., k:] * values[..., :k] - grad[..., :k] * values[..., k:]  # dL/da
        x_grad = freq_grad = None
        if ctx.needs_input_grad[0]:
            x_grad = torch.matmul(angles, ((2 * math.pi) * frequencies).transpose(-1, -2))
        if ctx.needs_input_grad[1]:
            freq_grad = (2 * math.pi) * torch.matmul(x.transpose(-1, -2), angles)
        return x_grad, freq_grad


class PeriodicEmbedding(nn.Module):
    """PLR embeddings of numeric features (Gorishniy, Rubachev, Babenko, "On Embeddings for
    Numerical Features in Tabular Deep Learning", NeurIPS 2022).

    Each feature x becomes [cos(2 pi c x), sin(2 pi c x)] over `n_frequencies` trainable
    frequencies c ~ N(0, scale), then its own Linear(2k -> dim) and a ReLU: (N, F) -> (N, F * dim).
    `scale` sets how fine a structure the embedding can resolve; it is searched log-uniformly.
    """

    def __init__(self, n_features: int, n_frequencies: int, dim: int, scale: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * scale)
        bound = 1.0 / math.sqrt(2 * n_frequencies)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n_features, 2 * n_frequencies, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # feature-major (F, N, ...) throughout, so the per-feature Linear is one batched
        # matmul with its bias, with no copy to another layout before it
        periodic = PeriodicFeatures.apply(x.T.unsqueeze(-1).contiguous(), self.frequencies.unsqueeze(1))  # (F, N, 2k)
        embedded = torch.baddbmm(self.bias.unsqueeze(1), periodic, self.weight)  # (F, N, dim)
        return torch.relu(embedded).transpose(0, 1).flatten(1)


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear encoding of numeric features (the "PLE" of Gorishniy et al. 2022)
    with quantile bins, then a Linear(n_bins -> dim) per feature and a ReLU.

    A value fills the bins below it completely, its own bin by its position inside, and
    leaves the bins above it empty. The bin edges are buffers, saved with the weights; `fit`
    places them at the training rows' quantiles before the first step.
    """

    def __init__(self, n_features: int, n_bins: int, dim: int) -> None:
        super().__init__()
        # until `fit`: evenly spaced edges over the range a standardised column mostly spans
        self.register_buffer("edges", torch.linspace(-3.0, 3.0, n_bins + 1).repeat(n_features, 1))
        bound = 1.0 / math.sqrt(n_bins)
        self.weight = nn.Parameter(torch.empty(n_features, n_bins, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Edges at the quantiles of each column of `x` (N, F); repeated quantiles (a column
        with few distinct values) are nudged apart so every bin has a width."""
        levels = torch.linspace(0.0, 1.0, self.edges.shape[1], device=x.device)
        edges = torch.quantile(x.float(), levels, dim=0).T  # (F, n_bins + 1)
        edges = edges + torch.arange(edges.shape[1], device=x.device) * 1e-6  # strictly increasing
        self.edges.copy_(torch.cummax(edges, dim=1).values)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N, F, n_bins): 1 for the bins below a value, its position in its own, 0 above."""
        left, width = self.edges[:, :-1], (self.edges[:, 1:] - self.edges[:, :-1]).clamp(min=1e-6)
        return ((x.unsqueeze(-1) - left) / width).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedded = torch.einsum("nfi,fid->nfd", self.encode(x), self.weight) + self.bias
        return torch.relu(embedded).flatten(1)


class MLP(nn.Module):
    """`n_layers` hidden blocks of Linear -> [BatchNorm] -> activation -> Dropout, then a
    linear head that returns logits (classification) or values (regression).

    Every hidden layer has `units` units: with the small trial budgets a tuning run has,
    one width per network searches better than a width per layer. With `embedding`
    periodic or piecewise, the last `n_numeric` inputs (the tabular preprocessor puts the
    numeric columns last) pass through a `PeriodicEmbedding` or `PiecewiseLinearEmbedding`
    first; the encoded categories go in as they are.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        *,
        n_layers: int,
        units: int,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_numeric: int = 0,
        embedding: str = "none",
        n_frequencies: int = 48,
        embedding_dim: int = 16,
        frequency_scale: float = 1.0,
        n_bins: int = 32,
    ) -> None:
        super().__init__()
        self.n_numeric = n_numeric if embedding in ("periodic", "piecewise") else 0
        self.embed: nn.Module | None = None
        if self.n_numeric and embedding == "periodic":
            self.embed = PeriodicEmbedding(self.n_numeric, n_frequencies, embedding_dim, frequency_scale)
        elif self.n_numeric:
            self.embed = PiecewiseLinearEmbedding(self.n_numeric, n_bins, embedding_dim)
        layers: list[nn.Module] = []
        width = n_inputs + self.n_numeric * (embedding_dim - 1)
        for _ in range(n_layers):
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    @property
    def linear(self) -> bool:
        """Whether this is a linear model of its inputs (no hidden layer, no embedding): fitting
        it with a convex loss is a convex problem, which `training.fit` solves exactly."""
        return self.embed is None and len(self.net) == 1

    def prepare(self, x: torch.Tensor) -> None:
        """Learn what the network takes from the training inputs before the first step: the
        piecewise-linear bins of the numeric columns."""
        if isinstance(self.embed, PiecewiseLinearEmbedding):
            self.embed.fit(x[:, x.shape[1] - self.n_numeric :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            split = x.shape[1] - self.n_numeric
            x = torch.cat([x[:, :split], self.embed(x[:, split:])], dim=1)
        return self.net(x)
