"""Test metrics, curve tables and plots, checked against numbers worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc_render.vega_templates import TEMPLATES
from matplotlib.figure import Figure
from sklearn import metrics as skm

from modelyard.evaluation import (
    PLOT_COLUMNS,
    compute_metrics,
    curve_tables,
    forecast_table,
    lower_is_better,
    plot_files,
    plot_tables,
    training_curves,
)
from tests.conftest import REPO

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
    # in the order a line is drawn (recall rising), ending with everything called positive
    assert pr["recall"].is_monotonic_increasing
    assert pr["recall"].iloc[-1] == 1.0 and pr["precision"].iloc[-1] == pytest.approx(2 / 5)


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


def forecast_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Three weeks of test rows (the second unobserved), and two-step forecasts of the model
    and of the baseline from each week before them."""
    weeks = pd.date_range("2001-01-06", periods=4, freq="7D")
    test = pd.DataFrame({"date": weeks[1:], "co2": [10.0, np.nan, 12.0]})

    def forecasts(offset: float) -> pd.DataFrame:
        rows = [(origin, origin + step * pd.Timedelta(days=7), step) for origin in weeks[:3] for step in (1, 2)]
        frame = pd.DataFrame(rows, columns=["origin", "time", "step"])
        return frame.assign(co2=[offset + 10 * step + i for i, step in enumerate(frame["step"])])

    return test, forecasts(0.0), forecasts(100.0)


def test_forecast_table_holds_actual_and_both_one_step_forecasts_over_time() -> None:
    test, model, naive = forecast_frames()
    table = forecast_table(test, model, naive, "date", ["co2"])
    assert list(table.columns) == list(PLOT_COLUMNS["forecast"])
    assert table["time"].tolist() == [pd.Timestamp("2001-01-13"), pd.Timestamp("2001-01-27")]  # week 2 unobserved
    assert table["target"].tolist() == ["co2", "co2"]
    assert table["actual"].tolist() == [10.0, 12.0]
    # the one-step forecasts made the week before: rows 0 and 4 of each forecast frame
    assert table["predicted"].tolist() == [10.0, 14.0]
    assert table["naive"].tolist() == [110.0, 114.0]


def test_plot_files_hold_every_plot_dvc_yaml_declares_with_the_columns_it_draws() -> None:
    """dvc.yaml's evaluate plots name these files and columns; a plot the problem has no
    use for is written with its header row only (DVC draws nothing from it)."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["do"]
    declared = {next(iter(entry)): next(iter(entry.values())) for entry in stage["plots"]}
    assert {Path(path).stem for path in declared} == set(PLOT_COLUMNS)
    for path, props in declared.items():
        columns = set(PLOT_COLUMNS[Path(path).stem])
        assert {props["x"], props["y"]} <= columns, path
        template = REPO / ".dvc" / "plots" / f"{props['template']}.json"
        if template.is_file():  # one of ours: the columns it folds into lines are there too
            folded = [step["fold"] for step in json.loads(template.read_text()).get("transform", []) if "fold" in step]
            assert all(set(fold) <= columns for fold in folded), path
        else:
            assert props["template"] in {t.DEFAULT_NAME for t in TEMPLATES}, path
    test, model, naive = forecast_frames()
    cases = {
        "binary": (curve_tables("binary", BINARY_Y, BINARY_P, ["no", "yes"]), {"confusion", "roc", "precision_recall"}),
        "multiclass": (curve_tables("multiclass", MULTI_Y, MULTI_P, ["a", "b", "c"]), {"confusion"}),
        "regression": (curve_tables("regression", np.array([1.0]), np.array([2.0]), []), {"predictions"}),
        "series": (
            {"forecast": forecast_table(test, model, naive, "date", ["co2"])}
            | curve_tables("regression", np.array([1.0]), np.array([2.0]), []),
            {"predictions", "forecast"},
        ),
    }
    for problem, (tables, drawn) in cases.items():
        files = plot_files(tables)
        assert set(files) == set(PLOT_COLUMNS), problem
        assert {name for name, table in files.items() if len(table)} == drawn, problem
        for name, table in files.items():
            assert tuple(table.columns) == PLOT_COLUMNS[name], (problem, name)


def test_training_curves_number_epochs_from_one() -> None:
    history = [
        {"train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.5},
        {"train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.6},
    ]
    table = training_curves(history)
    assert list(table.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy"]
    assert table["epoch"].tolist() == [1, 2]
    assert table["val_loss"].tolist() == [1.0, 0.7]
    learning_curve = json.loads((REPO / ".dvc" / "plots" / "learning_curve.json").read_text())
    (folded,) = [step["fold"] for step in learning_curve["transform"] if "fold" in step]
    assert set(folded) <= set(table.columns)  # the columns the DVC plot draws


def legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def assert_nothing_clipped(figure: Figure) -> None:
    """Every axes with all it draws (tick labels, axis labels, title, legend) lies inside the image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    frame = figure.bbox
    for ax in figure.axes:
        box = ax.get_tightbbox(canvas.get_renderer())
        inside = frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
        assert inside, f"{ax.get_title() or ax.get_label()}: {box} outside {frame}"


def test_binary_plots_show_auc_average_precision_and_chance_lines() -> None:
    figures = plot_tables(curve_tables("binary", BINARY_Y, BINARY_P, ["no", "yes"]))
    assert set(figures) == {"confusion_matrix", "roc_curve", "precision_recall_curve"}
    assert all(isinstance(f, Figure) for f in figures.values())
    roc = figures["roc_curve"].axes[0]
    assert legend(roc) == ["model (AUC = 0.67)", "Chance level (AUC = 0.5)"]  # 4 of 6 pairs ranked right
    assert (roc.get_xlabel(), roc.get_ylabel()) == ("False Positive Rate", "True Positive Rate")
    pr = figures["precision_recall_curve"].axes[0]
    expected = f"model (AP = {skm.average_precision_score(BINARY_Y, BINARY_P):.2f})"
    assert legend(pr) == [expected, "Chance level (AP = 0.40)"]  # 2 positives of 5
    matrix = figures["confusion_matrix"].axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["no", "yes"]
    assert [t.get_text() for t in matrix.get_yticklabels()] == ["no", "yes"]
    assert [t.get_text() for t in matrix.texts] == ["1", "2", "1", "1"]  # actual no: 1 no, 2 yes; yes: 1, 1
    for figure in figures.values():
        assert_nothing_clipped(figure)


def test_confusion_matrix_with_long_class_names_rotates_them_and_clips_nothing() -> None:
    names = ["Married-civ-spouse", "Married-spouse-absent", "Never-married", "Separated", "Widowed"]
    y = np.arange(10) % 5
    figure = plot_tables(curve_tables("multiclass", y, np.eye(5)[y], names))["confusion_matrix"]
    matrix = figure.axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == names
    assert all(t.get_rotation() == 45 for t in matrix.get_xticklabels())
    assert_nothing_clipped(figure)


def test_regression_plot_draws_the_identity_line() -> None:
    figures = plot_tables(curve_tables("regression", np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 3.5]), []))
    assert set(figures) == {"predictions_curve"}
    ax = figures["predictions_curve"].axes[0]
    (line,) = [line for line in ax.lines if line.get_label() == "y = x"]
    assert np.allclose(line.get_xdata(), line.get_ydata())
    assert_nothing_clipped(figures["predictions_curve"])


def test_forecast_plot_draws_actual_predicted_and_naive_over_time() -> None:
    test, model, naive = forecast_frames()
    figures = plot_tables({"forecast": forecast_table(test, model, naive, "date", ["co2"])})
    ax = figures["forecast"].axes[0]
    assert legend(ax) == ["actual", "predicted (one step ahead)", "seasonal naive"]
    assert [line.get_ydata().tolist() for line in ax.lines] == [[10.0, 12.0], [10.0, 14.0], [110.0, 114.0]]
    assert_nothing_clipped(figures["forecast"])


def test_multiclass_plots_and_empty_tables() -> None:
    multiclass = plot_tables(curve_tables("multiclass", MULTI_Y, MULTI_P, ["cat", "dog", "eel"]))
    assert set(multiclass) == {"confusion_matrix"}
    assert [t.get_text() for t in multiclass["confusion_matrix"].axes[0].get_xticklabels()] == ["cat", "dog", "eel"]
    assert plot_tables(plot_files({})) == {}  # header-only files get no figure


def test_confusion_matrix_shows_a_class_that_is_never_predicted() -> None:
    tables = curve_tables("binary", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), ["no", "yes"])
    matrix = plot_tables(tables)["confusion_matrix"].axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["no", "yes"]
