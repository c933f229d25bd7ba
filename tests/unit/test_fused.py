"""Trial fusion: K networks of one shape trained as one stacked model (`modelyard.fused`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.config import Hyperparams
from modelyard.fused import fit_fused, fusable_groups, fusion_key
from modelyard.models import build_model
from modelyard.training import FitOptions, TrainingDiverged, fit

OPTIONS = FitOptions(problem="binary", monitor="val_accuracy", max_epochs=6, patience=100, seed=0)


def data(n: int = 600, d: int = 8, seed: int = 0) -> tuple[tuple, tuple]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = ((x @ rng.normal(size=d) + np.sin(3 * x[:, 0])) > 0).astype("float32")
    split = int(n * 0.75)
    return (x[:split], y[:split]), (x[split:], y[split:])


def network(hparams: Hyperparams, d: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)  # as a trial builds it
    return build_model("ann", d, 1, hparams)


def mlp(**values: object) -> Hyperparams:
    return Hyperparams(**{"n_layers": 2, "units": 32, "batch_size": 64, "dropout": 0.0, **values})


def test_a_fused_member_learns_as_it_would_alone() -> None:
    train, val = data()
    hparams = [mlp(lr=1e-3, weight_decay=1e-4), mlp(lr=5e-3, weight_decay=1e-2)]
    alone = [fit(network(h), train, val, h, OPTIONS) for h in hparams]
    fused = fit_fused([network(h) for h in hparams], train, val, hparams, OPTIONS, [None, None])
    for one, member in zip(alone, fused, strict=True):
        # the same data order, initial weights and AdamW steps: only the summation order differs
        np.testing.assert_allclose(
            [m["val_loss"] for m in member.history], [m["val_loss"] for m in one.history], rtol=1e-4
        )
        assert member.best_epoch == one.best_epoch
    assert fused[0].history != fused[1].history  # each member kept its own learning rate and decay


def test_each_member_stops_on_its_own_and_the_rest_go_on() -> None:
    train, val = data()
    hparams = [mlp(lr=1e-3, dropout=0.1), mlp(lr=1e-3, dropout=0.3), mlp(lr=1e38, dropout=0.2)]
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def callback(member: int):
        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            seen[member].append(epoch)
            if member == 1 and epoch == 2:
                raise RuntimeError("pruned")  # what a trial's pruning callback does

        return on_epoch_end

    models = [network(h) for h in hparams]
    outcome = fit_fused(models, train, val, hparams, OPTIONS, [callback(i) for i in range(3)])
    assert len(outcome[0].history) == OPTIONS.max_epochs and seen[0] == list(range(1, 7))
    assert isinstance(outcome[1], RuntimeError) and seen[1] == [1, 2]  # left the stack after epoch 2
    assert isinstance(outcome[2], TrainingDiverged) and seen[2] == []  # weights near float32.max: it diverges alone
    # the member that finished holds its best epoch's weights in its own network
    probe = torch.as_tensor(val[0])
    models[0].eval()
    assert torch.isfinite(models[0](probe)).all()


def test_only_networks_of_one_shape_and_recipe_fuse() -> None:
    base = mlp(lr=1e-3, dropout=0.1)
    same = fusion_key(network(base), base)
    assert same is not None
    assert fusion_key(network(mlp(lr=3e-3, dropout=0.3, weight_decay=0.1)), mlp(lr=3e-3, dropout=0.3)) == same
    assert fusion_key(network(mlp(units=64, dropout=0.1)), mlp(units=64, dropout=0.1)) != same
    assert fusion_key(network(mlp(batch_size=32, dropout=0.1)), mlp(batch_size=32, dropout=0.1)) != same
    linear = mlp(n_layers=0)
    assert fusion_key(network(linear), linear) is None  # solved exactly by L-BFGS
    sgd = mlp(optimizer="sgd")
    assert fusion_key(network(sgd), sgd) is None  # the fused step is AdamW's
    assert fusable_groups([same, None, same, "other"]) == [[0, 2], [3], [1]]


@pytest.mark.parametrize("embedding", ["periodic", "piecewise"])
def test_numeric_embeddings_fuse(embedding: str) -> None:
    train, val = data(d=6)
    hparams = [mlp(numeric_embedding=embedding, frequency_scale=scale, lr=2e-3, dropout=0.1) for scale in (0.5, 3.0)]
    models = [build_model("ann", 6, 1, h, n_numeric=4) for h in hparams]
    assert fusion_key(models[0], hparams[0]) == fusion_key(models[1], hparams[1])
    outcome = fit_fused(models, train, val, hparams, OPTIONS, [None, None])
    assert all(result.best_metrics["val_accuracy"] > 0.6 for result in outcome)


def test_a_fused_cnn_with_batch_norm_learns_as_it_would_alone() -> None:
    """Each member's batch-norm statistics are its own, stacked like its weights."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 1, 8, 8)).astype("float32")
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype("int64")
    train, val = (x[:120], y[:120]), (x[120:], y[120:])
    options = FitOptions(problem="multiclass", monitor="val_accuracy", max_epochs=3, patience=100, seed=0)
    hparams = [
        Hyperparams(n_blocks=2, filters=4, dense_units=8, batch_size=32, lr=lr, dropout=0.0) for lr in (1e-3, 1e-2)
    ]

    def cnn(h: Hyperparams) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("cnn", (1, 8, 8), 2, h)

    alone = [fit(cnn(h), train, val, h, options) for h in hparams]
    models = [cnn(h) for h in hparams]
    assert fusion_key(models[0], hparams[0]) == fusion_key(models[1], hparams[1])
    fused = fit_fused(models, train, val, hparams, options, [None, None])
    for one, member, model in zip(alone, fused, models, strict=True):
        np.testing.assert_allclose(
            [m["val_loss"] for m in member.history], [m["val_loss"] for m in one.history], rtol=1e-4
        )
        assert model.features[0][1].num_batches_tracked.item() > 0  # its running statistics came back
