"""The convolutional sequence classifiers (FCN, ResNet1D) and per-series z-normalisation:
padding never changes a prediction, the nets can fit their data, `build_model` picks them,
and "series" scaling keeps a sequence's shape while forgetting its level and scale."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from modelyard.config import Hyperparams
from modelyard.features import SequencePreprocessor
from modelyard.models import FCN, ResNet1D, build_model

NETS = [FCN, ResNet1D]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def padded(n: int, steps: int, n_features: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Random (n, steps, n_features + 1) sequences, zero past each length, the mask last."""
    x = torch.randn(n, steps, n_features, generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]).float()
    return torch.cat([x * mask[..., None], mask[..., None]], dim=-1)


def shuffled_batch_norms(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and shifts, so unmasked padding would turn non-zero and leak."""
    torch.manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.bias)
    return net.eval()


@pytest.mark.parametrize("net_class", NETS)
def test_logits_per_sequence_and_padding_changes_nothing(net_class: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = shuffled_batch_norms(net_class(3, 5, filters=8))
    x = padded(4, 20, 3, [20, 13, 7, 1])
    with torch.no_grad():
        logits = net(x)
        longer = net(torch.cat([x, torch.zeros(4, 9, 4)], dim=1))  # 9 more padding steps
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(longer, logits, atol=1e-5, rtol=1e-5)
    # a real step does count: changing one changes that sequence's logits only
    changed = x.clone()
    changed[2, 3, :3] += 1.0
    with torch.no_grad():
        moved = net(changed)
    assert not torch.allclose(moved[2], logits[2]) and torch.equal(moved[[0, 1, 3]], logits[[0, 1, 3]])


@pytest.mark.parametrize("net_class", NETS)
def test_a_net_fits_a_small_batch(net_class: type[nn.Module]) -> None:
    torch.manual_seed(0)
    x = padded(16, 24, 2, [24, 20, 16, 12] * 4, seed=2)
    y = torch.arange(16) % 4
    net = net_class(2, 4, filters=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (net.eval()(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy == 1.0


@pytest.mark.parametrize("net_class", NETS)
def test_mixed_precision_gives_the_same_logits(net_class: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = shuffled_batch_norms(net_class(3, 5, filters=8))
    x = padded(4, 40, 3, [40, 13, 7, 1])
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x)
    torch.testing.assert_close(mixed.float(), full, atol=0.1, rtol=0.05)


def test_a_net_says_what_input_it_takes() -> None:
    with pytest.raises(ValueError, match=r"expects \(batch, steps, 3 features \+ 1 step-mask channel\), got shape"):
        FCN(3, 2)(torch.zeros(2, 10))


@pytest.mark.parametrize(("arch", "net_class"), [("fcn", FCN), ("resnet", ResNet1D)])
def test_build_model_picks_the_convolutional_nets(arch: str, net_class: type[nn.Module]) -> None:
    net = build_model("lstm", (30, 3), 4, Hyperparams(arch=arch, filters=16), masked=True)
    assert type(net) is net_class
    assert net.eval()(padded(2, 30, 2, [30, 5])).shape == (2, 4)  # 2 features: the mask excluded


def long_rows(series: dict[str, list[list[float]]]) -> pd.DataFrame:
    """Long-format rows (id, t, a, b) from {id: steps of [a, b]}."""
    return pd.DataFrame(
        [(key, t, *step) for key, steps in series.items() for t, step in enumerate(steps)],
        columns=["id", "t", "a", "b"],
    )


def test_series_normalisation_keeps_shape_and_forgets_level_and_scale() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 2))
    rows = long_rows(
        {
            "p": base.tolist(),
            "q": (base * [10.0, 0.5] + [100.0, -3.0]).tolist(),  # the same shape, shifted and scaled
            "r": [[1.0, 7.0], [2.0, 7.0], [4.0, 7.0]],  # a shorter sequence with a constant channel
        }
    )
    fitted = SequencePreprocessor("id", "t", ["a", "b"]).fit(rows)
    x = fitted.transform(rows)
    assert x.shape == (3, 6, 3) and x[:, :, -1].sum(axis=1).tolist() == [6, 6, 3]
    real = x[0, :, :2]
    np.testing.assert_allclose(real.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(real.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(x[1], x[0], atol=1e-5)  # level and scale are gone
    np.testing.assert_allclose(x[2, :3, 0].mean(), 0.0, atol=1e-6)  # stats over real steps only
    assert np.all(x[2, :3, 1] == 0.0) and np.all(x[2, 3:] == 0.0)  # constant -> 0; padding stays 0
    with_gap = rows.astype({"a": float}).copy()
    with_gap.loc[0, "a"] = np.nan
    assert np.isfinite(fitted.transform(with_gap)).all()


def test_global_normalisation_is_the_training_rows_standardisation() -> None:
    rows = long_rows({"p": [[1.0, 2.0], [3.0, 4.0]], "q": [[5.0, 0.0], [7.0, 2.0], [9.0, 4.0]]})
    fitted = SequencePreprocessor("id", "t", ["a", "b"], normalize="global").fit(rows)
    x = fitted.transform(rows)
    values = rows[["a", "b"]].to_numpy()
    expected = (values - values.mean(axis=0)) / values.std(axis=0)
    np.testing.assert_allclose(x[1, :, :2], expected[2:], rtol=1e-6)
    np.testing.assert_allclose(x[0, :2, :2], expected[:2], rtol=1e-6)
    # a model saved before `normalize` existed has no such attribute and keeps global scaling
    old = pickle.loads(pickle.dumps(fitted))
    del old.__dict__["normalize"]
    np.testing.assert_array_equal(old.transform(rows), x)
    with pytest.raises(ValueError, match="normalize must be 'series' or 'global'"):
        SequencePreprocessor("id", "t", ["a"], normalize="minmax")
