"""build_model: the network's shape follows the data and the hyperparameters."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from torch import nn

from modelyard.config import Hyperparams
from modelyard.models import MLP, build_model
from modelyard.models.mlp import ACTIVATIONS

N_INPUTS = 7
ACTIVATION_NAMES = typing.get_args(Hyperparams.model_fields["activation"].annotation)


def batch(n_rows: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n_rows, N_INPUTS, generator=torch.Generator().manual_seed(seed))


def layers_of(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize(("problem", "n_outputs"), [("binary", 1), ("multiclass", 4), ("regression", 1)])
def test_output_has_one_column_per_output(problem: str, n_outputs: int) -> None:
    model = build_model("ann", N_INPUTS, n_outputs, Hyperparams(n_layers=2, units=16))
    out = model(batch(5))
    assert out.shape == (5, n_outputs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_hidden_layers_follow_n_layers_and_units() -> None:
    model = build_model("ann", N_INPUTS, 3, Hyperparams(n_layers=3, units=24))
    assert isinstance(model, MLP)
    linears = layers_of(model, nn.Linear)
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 24), (24, 24), (24, 24), (24, 3)]


def test_depth_0_is_a_linear_model() -> None:
    model = build_model("ann", N_INPUTS, 3, Hyperparams(n_layers=0, units=24))
    assert [(m.in_features, m.out_features) for m in layers_of(model, nn.Linear)] == [(7, 3)]
    assert not layers_of(model, nn.ReLU)


def test_every_activation_in_the_config_is_built() -> None:
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_each_activation_is_used_in_every_hidden_layer(activation: str) -> None:
    model = build_model("ann", N_INPUTS, 2, Hyperparams(n_layers=2, units=8, activation=activation))
    assert len(layers_of(model, ACTIVATIONS[activation])) == 2
    out = model(batch(4))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_output_layer_is_not_squashed_by_an_activation() -> None:
    model = build_model("ann", N_INPUTS, 1, Hyperparams(n_layers=1, units=8, activation="sigmoid"))
    assert isinstance(model.net[-1], nn.Linear)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_batch_norm_switch(batch_norm: bool) -> None:
    model = build_model("ann", N_INPUTS, 1, Hyperparams(n_layers=3, units=8, batch_norm=batch_norm))
    assert len(layers_of(model, nn.BatchNorm1d)) == (3 if batch_norm else 0)
    model.train()
    assert model(batch(6)).shape == (6, 1)
    model.eval()
    assert model(batch(1)).shape == (1, 1)  # one row is fine at inference


def test_dropout_is_random_in_training_and_off_in_eval() -> None:
    model = build_model("ann", N_INPUTS, 1, Hyperparams(n_layers=2, units=64, dropout=0.5))
    assert [m.p for m in layers_of(model, nn.Dropout)] == [0.5, 0.5]
    x = batch(8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_cpu_dropout_drops_the_rate_keeps_the_mean_and_masks_the_gradient(p: float) -> None:
    from modelyard.models.dropout import Dropout

    torch.manual_seed(0)
    x = torch.ones(400, 300, requires_grad=True)
    out = Dropout(p).train()(x)
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.01  # the rate, to 1/256 and sampling noise
    assert abs(out.mean().item() - 1) < 0.02  # kept elements scaled up: the expectation is the input's
    assert not torch.equal(kept[0], kept[1])  # rows draw their own masks
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach(), rtol=0, atol=0)  # no gradient through a dropped element
    twice = Dropout(p).train()(x.detach())
    assert not torch.equal(twice != 0, kept)  # a new mask each call


def test_zero_dropout_adds_no_dropout_layers() -> None:
    model = build_model("ann", N_INPUTS, 1, Hyperparams(dropout=0.0))
    assert layers_of(model, nn.Dropout) == []
    x = batch(8)
    model.train()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="unknown model family 'gbm'"):
        build_model("gbm", N_INPUTS, 1, Hyperparams())


def test_each_family_builds_for_its_input_shape() -> None:
    torch.manual_seed(0)
    cnn = build_model("cnn", (1, 8, 8), 10, Hyperparams(n_blocks=2, filters=4, dense_units=8))
    assert cnn(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    series = build_model("lstm", (52, 2), 4, Hyperparams(hidden_size=8, n_layers=2, bidirectional=True))
    assert series(torch.rand(3, 52, 2)).shape == (3, 4)
    text = build_model("lstm", (20,), 2, Hyperparams(hidden_size=8, embed_dim=4), vocab_size=50)
    ids = torch.randint(1, 50, (3, 20)).float()  # fit() hands token ids over as floats
    assert text(ids).shape == (3, 2)


@pytest.mark.parametrize(
    ("family", "shape", "extra"),
    [
        ("ann", (N_INPUTS,), {}),
        ("ann", (N_INPUTS,), {"n_numeric": 3, "hparams": Hyperparams(numeric_embedding="periodic")}),
        ("cnn", (1, 8, 8), {}),
        ("lstm", (12, 2), {}),
        ("lstm", (12, 3), {"masked": True, "hparams": Hyperparams(arch="fcn", filters=8)}),
        ("lstm", (12, 3), {"masked": True, "hparams": Hyperparams(arch="resnet", filters=8)}),
        ("lstm", (20,), {"vocab_size": 50, "hparams": Hyperparams(arch="bag")}),
    ],
)
@pytest.mark.parametrize("problem", ["binary", "multiclass"])
def test_an_untrained_network_predicts_the_training_class_shares(family, shape, extra, problem) -> None:
    """With 5 % positives (or classes of 80 / 15 / 5 %) the first step starts from the base
    rate, not from equal odds."""
    from modelyard.training import predict, start_at_prior

    extra = dict(extra)
    hparams = extra.pop("hparams", Hyperparams())
    shares = np.array([0.95, 0.05]) if problem == "binary" else np.array([0.80, 0.15, 0.05])
    n_outputs = 1 if problem == "binary" else len(shares)
    torch.manual_seed(0)
    model = build_model(family, shape, n_outputs, hparams, **extra).eval()
    labels = np.repeat(np.arange(len(shares)), (shares * 2000).astype(int))
    start_at_prior(model, labels, problem)
    x = np.random.default_rng(0).random((64, *shape)).astype(np.float32)
    if "vocab_size" in extra:
        x = np.floor(x * 50)
    if extra.get("masked"):
        x[..., -1] = 1.0
    outputs = predict(model, x, problem)
    predicted = np.c_[1 - outputs, outputs] if problem == "binary" else outputs
    assert np.abs(predicted.mean(axis=0) - shares).max() < 0.1
