"""Periodic numeric embeddings, ensembles and robust clipping: what #10 adds to tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.config import Hyperparams, parse_settings
from modelyard.features import TargetCodec, tabular_preprocessor
from modelyard.features.preprocessing import smooth_clip
from modelyard.models import MLP, Ensemble, build_model
from modelyard.models.mlp import PeriodicEmbedding, PeriodicFeatures
from modelyard.training import FitOptions, fit, predict
from tests.conftest import toy_frame, toy_params

PLR = Hyperparams(numeric_embedding="periodic", n_frequencies=8, numeric_embed_dim=4, frequency_scale=3.0, units=16)


def test_periodic_embedding_widens_only_the_numeric_columns() -> None:
    model = build_model("ann", 10, 1, PLR, n_numeric=3)
    assert isinstance(model.embed, PeriodicEmbedding)
    assert model.net[0].in_features == 7 + 3 * 4  # 7 encoded categories as they are, 3 numerics x 4
    assert model(torch.randn(5, 10)).shape == (5, 1)
    # no numeric columns, or the option off: a plain MLP
    assert build_model("ann", 10, 1, PLR, n_numeric=0).embed is None
    assert build_model("ann", 10, 1, Hyperparams(units=16), n_numeric=3).net[0].in_features == 10


def test_periodic_features_match_autograd_through_cos_and_sin_alone_and_under_vmap() -> None:
    x = torch.randn(3, 5, 1, dtype=torch.float64, requires_grad=True)
    frequencies = torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PeriodicFeatures.apply, (x, frequencies))

    def plain(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
        angles = 2 * torch.pi * frequencies * x
        return torch.cat([angles.cos(), angles.sin()], -1)

    weights = torch.randn(3, 5, 8, dtype=torch.float64)
    expected = torch.autograd.grad((plain(x, frequencies) * weights).sum(), (x, frequencies))
    ours = PeriodicFeatures.apply(x, frequencies)
    torch.testing.assert_close(ours, plain(x, frequencies))
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), (x, frequencies)), expected)
    # trial fusion runs it under vmap, one set of frequencies per member, the rows shared
    stacked = torch.stack([frequencies, 2 * frequencies])
    fused = torch.vmap(PeriodicFeatures.apply, in_dims=(None, 0))(x, stacked)
    torch.testing.assert_close(fused[1], plain(x, 2 * frequencies))
    grads = torch.autograd.grad((fused * weights).sum(), (x, stacked))
    lone = [torch.autograd.grad((plain(x, f) * weights).sum(), (x, f)) for f in (frequencies, 2 * frequencies)]
    torch.testing.assert_close(grads[0], lone[0][0] + lone[1][0])
    torch.testing.assert_close(grads[1], torch.stack([lone[0][1], lone[1][1]]))
    # in float32 the cosines are sines of the angles shifted by pi/2: off by the rounding of
    # that sum at most, a few units in the last place of the largest angle
    x32, f32 = x.detach().float(), frequencies.detach().float()
    largest = (2 * torch.pi * f32 * x32).abs().max() + torch.pi
    bound = 2 * torch.finfo(torch.float32).eps * float(largest)
    torch.testing.assert_close(PeriodicFeatures.apply(x32, f32), plain(x32, f32), rtol=0, atol=bound)


def test_periodic_embedding_learns_what_a_plain_mlp_cannot_in_the_same_budget() -> None:
    # a high-frequency function of one feature: periodic features resolve it, ReLU units struggle
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(1024, 1)).astype(np.float32)
    y = (np.sin(6 * x[:, 0]) > 0).astype(np.float32)
    options = FitOptions(problem="binary", monitor="val_accuracy", max_epochs=30, patience=100)

    def accuracy(hparams: Hyperparams) -> float:
        torch.manual_seed(0)
        model = build_model("ann", 1, 1, hparams, n_numeric=1)
        fit(model, (x, y), (x, y), hparams, options)
        return float(((predict(model, x, "binary") >= 0.5) == y).mean())

    plain = Hyperparams(units=16, n_layers=1, lr=3e-3, batch_size=64, dropout=0.0)
    periodic = plain.model_copy(update={"numeric_embedding": "periodic", "frequency_scale": 1.0})
    piecewise = plain.model_copy(update={"numeric_embedding": "piecewise", "n_bins": 32})
    scores = {name: accuracy(h) for name, h in (("plain", plain), ("periodic", periodic), ("piecewise", piecewise))}
    assert scores["periodic"] > 0.95 and scores["piecewise"] > 0.95
    assert min(scores["periodic"], scores["piecewise"]) > scores["plain"] + 0.1


def test_piecewise_bins_sit_at_the_training_quantiles_and_travel_with_the_weights() -> None:
    hparams = Hyperparams(numeric_embedding="piecewise", n_bins=4, numeric_embed_dim=2, units=8)
    model = build_model("ann", 3, 1, hparams, n_numeric=2)
    x = torch.cat([torch.zeros(100, 1), torch.arange(100.0).unsqueeze(1), torch.ones(100, 1)], dim=1)
    model.prepare(x)
    edges = model.embed.edges
    assert torch.allclose(edges[0], torch.tensor([0.0, 24.75, 49.5, 74.25, 99.0]), atol=1e-3)
    assert (edges[1][1:] > edges[1][:-1]).all()  # a constant column still gets increasing edges
    copy = build_model("ann", 3, 1, hparams, n_numeric=2)
    copy.load_state_dict(model.state_dict())
    assert torch.equal(copy.embed.edges, edges)
    # a value fills the bins below it, its own bin by its position, none above
    encoded = model.embed.encode(torch.tensor([[60.0, 0.0]]))[0, 0]
    assert torch.allclose(encoded, torch.tensor([1.0, 1.0, (60 - 49.5) / 24.75, 0.0]), atol=1e-4)


@pytest.mark.parametrize(("problem", "n_outputs"), [("binary", 1), ("multiclass", 3), ("regression", 1)])
def test_an_ensemble_predicts_the_mean_of_its_members(problem: str, n_outputs: int) -> None:
    torch.manual_seed(0)
    members = [MLP(4, n_outputs, n_layers=1, units=8) for _ in range(3)]
    x = torch.randn(6, 4)
    expected = np.mean([predict(m, x.numpy(), problem) for m in members], axis=0)
    np.testing.assert_allclose(predict(Ensemble(members, problem), x.numpy(), problem), expected, rtol=1e-4, atol=1e-6)


def test_an_ensemble_of_periodic_mlps_survives_save_and_load(tmp_path) -> None:
    from modelyard.bundle import ModelBundle

    task = parse_settings(toy_params()).task("toy")
    train = toy_frame(200)
    codec = TargetCodec(task.problem, classes=["no", "yes"], positive_label="yes").fit(train["label"])
    preprocessor = tabular_preprocessor(task).fit(train.drop(columns="label"), codec.encode(train["label"]))
    assert preprocessor.n_numeric_ == 2
    members = [build_model("ann", preprocessor.input_shape_, 1, PLR, n_numeric=2).eval() for _ in range(3)]
    network = Ensemble(members, "binary")
    bundle = ModelBundle("ann", "binary", PLR, task.schema_, "label", preprocessor, codec, network, threshold=0.3)
    bundle.save(tmp_path / "model")
    loaded = ModelBundle.load(tmp_path / "model")
    assert loaded.n_members == 3
    rows = toy_frame(20).drop(columns="label")
    predictions = loaded.predict(rows)
    pd.testing.assert_frame_equal(predictions, bundle.predict(rows))
    assert loaded.threshold == 0.3  # labels are decided at the saved threshold
    assert (predictions["label"] == np.where(predictions["probability"] >= 0.3, "yes", "no")).all()


def test_smooth_clip_keeps_small_values_and_bounds_large_ones() -> None:
    x = np.array([0.0, 0.3, -0.3, 30.0, -1e6])
    out = smooth_clip(x)
    assert out[0] == 0.0 and out[1] == pytest.approx(0.3, rel=0.01) and out[2] == pytest.approx(-0.3, rel=0.01)
    assert 2.9 < out[3] < 3.0 and -3.0 <= out[4] < -2.99
    frame = toy_frame(200).assign(x1=lambda f: f["x1"].where(f.index != 0, 1e9))  # one wild value
    task = parse_settings(toy_params(features={"scaler": "robust_clip"})).task("toy")
    features = (
        tabular_preprocessor(task)
        .fit(frame.drop(columns="label"), (frame["label"] == "yes").to_numpy())
        .transform(frame)
    )
    assert np.abs(features[:, -2:]).max() <= 3.0


def test_noisy_quantiles_spread_a_column_of_few_values_and_transform_without_noise() -> None:
    frame = toy_frame(300).assign(x2=lambda f: f["x2"] % 3)  # three repeated values
    target = (frame["label"] == "yes").to_numpy()
    plain = tabular_preprocessor(parse_settings(toy_params(features={"scaler": "quantile"})).task("toy"))
    noisy = tabular_preprocessor(parse_settings(toy_params(features={"scaler": "quantile_noise"})).task("toy"))
    plain_out = plain.fit(frame.drop(columns="label"), target).transform(frame)[:, -1]
    noisy_out = noisy.fit(frame.drop(columns="label"), target).transform(frame)[:, -1]
    assert len(np.unique(plain_out)) == len(np.unique(noisy_out)) == 3  # one value per level, no noise added
    assert np.ptp(noisy_out) < np.ptp(plain_out)  # the levels sit mid-quantile, not at the extremes
    np.testing.assert_array_equal(noisy.transform(frame)[:, -1], noisy_out)  # deterministic
