"""The tabular ANN: a multilayer perceptron."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


class MLP(nn.Module):
    """`n_layers` hidden blocks of Linear -> [BatchNorm] -> activation -> Dropout, then a
    linear head that returns logits (classification) or values (regression).

    Every hidden layer has `units` units: with the small trial budgets a tuning run has,
    one width per network searches better than a width per layer.
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
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_layers):
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
