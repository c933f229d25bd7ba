"""Test metrics, curve data and plots. Metric keys are stable and slash-free."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from modelyard.config import Problem

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LOWER_IS_BETTER = ("loss", "rmse", "mae", "mape")


def lower_is_better(metric: str) -> bool:
    """Whether a metric name (e.g. val_loss, test_rmse) improves downwards."""
    return metric.endswith(LOWER_IS_BETTER)


REGRESSION_METRICS = ("rmse", "mae", "mape", "r2")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc")


def metric_names(problem: Problem) -> tuple[str, ...]:
    """The metrics `compute_metrics` reports for a problem type (without prefix)."""
    return REGRESSION_METRICS if problem == "regression" else CLASSIFICATION_METRICS


THRESHOLD_METRICS = ("accuracy", "f1")  # binary tasks choose their threshold on validation for these


def predicted_classes(problem: Problem, output: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class indices from probabilities: the positive class from `threshold` on (binary), or
    the most probable class."""
    return (output >= threshold).astype(int) if problem == "binary" else output.argmax(axis=1)


def best_threshold(y_true: np.ndarray, probability: np.ndarray, name: str) -> float:
    """The binary decision threshold that maximises `name` (accuracy or f1) on these rows:
    0.5 or a midpoint between two neighbouring distinct probabilities, so it does not sit
    on a row of its own. Ties go to the threshold nearest 0.5. One sort and cumulative
    counts score every candidate, so a large validation set costs O(n log n)."""
    probability = np.asarray(probability, dtype=float)
    positive = np.asarray(y_true) == 1
    values = np.unique(probability)
    candidates = np.unique(np.concatenate([[0.5], (values[1:] + values[:-1]) / 2]))
    order = np.sort(probability)
    # rows predicted positive at each candidate: those with probability >= it
    n_negative_predicted = np.searchsorted(order, candidates, side="left")
    positives_sorted = np.concatenate([[0], np.cumsum(positive[np.argsort(probability, kind="stable")])])
    false_negative = positives_sorted[n_negative_predicted]
    true_positive = positive.sum() - false_negative
    false_positive = (len(probability) - n_negative_predicted) - true_positive
    if name == "accuracy":
        true_negative = n_negative_predicted - false_negative
        scores = (true_positive + true_negative) / len(probability)
    else:
        scores = 2 * true_positive / np.maximum(2 * true_positive + false_positive + false_negative, 1)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def metric_value(problem: Problem, name: str, y_true: np.ndarray, output: np.ndarray, threshold: float = 0.5) -> float:
    """One metric (a name from `metric_names`, no prefix); NaN for ROC-AUC when a class is
    absent. `threshold`: a binary model's decision threshold (accuracy, precision, recall, F1)."""
    if problem == "regression":
        if name == "rmse":
            return float(np.sqrt(skm.mean_squared_error(y_true, output)))
        if name == "mape":  # percent, over the rows whose true value is not 0
            nonzero = np.asarray(y_true) != 0
            errors = np.abs((np.asarray(output) - y_true)[nonzero] / np.asarray(y_true)[nonzero])
            return float(100 * errors.mean()) if nonzero.any() else float("nan")
        return float(skm.mean_absolute_error(y_true, output) if name == "mae" else skm.r2_score(y_true, output))
    binary = problem == "binary"
    n_classes = 2 if binary else output.shape[1]
    if name == "log_loss":
        return float(skm.log_loss(y_true, output, labels=list(range(n_classes))))
    if name == "roc_auc":
        if len(np.unique(y_true)) < n_classes:
            return float("nan")
        return float(skm.roc_auc_score(y_true, output, multi_class="ovr"))
    predicted = predicted_classes(problem, output, threshold)
    if name == "accuracy":
        return float(np.mean(predicted == y_true))
    score = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
    return float(score(y_true, predicted, average="binary" if binary else "macro", zero_division=0))


def compute_metrics(
    problem: Problem, y_true: np.ndarray, output: np.ndarray, prefix: str = "test_", threshold: float = 0.5
) -> dict[str, float]:
    """Classification: accuracy, precision, recall, F1, ROC-AUC, log loss; regression: RMSE,
    MAE, MAPE (percent), R2.

    `y_true` holds class indices (classification) or values; `output` holds the model's
    probabilities (positive class for binary, one column per class for multiclass) or values.
    ROC-AUC is left out when the rows do not hold every class.
    """
    values = {name: metric_value(problem, name, y_true, output, threshold) for name in metric_names(problem)}
    return {f"{prefix}{k}": v for k, v in values.items() if not np.isnan(v)}


def curve_tables(
    problem: Problem, y_true: np.ndarray, output: np.ndarray, class_labels: list[str], threshold: float = 0.5
) -> dict[str, pd.DataFrame]:
    """Data for DVC plots: per-row actual/predicted labels, and ROC and PR curves (binary)."""
    if problem == "regression":
        return {"predictions": pd.DataFrame({"actual": y_true, "predicted": output})}
    predicted = predicted_classes(problem, output, threshold)

    # Categoricals keep every class in the confusion matrix, also one never predicted.
    def as_labels(codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=class_labels)

    tables = {"confusion": pd.DataFrame({"actual": as_labels(y_true), "predicted": as_labels(predicted)})}
    if problem == "binary":
        fpr, tpr, _ = skm.roc_curve(y_true, output)
        precision, recall, _ = skm.precision_recall_curve(y_true, output)
        tables["roc"] = pd.DataFrame({"fpr": fpr, "tpr": tpr})
        tables["precision_recall"] = pd.DataFrame({"recall": recall, "precision": precision})
    return tables


def plot_tables(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Figures of the curve tables, for the MLflow UI."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    if "confusion" in tables:
        frame = tables["confusion"]
        matrix = pd.crosstab(frame["actual"], frame["predicted"], dropna=False)
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        image = ax.imshow(matrix.to_numpy(), cmap="Blues")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45)
        ax.set_yticks(range(matrix.shape[0]), matrix.index)
        for (i, j), count in np.ndenumerate(matrix.to_numpy()):
            ax.text(j, i, str(count), ha="center", va="center")
        ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
        fig.colorbar(image)
        figures["confusion_matrix"] = fig
    for name, (x, y) in {
        "roc": ("fpr", "tpr"),
        "precision_recall": ("recall", "precision"),
        "predictions": ("actual", "predicted"),
    }.items():
        if name in tables:
            fig = Figure(figsize=(5, 4))
            ax = fig.subplots()
            style = {"s": 4} if name == "predictions" else {}
            (ax.scatter if name == "predictions" else ax.plot)(tables[name][x], tables[name][y], **style)
            ax.set(xlabel=x, ylabel=y, title=f"{name.replace('_', ' ')} (test)")
            figures[f"{name}_curve"] = fig
    return figures
