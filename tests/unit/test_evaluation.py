"""Test metrics, curve tables and plots, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from modelyard.evaluation import compute_metrics, curve_tables, lower_is_better, plot_tables

# Binary: predictions [0, 1, 1, 1, 0] -> TP 1, FP 2, FN 1, TN 1.
BINARY_Y = np.array([0, 0, 0, 1, 1])
BINARY_P = np.array([0.2, 0.7, 0.6, 0.9, 0.3])

# Multiclass: argmax [0, 2, 2, 1] against [0, 1, 2, 2].
MULTI_Y = np.array([0, 1, 2, 2])
MULTI_P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])


def test_binary_perfect_predictions() -> None:
    y = np.array([0, 1, 1, 0, 1])
    metrics = compute_metrics("binary", y, np.array([0.1, 0.9, 0.8, 0.3, 0.6]))
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert metrics[f"test_{name}"] == 1.0, name
    assert 0 < metrics["test_log_loss"] < 0.3


def test_binary_metrics_match_hand_computed_values() -> None:
    metrics = compute_metrics("binary", BINARY_Y, BINARY_P)
    names = ["accuracy", "precision", "recall", "f1", "log_loss", "roc_auc"]
    assert set(metrics) == {f"test_{name}" for name in names}
    assert metrics["test_accuracy"] == pytest.approx(2 / 5)
    assert metrics["test_precision"] == pytest.approx(1 / 3)
    assert metrics["test_recall"] == pytest.approx(1 / 2)
    assert metrics["test_f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # Positives 0.9 and 0.3 against negatives 0.2, 0.7, 0.6: 0.9 wins 3 pairs, 0.3 wins 1, of 6.
    assert metrics["test_roc_auc"] == pytest.approx(4 / 6)
    expected_log_loss = -np.mean(np.log([0.8, 0.3, 0.4, 0.9, 0.3]))
    assert metrics["test_log_loss"] == pytest.approx(expected_log_loss)
    assert all(type(v) is float for v in metrics.values())


def test_probability_of_one_half_counts_as_positive() -> None:
    metrics = compute_metrics("binary", np.array([1, 0]), np.array([0.5, 0.4]))
    assert metrics["test_accuracy"] == 1.0


def test_binary_without_both_classes_leaves_out_roc_auc() -> None:
    metrics = compute_metrics("binary", np.array([1, 1, 1]), np.array([0.9, 0.4, 0.7]))
    assert "test_roc_auc" not in metrics
    assert metrics["test_accuracy"] == pytest.approx(2 / 3)


def test_multiclass_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 1])
    output = np.eye(3)[y] * 0.8 + 0.2 / 3
    metrics = compute_metrics("multiclass", y, output)
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert metrics[f"test_{name}"] == pytest.approx(1.0), name


def test_multiclass_metrics_match_hand_computed_values() -> None:
    metrics = compute_metrics("multiclass", MULTI_Y, MULTI_P)
    assert metrics["test_accuracy"] == pytest.approx(0.5)
    assert metrics["test_precision"] == pytest.approx((1 + 0 + 0.5) / 3)  # macro average
    assert metrics["test_recall"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert metrics["test_f1"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert metrics["test_log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.6, 0.3])))
    # One-vs-rest AUC per class: 1, 2/3 and 2.5/4 (a tie counts half).
    assert metrics["test_roc_auc"] == pytest.approx((1 + 2 / 3 + 2.5 / 4) / 3)


def test_multiclass_with_a_class_absent_from_the_labels_leaves_out_roc_auc() -> None:
    metrics = compute_metrics("multiclass", np.array([0, 1, 1]), MULTI_P[:3])
    assert "test_roc_auc" not in metrics
    assert math.isfinite(metrics["test_log_loss"])


def test_regression_metrics_match_hand_computed_values() -> None:
    metrics = compute_metrics("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert set(metrics) == {"test_rmse", "test_mae", "test_mape", "test_r2"}
    assert metrics["test_rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert metrics["test_mape"] == pytest.approx(100 * (2 / 3) / 3)
    assert metrics["test_mae"] == pytest.approx(2 / 3)
    assert metrics["test_r2"] == pytest.approx(1 - 4 / 2)


def test_prefix_names_the_split() -> None:
    metrics = compute_metrics("regression", np.array([1.0, 2.0]), np.array([1.0, 2.0]), prefix="val_")
    assert set(metrics) == {"val_rmse", "val_mae", "val_mape", "val_r2"}


def test_mape_skips_true_zeros() -> None:
    metrics = compute_metrics("regression", np.array([0.0, 2.0]), np.array([5.0, 3.0]))
    assert metrics["test_mape"] == pytest.approx(50.0)
    assert all("/" not in key for key in compute_metrics("binary", BINARY_Y, BINARY_P))


@pytest.mark.parametrize("metric", ["val_loss", "test_rmse", "test_mae", "test_log_loss", "val_mape", "train_loss"])
def test_error_metrics_are_lower_is_better(metric: str) -> None:
    assert lower_is_better(metric)


@pytest.mark.parametrize("metric", ["val_accuracy", "test_roc_auc", "test_f1", "test_r2", "test_precision"])
def test_score_metrics_are_higher_is_better(metric: str) -> None:
    assert not lower_is_better(metric)


def test_binary_curve_tables() -> None:
    tables = curve_tables("binary", BINARY_Y, BINARY_P, ["no", "yes"])
    assert set(tables) == {"confusion", "roc", "precision_recall"}
    confusion = tables["confusion"]
    assert list(confusion.columns) == ["actual", "predicted"]
    assert confusion["actual"].tolist() == ["no", "no", "no", "yes", "yes"]
    assert confusion["predicted"].tolist() == ["no", "yes", "yes", "yes", "no"]
    roc = tables["roc"]
    assert list(roc.columns) == ["fpr", "tpr"]
    assert (roc.iloc[0].tolist(), roc.iloc[-1].tolist()) == ([0.0, 0.0], [1.0, 1.0])
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    pr = tables["precision_recall"]
    assert list(pr.columns) == ["recall", "precision"]
    assert pr["recall"].between(0, 1).all() and pr["precision"].between(0, 1).all()
    assert pr["recall"].iloc[0] == 1.0 and pr["precision"].iloc[0] == pytest.approx(2 / 5)  # everything positive


def test_multiclass_curve_tables_have_only_the_confusion_labels() -> None:
    tables = curve_tables("multiclass", MULTI_Y, MULTI_P, ["cat", "dog", "eel"])
    assert set(tables) == {"confusion"}
    assert tables["confusion"]["actual"].tolist() == ["cat", "dog", "eel", "eel"]
    assert tables["confusion"]["predicted"].tolist() == ["cat", "eel", "eel", "dog"]


def test_regression_curve_table_holds_actual_and_predicted() -> None:
    y, output = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.5])
    tables = curve_tables("regression", y, output, [])
    assert set(tables) == {"predictions"}
    assert tables["predictions"]["actual"].tolist() == y.tolist()
    assert tables["predictions"]["predicted"].tolist() == output.tolist()


def test_binary_plots_are_figures_with_labelled_axes() -> None:
    figures = plot_tables(curve_tables("binary", BINARY_Y, BINARY_P, ["no", "yes"]))
    assert set(figures) == {"confusion_matrix", "roc_curve", "precision_recall_curve"}
    assert all(isinstance(f, Figure) for f in figures.values())
    roc = figures["roc_curve"].axes[0]
    assert (roc.get_xlabel(), roc.get_ylabel()) == ("fpr", "tpr")
    matrix = figures["confusion_matrix"].axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["no", "yes"]
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["no", "yes"]
    assert [t.get_text() for t in matrix.texts] == ["1", "2", "1", "1"]  # actual no: 1 no, 2 yes; yes: 1, 1


def test_regression_and_multiclass_plots() -> None:
    regression = plot_tables(curve_tables("regression", np.array([1.0, 2.0]), np.array([1.0, 3.0]), []))
    assert set(regression) == {"predictions_curve"}
    multiclass = plot_tables(curve_tables("multiclass", MULTI_Y, MULTI_P, ["cat", "dog", "eel"]))
    assert set(multiclass) == {"confusion_matrix"}
    assert [t.get_text() for t in multiclass["confusion_matrix"].axes[0].get_xticklabels()] == ["cat", "dog", "eel"]


def test_confusion_matrix_shows_a_class_that_is_never_predicted() -> None:
    tables = curve_tables("binary", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), ["no", "yes"])
    matrix = plot_tables(tables)["confusion_matrix"].axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["no", "yes"]
