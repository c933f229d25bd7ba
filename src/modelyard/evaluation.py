"""Test metrics, curve data and plots. Metric keys are stable and slash-free."""

from __future__ import annotations

from collections.abc import Sequence
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


# The plot files the evaluate stage writes and the columns of each, which dvc.yaml's
# `plots:` entries draw. Every task writes every file: DVC fails a stage whose declared
# output is missing, and dvc.yaml cannot declare outputs by problem type, so a plot that a
# task's problem has no use for (ROC for a regression) holds only its header row, which
# DVC draws nothing from.
PLOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "confusion": ("actual", "predicted"),
    "roc": ("fpr", "tpr"),
    "precision_recall": ("recall", "precision"),
    "predictions": ("actual", "predicted"),
    "forecast": ("time", "target", "actual", "predicted", "naive"),
}


def curve_tables(
    problem: Problem, y_true: np.ndarray, output: np.ndarray, class_labels: list[str], threshold: float = 0.5
) -> dict[str, pd.DataFrame]:
    """Plot data from test outputs: per-sample actual and predicted labels (classification)
    or values (regression), and for a binary task the ROC and precision-recall curves, each
    in the order it is drawn (x ascending)."""
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
        # scikit-learn lists recall from 1 down to 0; a plotted line runs in the order of x
        tables["precision_recall"] = pd.DataFrame({"recall": recall[::-1], "precision": precision[::-1]})
    return tables


def forecast_table(
    test: pd.DataFrame, forecasts: pd.DataFrame, naive: pd.DataFrame, time: str, targets: Sequence[str]
) -> pd.DataFrame:
    """Each observed step of the `test` rows with its one-step-ahead forecasts: time, target,
    actual, predicted (the model's `forecasts`) and naive (the seasonal-naive baseline's),
    in time order per target. `forecasts` and `naive` hold rows of time, step and one
    column per target, as a series preprocessor's `forecast` makes them."""

    def one_step(frame: pd.DataFrame, target: str, name: str) -> pd.DataFrame:
        ahead = frame.loc[frame["step"] == 1, ["time", target]].rename(columns={target: name})
        return ahead.astype({"time": "datetime64[ns]"})

    parts = []
    for target in targets:
        observed = test[[time, target]].rename(columns={time: "time", target: "actual"}).dropna(subset=["actual"])
        table = observed.astype({"time": "datetime64[ns]"})
        for name, frame in (("predicted", forecasts), ("naive", naive)):
            table = table.merge(one_step(frame, target, name), on="time")
        parts.append(table.sort_values("time", kind="stable").assign(target=target))
    columns = list(PLOT_COLUMNS["forecast"])
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def plot_files(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every plot file of PLOT_COLUMNS, each with its columns in that order: the task's
    `tables`, and no rows for a plot its problem has no use for."""
    return {
        name: tables.get(name, pd.DataFrame(columns=list(columns)))[list(columns)]
        for name, columns in PLOT_COLUMNS.items()
    }


def training_curves(history: list[dict[str, float]]) -> pd.DataFrame:
    """Per-epoch metrics as a table: epoch (from 1), train_loss, val_loss and the validation
    metrics, as `training.fit` records them."""
    table = pd.DataFrame(history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def plot_tables(tables: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """Figures of the plot tables for the MLflow UI, drawn with scikit-learn's displays: the
    confusion matrix, the ROC curve with its AUC and the chance line, the precision-recall
    curve with its average precision and the chance level, actual against predicted with the
    y = x line, and a forecast over time beside the seasonal-naive baseline. A table without
    rows gets no figure."""
    import matplotlib

    matplotlib.use("Agg")
    drawers = {
        "confusion": ("confusion_matrix", _plot_confusion),
        "roc": ("roc_curve", _plot_roc),
        "precision_recall": ("precision_recall_curve", _plot_precision_recall),
        "predictions": ("predictions_curve", _plot_predictions),
        "forecast": ("forecast", _plot_forecast),
    }
    return {
        figure_name: draw(tables[name])
        for name, (figure_name, draw) in drawers.items()
        if name in tables and len(tables[name])
    }


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    # Constrained layout sizes the axes around their tick labels, titles and colorbar.
    return Figure(figsize=(width, height), layout="constrained")


def _plot_confusion(table: pd.DataFrame) -> Figure:
    actual, predicted = table["actual"], table["predicted"]
    if isinstance(actual.dtype, pd.CategoricalDtype):
        labels = list(actual.cat.categories)
    else:
        labels = sorted(set(actual) | set(predicted))
    matrix = skm.confusion_matrix(np.asarray(actual), np.asarray(predicted), labels=labels)
    names = [str(label) for label in labels]
    rotate = sum(len(name) for name in names) > 24  # would run into each other side by side
    side = 0.45 * len(names) + (2.5 if rotate else 1.5)
    longest = max(len(name) for name in names)
    fig = _figure(max(4.5, side + 0.08 * longest + 1.2), max(3.6, side + (0.08 * longest if rotate else 0.3)))
    ax = fig.subplots()
    skm.ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, cmap="Blues", values_format="d")
    if rotate:
        for label in ax.get_xticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")
    ax.set_title("Confusion matrix (test)")
    return fig


def _plot_roc(table: pd.DataFrame) -> Figure:
    fpr, tpr = table["fpr"].to_numpy(float), table["tpr"].to_numpy(float)
    fig = _figure(5, 4.6)
    ax = fig.subplots()
    display = skm.RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=skm.auc(fpr, tpr), name="model")
    display.plot(ax=ax, plot_chance_level=True)
    ax.set_title("ROC curve (test)")
    return fig


def _plot_precision_recall(table: pd.DataFrame) -> Figure:
    # back in scikit-learn's order (recall falling), which its display draws as steps
    recall, precision = table["recall"].to_numpy(float)[::-1], table["precision"].to_numpy(float)[::-1]
    # scikit-learn's average precision: each recall step weighted by the precision it ends at
    average_precision = float(-np.sum(np.diff(recall) * precision[:-1]))
    fig = _figure(5, 4.6)
    ax = fig.subplots()
    display = skm.PrecisionRecallDisplay(
        precision,
        recall,
        average_precision=average_precision,
        name="model",
        prevalence_pos_label=precision[0],  # at recall 1 every sample is called positive
    )
    display.plot(ax=ax, plot_chance_level=True)
    ax.set_title("Precision-recall curve (test)")
    return fig


def _plot_predictions(table: pd.DataFrame) -> Figure:
    from matplotlib.ticker import AutoLocator

    fig = _figure(5, 4.6)
    ax = fig.subplots()
    skm.PredictionErrorDisplay.from_predictions(
        table["actual"].to_numpy(float),
        table["predicted"].to_numpy(float),
        kind="actual_vs_predicted",
        subsample=None,
        ax=ax,
        scatter_kwargs={"alpha": 0.4, "s": 8, "label": "test samples"},
        line_kwargs={"label": "y = x"},
    )
    # the display puts its ticks at the data's extremes (303.48, 327.76, ...)
    ax.xaxis.set_major_locator(AutoLocator())
    ax.yaxis.set_major_locator(AutoLocator())
    ax.legend(loc="upper left")
    ax.set_title("Actual against predicted (test)")
    return fig


def _plot_forecast(table: pd.DataFrame) -> Figure:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    targets = list(dict.fromkeys(table["target"]))
    fig = _figure(9, 0.4 + 3.2 * len(targets))
    for ax, target in zip(fig.subplots(len(targets), 1, squeeze=False)[:, 0], targets, strict=True):
        rows = table[table["target"] == target]
        time = pd.to_datetime(rows["time"]).to_numpy()
        ax.plot(time, rows["actual"], color="black", linewidth=1.4, label="actual")
        ax.plot(time, rows["predicted"], color="tab:blue", linewidth=1, label="predicted (one step ahead)")
        ax.plot(time, rows["naive"], color="tab:orange", linewidth=1, linestyle="--", label="seasonal naive")
        locator = AutoDateLocator()
        ax.xaxis.set(major_locator=locator, major_formatter=ConciseDateFormatter(locator))
        ax.set(ylabel=str(target), title=f"{target}: forecast on the test period")
        ax.legend(loc="best", fontsize="small")
    return fig
