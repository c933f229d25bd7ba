"""fit(), predict() and devices, on a few dozen random rows made in memory, on the CPU."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from modelyard.config import Hyperparams
from modelyard.models import build_model
from modelyard.training import (
    FitOptions,
    FitResult,
    TrainingDiverged,
    as_target,
    clip_gradients,
    cross_fit_splits,
    fit,
    loss_function,
    pooled_metrics,
    predict,
    resolve_device,
    validation_metrics,
)

N_FEATURES = 6
N_OUTPUTS = {"binary": 1, "multiclass": 3, "regression": 1}
DEFAULT_MONITOR = {"binary": "val_accuracy", "multiclass": "val_accuracy", "regression": "val_rmse"}

# One full batch, no dropout, a quick optimizer: enough capacity to memorise 32 rows.
MEMORISE = Hyperparams(lr=2.0e-2, optimizer="adam", dropout=0.0, batch_size=32, n_layers=2, units=64)


def make_data(problem: str, n_rows: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random features with random labels (nothing to learn but the rows themselves)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, N_FEATURES)).astype(np.float32)
    if problem == "binary":
        y = rng.permutation(np.arange(n_rows) % 2)
    elif problem == "multiclass":
        y = rng.permutation(np.arange(n_rows) % 3)
    else:
        y = rng.normal(size=n_rows).astype(np.float32)
    return x, y


def make_learnable(n_rows: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels a network can learn from the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, N_FEATURES)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def make_options(problem: str, **overrides) -> FitOptions:
    values = {
        "problem": problem,
        "monitor": DEFAULT_MONITOR[problem],
        "max_epochs": 5,
        "patience": 100,
        "grad_clip": 1.0,
        "device": "cpu",
        "seed": 0,
    }
    return FitOptions(**{**values, **overrides})


def train(
    problem: str,
    hparams: Hyperparams,
    data: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    model_seed: int = 0,
    **overrides,
) -> tuple[torch.nn.Module, FitResult]:
    torch.manual_seed(model_seed)
    if "loss" in overrides:
        hparams = hparams.model_copy(update={"loss": overrides.pop("loss")})
    model = build_model("ann", data[0].shape[1], N_OUTPUTS[problem], hparams)
    result = fit(model, data, val or data, hparams, make_options(problem, **overrides))
    return model, result


@pytest.mark.parametrize("problem", ["binary", "multiclass"])
def test_overfits_one_batch_of_random_labels(problem: str) -> None:
    x, y = make_data(problem)
    model, result = train(problem, MEMORISE, (x, y), max_epochs=40, monitor="val_loss", grad_clip=None)
    assert result.history[0]["train_loss"] > 0.5
    assert result.history[-1]["train_loss"] < 0.01
    assert result.best_metrics["val_accuracy"] == 1.0
    probabilities = predict(model, x, problem)
    predicted = (probabilities >= 0.5).astype(int) if problem == "binary" else probabilities.argmax(axis=1)
    np.testing.assert_array_equal(predicted, y)


@pytest.mark.parametrize(("loss", "near_zero"), [("mse", 0.01), ("huber", 0.01), ("mae", 0.2)])
def test_overfits_one_batch_of_random_regression_targets(loss: str, near_zero: float) -> None:
    x, y = make_data("regression")
    model, result = train("regression", MEMORISE, (x, y), max_epochs=60, loss=loss, grad_clip=None)
    assert result.history[0]["train_loss"] > 0.3
    assert result.history[-1]["train_loss"] < near_zero
    assert np.abs(predict(model, x, "regression") - y).mean() < 0.2


def test_same_params_and_seed_give_identical_history() -> None:
    # Dropout, batch norm and several shuffled batches: every source of randomness fit() has.
    hparams = Hyperparams(lr=1e-2, dropout=0.2, batch_size=8, n_layers=2, units=16, batch_norm=True)
    data, val = make_data("binary", 30, seed=1), make_data("binary", 16, seed=2)
    first_model, first = train("binary", hparams, data, val, max_epochs=3, monitor="val_loss")
    second_model, second = train("binary", hparams, data, val, max_epochs=3, monitor="val_loss")
    assert first.history == second.history
    assert first.best_epoch == second.best_epoch
    for a, b in zip(first_model.state_dict().values(), second_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    _, other_seed = train("binary", hparams, data, val, max_epochs=3, monitor="val_loss", seed=1)
    assert other_seed.history != first.history  # the seed does matter, so the equality above means something


def noisy_run(monitor: str, patience: int, n_val: int = 256):
    """Train on learnable labels with 30% of them flipped, validate on clean ones: the network
    first learns the signal, then memorises the noise and validation gets worse."""
    x, y = make_learnable(64, seed=3)
    flipped = np.random.default_rng(103).choice(64, 19, replace=False)
    y[flipped] = 1 - y[flipped]
    val = make_learnable(n_val, seed=4)
    hparams = Hyperparams(lr=1e-2, optimizer="adam", dropout=0.0, batch_size=64, n_layers=2, units=64)
    model, result = train("binary", hparams, (x, y), val, max_epochs=100, patience=patience, monitor=monitor)
    return model, result, val


def test_early_stopping_stops_once_val_loss_stops_improving() -> None:
    _, result, _ = noisy_run("val_loss", patience=3)
    losses = [m["val_loss"] for m in result.history]
    assert 1 < result.best_epoch == int(np.argmin(losses)) + 1  # epochs are numbered from 1
    assert len(result.history) == result.best_epoch + 3 < 100
    assert result.best_metrics == result.history[result.best_epoch - 1]


def test_early_stopping_on_accuracy_keeps_the_highest_epoch() -> None:
    _, result, _ = noisy_run("val_accuracy", patience=4)
    accuracies = [m["val_accuracy"] for m in result.history]
    losses = [m["val_loss"] for m in result.history]
    best = max(accuracies)
    tied = [epoch for epoch, accuracy in enumerate(accuracies) if accuracy == best]
    assert 1 < result.best_epoch == min(tied, key=lambda epoch: losses[epoch]) + 1  # ties: the lower loss
    # it waits for neither the accuracy nor the loss to improve for `patience` epochs
    last_gain = max(result.best_epoch - 1, int(np.argmin(losses)))
    assert len(result.history) == last_gain + 4 + 1 < 100
    assert result.best_metrics["val_accuracy"] == best


def test_a_small_validation_set_selects_on_the_loss_not_on_accuracy() -> None:
    _, result, _ = noisy_run("val_accuracy", patience=4, n_val=40)
    losses = [m["val_loss"] for m in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1


def test_patience_counts_from_the_end_of_the_warm_up_and_is_capped_by_the_budget() -> None:
    # A learning rate too small to change a float32 weight: the validation loss never moves.
    frozen = Hyperparams(lr=1e-30, optimizer="adam", dropout=0.0, batch_size=64, n_layers=1, units=8)
    common = {"max_epochs": 40, "patience": 1, "monitor": "val_loss"}
    _, result = train("binary", frozen, make_learnable(64), warmup=0.25, min_patience_steps=300, **common)
    # warm-up: 10 of 40 epochs; patience: 300 steps of 1 step an epoch, capped at 40 // 10 = 4
    assert len(result.history) == 10 + 4 + 1
    _, result = train("binary", frozen, make_learnable(64), schedule="constant", **common)
    assert len(result.history) == 1 + 1  # no warm-up, no steps floor: patience 1 after the first epoch


def test_best_epochs_weights_are_restored() -> None:
    model, result, (x_val, y_val) = noisy_run("val_loss", patience=3)
    options = make_options("binary", monitor="val_loss")
    x = torch.as_tensor(x_val)
    y = as_target(y_val, "binary", torch.device("cpu"))
    recomputed = validation_metrics(model, x, y, loss_function("binary"), options)
    assert recomputed["val_loss"] != pytest.approx(result.history[-1]["val_loss"], rel=1e-3)  # the last was worse
    assert recomputed["val_loss"] == pytest.approx(result.best_metrics["val_loss"], rel=1e-5)
    assert recomputed["val_accuracy"] == result.best_metrics["val_accuracy"]
    assert not model.training


@pytest.mark.parametrize(
    ("problem", "keys"),
    [
        ("binary", {"train_loss", "val_loss", "val_accuracy"}),
        ("multiclass", {"train_loss", "val_loss", "val_accuracy"}),
        ("regression", {"train_loss", "val_loss", "val_rmse", "val_mae"}),
    ],
)
def test_on_epoch_end_gets_each_epochs_metrics(problem: str, keys: set[str]) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    data = make_data(problem, 24)
    torch.manual_seed(0)
    model = build_model("ann", N_FEATURES, N_OUTPUTS[problem], MEMORISE)
    options = make_options(problem, max_epochs=3)
    result = fit(model, data, data, MEMORISE, options, on_epoch_end=lambda e, m: calls.append((e, m)))
    assert [epoch for epoch, _ in calls] == [1, 2, 3]  # numbered from 1, as the console shows them
    assert all(set(metrics) == keys for _, metrics in calls)
    assert [metrics for _, metrics in calls] == result.history
    assert all(type(value) is float for _, metrics in calls for value in metrics.values())


def test_exception_in_callback_stops_training_and_propagates() -> None:
    class Stop(Exception):
        pass

    epochs: list[int] = []

    def stop_at_two(epoch: int, metrics: dict[str, float]) -> None:
        epochs.append(epoch)
        if epoch == 2:
            raise Stop("pruned")

    data = make_data("binary")
    model = build_model("ann", N_FEATURES, 1, MEMORISE)
    with pytest.raises(Stop, match="pruned"):
        fit(model, data, data, MEMORISE, make_options("binary", max_epochs=10), on_epoch_end=stop_at_two)
    assert epochs == [1, 2]


def test_huge_learning_rate_raises_training_diverged() -> None:
    hparams = Hyperparams(lr=1.0e6, optimizer="sgd", dropout=0.0, batch_size=8)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train("binary", hparams, make_data("binary"), max_epochs=10, grad_clip=None)


@pytest.mark.parametrize("problem", ["binary", "regression"])
def test_infinite_inputs_raise_training_diverged(problem: str) -> None:
    x, y = make_data(problem)
    x[3, 2] = np.inf
    with pytest.raises(TrainingDiverged, match="epoch 1;"):
        train(problem, MEMORISE, (x, y), max_epochs=3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_each_optimizer_reduces_the_loss(optimizer: str) -> None:
    hparams = Hyperparams(lr=5e-2, optimizer=optimizer, weight_decay=1e-4, dropout=0.0, batch_size=16, units=16)
    _, result = train("binary", hparams, make_learnable(), max_epochs=20)
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]
    assert result.best_metrics["val_accuracy"] >= 0.85


def l1_norm(model: torch.nn.Module) -> float:
    return sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_l1_penalty_shrinks_the_weights() -> None:
    base = {"lr": 1e-2, "dropout": 0.0, "batch_size": 16, "units": 16}
    plain_model, plain = train("binary", Hyperparams(**base), make_learnable(), max_epochs=10)
    l1_model, penalised = train("binary", Hyperparams(**base, l1=1e-2), make_learnable(), max_epochs=10)
    assert l1_norm(l1_model) < 0.7 * l1_norm(plain_model)
    assert penalised.history[0]["train_loss"] > plain.history[0]["train_loss"]  # the penalty is part of the loss


def test_trailing_single_row_with_batch_norm_trains() -> None:
    hparams = Hyperparams(lr=1e-2, dropout=0.0, batch_size=16, units=8, batch_norm=True)
    data = make_data("binary", 33)  # 16 + 16 + 1
    _, result = train("binary", hparams, data, max_epochs=2)
    assert len(result.history) == 2
    assert all(np.isfinite(m["train_loss"]) for m in result.history)


def test_regression_metrics_are_reported_in_target_units() -> None:
    data = make_data("regression", 24)
    _, unit = train("regression", MEMORISE, data, max_epochs=2)
    _, scaled = train("regression", MEMORISE, data, max_epochs=2, target_scale=10.0)
    first, second = unit.history[-1], scaled.history[-1]
    assert second["val_loss"] == first["val_loss"]
    assert second["val_rmse"] == pytest.approx(10.0 * first["val_rmse"])
    assert second["val_mae"] == pytest.approx(10.0 * first["val_mae"])


def test_predict_gives_probabilities() -> None:
    x, _ = make_data("binary", 20)
    binary = predict(build_model("ann", N_FEATURES, 1, Hyperparams(units=8)), x * 100, "binary")
    assert binary.shape == (20,)
    assert ((binary >= 0) & (binary <= 1)).all()
    multiclass = predict(build_model("ann", N_FEATURES, 3, Hyperparams(units=8)), x * 100, "multiclass")
    assert multiclass.shape == (20, 3)
    assert (multiclass >= 0).all()
    np.testing.assert_allclose(multiclass.sum(axis=1), 1.0, rtol=1e-5)
    regression = predict(build_model("ann", N_FEATURES, 1, Hyperparams(units=8)), x, "regression")
    assert regression.shape == (20,) and regression.dtype == np.float32


def test_predict_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = make_data("multiclass", 50)
    model = build_model("ann", N_FEATURES, 3, Hyperparams(units=8, batch_norm=True))
    whole = predict(model, x, "multiclass")
    monkeypatch.setattr("modelyard.training.EVAL_BATCH", 7)
    np.testing.assert_allclose(predict(model, x, "multiclass"), whole, rtol=1e-6)


def test_predict_on_no_rows_keeps_one_column_per_class() -> None:
    model = build_model("ann", N_FEATURES, 3, Hyperparams(units=8))
    assert predict(model, np.empty((0, N_FEATURES), dtype=np.float32), "multiclass").shape == (0, 3)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given when there is no CUDA GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA GPU is available; use device: auto"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16_with_grad_scaler"])
def test_trains_on_cuda_with_mixed_precision(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> None:
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    data = make_learnable(256)
    hparams = Hyperparams(lr=1e-2, dropout=0.0, batch_size=64, units=32, batch_norm=True)
    model, result = train("binary", hparams, data, max_epochs=15, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert result.history[-1]["train_loss"] < 0.7 * result.history[0]["train_loss"]
    assert result.best_metrics["val_accuracy"] >= 0.9
    probabilities = predict(model, data[0], "binary")
    assert probabilities.dtype == np.float32 and ((probabilities >= 0) & (probabilities <= 1)).all()


@pytest.mark.parametrize("problem", ["binary", "regression"])
def test_cross_fit_members_hold_out_disjoint_folds_and_train_on_the_rest(problem: str) -> None:
    rng = np.random.default_rng(0)
    x = np.arange(60, dtype=np.float32)[:, None]  # row ids, to follow each row
    y = (rng.random(60) < 0.3).astype(np.float32)  # an unbalanced binary target (or values)
    train, val = (x[:48], y[:48]), (x[48:], y[48:])
    splits = cross_fit_splits(train, val, 3, problem, seed=0)
    assert splits[0][0] is train and splits[0][1] is val  # member 0 is the plain train / validation split
    held = [set(held_x[:, 0]) for _, (held_x, _) in splits]
    assert not held[1] & held[2] and not (held[1] | held[2]) & held[0]
    assert all(len(h) == 12 for h in held)  # five folds of 60 samples
    for (fit_x, fit_y), (held_x, _) in splits[1:]:
        assert set(fit_x[:, 0]) | set(held_x[:, 0]) == set(range(60))  # validation rows included
        assert np.array_equal(fit_y, y[fit_x[:, 0].astype(int)])  # labels follow their rows
    if problem == "binary":  # each fold keeps the class balance to within a sample
        shares = [y[list(map(int, h))].sum() for h in held[1:]]
        assert max(shares) - min(shares) <= 1


def test_pooled_metrics_equal_the_metrics_of_the_union() -> None:
    errors = [np.array([1.0, -2.0]), np.array([3.0, 0.0, -1.0])]

    def metrics(e: np.ndarray) -> dict[str, float]:
        return {"val_rmse": float(np.sqrt(np.mean(e**2))), "val_mae": float(np.mean(np.abs(e)))}

    pooled = pooled_metrics([(metrics(e), len(e)) for e in errors])
    assert pooled == pytest.approx(metrics(np.concatenate(errors)))


LINEAR = Hyperparams(n_layers=0, dropout=0.0, batch_size=8, lr=1e-4)  # lr and batch play no part


def test_a_linear_regression_reaches_ridges_closed_form_optimum() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, N_FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=N_FEATURES) + 0.5 + rng.normal(scale=0.5, size=80)).astype(np.float32)
    decay = 0.05
    model, result = train("regression", LINEAR.model_copy(update={"weight_decay": decay}), (x, y), max_epochs=3)
    # mean squared error + decay / 2 * ||w||^2 is ridge with alpha = n * decay / 2 (intercept free)
    centred_x, centred_y = x - x.mean(axis=0), y - y.mean()
    alpha = len(x) * decay / 2
    ridge = np.linalg.solve(centred_x.T @ centred_x + alpha * np.eye(N_FEATURES), centred_x.T @ centred_y)
    learned = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).weight.detach().numpy().ravel()
    np.testing.assert_allclose(learned, ridge, atol=1e-3)
    # the epoch budget of a mini-batch run does not cut the solver short; the optimum is kept
    assert result.best_epoch == len(result.history) > 0


def test_a_linear_classifier_matches_scikit_learns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = make_learnable(120, seed=4)
    flipped = np.random.default_rng(4).random(len(y)) < 0.15  # noise, so the optimum is finite
    y = np.where(flipped, 1 - y, y)
    decay = 0.02
    model, _ = train("binary", LINEAR.model_copy(update={"weight_decay": decay}), (x, y))
    reference = LogisticRegression(C=1 / (len(x) * decay), tol=1e-8, max_iter=10_000).fit(x, y)
    ours = predict(model, x, "binary")
    np.testing.assert_allclose(ours, reference.predict_proba(x)[:, 1], atol=2e-3)


def test_a_linear_model_with_an_l1_penalty_trains_by_mini_batches() -> None:
    hparams = LINEAR.model_copy(update={"l1": 1e-3, "lr": 1e-2})
    _, result = train("binary", hparams, make_learnable(), max_epochs=4)
    assert len(result.history) == 4  # the epoch budget, not L-BFGS rounds


@pytest.mark.parametrize("scale", [0.001, 1.0, 100.0])  # under the limit, over it, far over it
def test_clip_gradients_leaves_the_same_gradients_as_torch(scale: float) -> None:
    torch.manual_seed(0)
    model = build_model("ann", 8, 1, Hyperparams(n_layers=2, units=16))
    copy = build_model("ann", 8, 1, Hyperparams(n_layers=2, units=16))
    for p, q in zip(model.parameters(), copy.parameters(), strict=True):
        p.grad = torch.randn_like(p) * scale
        q.grad = p.grad.clone()
    clip_gradients(list(model.parameters()), 1.0)
    torch.nn.utils.clip_grad_norm_(copy.parameters(), 1.0)
    for p, q in zip(model.parameters(), copy.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]) <= 1.0 + 1e-5


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc options")
def test_freed_memory_is_reused_without_page_faults() -> None:
    """After `keep_freed_memory`, blocks of a validation pass's size (12 MB) freed and taken
    again come back as mapped pages; with glibc's defaults every pass faults thousands of
    pages in anew (1.4 us each on the development host). In a fresh process: the setting
    is global."""
    script = textwrap.dedent(
        """
        import resource
        import torch
        from modelyard.training import keep_freed_memory

        print(keep_freed_memory())
        counts = []
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [torch.ones(3 << 20) for _ in range(3)]
            del blocks
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(sum(counts[2:]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    kept, later_faults = done.stdout.split()
    assert kept == "True"
    assert int(later_faults) < 500  # 21,504 here with glibc's defaults
