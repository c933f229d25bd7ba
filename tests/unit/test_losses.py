"""Every selectable loss trains a network, and each computes what its name says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modelyard.config import LOSSES, Hyperparams
from modelyard.losses import loss_function
from modelyard.models import build_model
from modelyard.training import FitOptions, fit, predict

N_FEATURES = 4


def learnable(problem: str, n_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_rows, N_FEATURES)).astype(np.float32)
    signal = x[:, 0] + 0.5 * x[:, 1]
    if problem == "binary":
        return x, (signal > 0).astype(np.float32)
    if problem == "multiclass":
        return x, np.digitize(signal, [-0.7, 0.7]).astype(np.int64)
    return x, signal.astype(np.float32)


@pytest.mark.parametrize(("problem", "loss"), [(p, name) for p, names in LOSSES.items() for name in names])
def test_every_loss_trains_a_network_that_learns(problem: str, loss: str) -> None:
    x, y = learnable(problem)
    # msle / mape work in target units: values around 5 (offset) with unit spread
    options = FitOptions(problem=problem, monitor="val_loss", max_epochs=40, patience=100, target_offset=5.0)
    hparams = Hyperparams(loss=loss, lr=1e-2, batch_size=64, units=32, dropout=0.0)
    torch.manual_seed(0)
    model = build_model("ann", N_FEATURES, 3 if problem == "multiclass" else 1, hparams)
    result = fit(model, (x, y), (x, y), hparams, options)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]
    out = predict(model, x, problem)
    if problem == "binary":
        assert ((out >= 0.5) == y).mean() > 0.9
    elif problem == "multiclass":
        assert (out.argmax(axis=1) == y).mean() > 0.85
    else:
        assert np.corrcoef(out, y)[0, 1] > 0.9


def test_kl_is_cross_entropy_less_the_targets_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    target = torch.tensor([0, 2])
    smoothing = 0.1
    kl = loss_function("multiclass", "kl", smoothing)(logits, target)
    ce = loss_function("multiclass", "cross_entropy", smoothing)(logits, target)
    p = torch.tensor([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    entropy = -(p * p.log()).sum()
    assert kl.item() == pytest.approx((ce - entropy).item(), rel=1e-5)
    # binary: 0 for a prediction equal to the smoothed target
    smoothed = 0.95
    logit = torch.tensor([math.log(smoothed / (1 - smoothed))])
    assert loss_function("binary", "kl", 0.1)(logit, torch.tensor([1.0])).item() == pytest.approx(0.0, abs=1e-5)


def test_hinge_is_zero_beyond_the_margin_and_linear_inside() -> None:
    hinge = loss_function("binary", "hinge")
    assert hinge(torch.tensor([2.0, -3.0]), torch.tensor([1.0, 0.0])).item() == 0.0
    assert hinge(torch.tensor([0.5]), torch.tensor([1.0])).item() == pytest.approx(0.5)


def test_msle_and_mape_measure_in_target_units() -> None:
    # standardised 0 and 1 with offset 10, scale 5: values 10 and 15
    output, target = torch.tensor([1.0]), torch.tensor([0.0])
    mape = loss_function("regression", "mape", offset=10.0, scale=5.0)(output, target)
    assert mape.item() == pytest.approx(0.5)
    msle = loss_function("regression", "msle", offset=10.0, scale=5.0)(output, target)
    assert msle.item() == pytest.approx((math.log1p(15) - math.log1p(10)) ** 2, rel=1e-5)


def test_a_loss_of_another_problem_is_refused() -> None:
    with pytest.raises(ValueError, match="not for regression tasks"):
        loss_function("regression", "hinge")
