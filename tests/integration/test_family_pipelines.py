"""One tiny end-to-end run per model family through the real stages (Great Expectations,
Optuna journal storage, an MLflow store): a CNN on an image folder, an LSTM forecaster on
a weekly series and an LSTM text classifier, each served from the registry on raw input.
Bad input for each family stops at the stage that can tell, with a readable error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from modelyard.cli import main
from modelyard.config import load_settings
from modelyard.errors import ModelyardError
from modelyard.stages import STAGES, Context
from tests.conftest import REPO

SHAPES = ("bar", "column", "cross")
QUICK = {
    "tune": {"n_trials": 2, "max_epochs": 3, "pruner": "none"},
    "train": {"max_epochs": 25, "patience": 25},
    "registry": {"n_bootstrap": 100},
}


def shape_image(kind: str, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grayscale image: a horizontal bar, a vertical bar or a cross, at a random place."""
    image = rng.integers(0, 40, (8, 8)).astype(np.uint8)
    row, column = rng.integers(1, 7, 2)
    if kind in ("bar", "cross"):
        image[row, :] = 255
    if kind in ("column", "cross"):
        image[:, column] = 255
    return image


def write_image_folder(folder: Path, per_class: int = 40, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (folder / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(shape_image(kind, rng)).save(folder / kind / f"{i}.png")


def weekly_series(n_weeks: int = 320, seed: int = 0) -> pd.DataFrame:
    """A rising, seasonal weekly series with a few missing weeks (rows with no value)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_weeks)
    values = 300 + 0.05 * t + 3 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 0.2, n_weeks)
    frame = pd.DataFrame({"week": pd.date_range("2000-01-01", periods=n_weeks, freq="W-SAT"), "level": values})
    frame.loc[[i for i in (30, 31, 200) if i < n_weeks], "level"] = np.nan
    return frame


WORDS = {"pos": ["great", "lovely", "superb", "fun", "good"], "neg": ["awful", "boring", "bad", "dull", "poor"]}


def reviews(n_rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "was", "plot", "and", "really", "a", "very"]
    labels = rng.choice(["pos", "neg"], n_rows)
    texts = [
        " ".join(rng.choice(filler, 4).tolist() + rng.choice(WORDS[label], 2).tolist() + ["!"]) for label in labels
    ]
    return pd.DataFrame({"review": texts, "sentiment": labels})


def trends(n_sequences: int = 120, seed: int = 0) -> pd.DataFrame:
    """Long-format sequences of 5 to 15 steps: `up` when the first feature rises, `down`
    when it falls; the second feature is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for sequence in range(n_sequences):
        label = rng.choice(["up", "down"])
        n_steps = int(rng.integers(5, 16))
        slope = 1.0 if label == "up" else -1.0
        for step in range(n_steps):
            rows.append((f"s{sequence:03d}", step, slope * step + rng.normal(0, 0.5), rng.normal(), label))
    return pd.DataFrame(rows, columns=["seq", "t", "signal", "noise", "trend"])


TASKS = {
    "shapes": {
        "source": {"path": "data/sources/shapes"},
        "target": "label",
        "problem": "multiclass",
        "family": "cnn",
        "schema": {
            "rows": {"min": 30},
            "columns": {"label": {"type": "category", "categories": list(SHAPES)}},
            "image": {"height": 8, "width": 8, "channels": 1},
        },
        "model": {"n_blocks": 1, "filters": 8, "dense_units": 16, "batch_size": 16, "lr": 0.01, "max_shift": 1},
        "tune": {**QUICK["tune"], "search_space": {"lr": {"choices": [0.01]}}},
        "train": QUICK["train"],
        "registry": {"metric": "accuracy"},
    },
    "weekly": {
        "source": {"path": "data/sources/weekly.csv"},
        "target": "level",
        "problem": "regression",
        "family": "lstm",
        "schema": {
            "rows": {"min": 100},
            "columns": {"week": {"type": "datetime"}, "level": {"type": "number", "max_null_fraction": 0.05}},
            "time": "week",
        },
        "features": {"series": {"window": 26, "horizon": 2, "season": 52}},
        "model": {"hidden_size": 16, "batch_size": 32, "lr": 0.01},
        "tune": {**QUICK["tune"], "search_space": {"lr": {"choices": [0.01]}}},
        "train": QUICK["train"],
        "registry": {**QUICK["registry"], "metric": "rmse"},
    },
    "trends": {
        "source": {"path": "data/sources/trends.csv"},
        "target": "trend",
        "problem": "binary",
        "positive_label": "up",
        "family": "lstm",
        "schema": {
            "rows": {"min": 100},
            "columns": {
                "seq": {"type": "category"},
                "t": {"type": "integer", "min": 0},
                "signal": {"type": "number"},
                "noise": {"type": "number"},
                "trend": {"type": "category", "categories": ["down", "up"]},
            },
        },
        "features": {"sequence": {"id": "seq", "step": "t"}},
        "model": {"hidden_size": 16, "batch_size": 16, "lr": 0.01},
        "tune": {**QUICK["tune"], "search_space": {"lr": {"choices": [0.01]}}},
        "train": QUICK["train"],
        "registry": {**QUICK["registry"], "metric": "accuracy"},
    },
    "reviews": {
        "source": {"path": "data/sources/reviews.csv"},
        "target": "sentiment",
        "problem": "binary",
        "positive_label": "pos",
        "family": "lstm",
        "schema": {
            "rows": {"min": 50},
            "columns": {"review": {"type": "text"}, "sentiment": {"type": "category", "categories": ["neg", "pos"]}},
        },
        "features": {"text": {"column": "review", "max_length": 12}},
        "model": {"hidden_size": 16, "embed_dim": 8, "batch_size": 32, "lr": 0.01},
        "tune": {**QUICK["tune"], "search_space": {"lr": {"choices": [0.01]}}},
        "train": QUICK["train"],
        "registry": {**QUICK["registry"], "metric": "accuracy"},
    },
}


def make_project(root: Path, task: str, device: str = "cpu") -> Path:
    sources = root / "data" / "sources"
    sources.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "device": device, "tasks": {task: TASKS[task]}}))
    write_image_folder(sources / "shapes")
    weekly_series().to_csv(sources / "weekly.csv", index=False)
    reviews().to_csv(sources / "reviews.csv", index=False)
    trends().to_csv(sources / "trends.csv", index=False)
    return root


def run(root: Path, task: str, *stages: str) -> Context:
    ctx = Context(root, load_settings(root / "params.yaml"), task)
    for stage in stages or tuple(STAGES):
        STAGES[stage](ctx)
    return ctx


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cnn_on_an_image_folder_end_to_end(tmp_path: Path, mlflow_uri: str) -> None:
    ctx = run(make_project(tmp_path / "project", "shapes"), "shapes")
    validation = json.loads(ctx.paths.validation_summary.read_text())
    assert "class counts: bar 40, column 40, cross 40" in validation["notes"]
    metrics = json.loads(ctx.paths.metrics.read_text())
    assert metrics["test_accuracy"] >= 0.9  # bars, columns and crosses are easy to tell apart
    model = mlflow.pyfunc.load_model("models:/shapes@champion")
    rng = np.random.default_rng(7)
    images = np.stack([shape_image(kind, rng) for kind in SHAPES * 3]).astype(np.float32)  # raw 0..255 pixels
    predicted = model.predict(images[..., None])  # (N, H, W, C), the registered signature
    assert (predicted["label"].to_numpy() == np.array(SHAPES * 3)).mean() >= 0.75
    assert {f"prob_{kind}" for kind in SHAPES} <= set(predicted.columns)
    np.save(tmp_path / "images.npy", images.astype(np.uint8))  # (N, H, W): the CLI adds the channel
    out = tmp_path / "scored.csv"
    args = ["--input", str(tmp_path / "images.npy"), "--output", str(out)]
    assert main(["predict", "--task", "shapes", "--params", str(ctx.root / "params.yaml"), *args]) == 0
    assert pd.read_csv(out)["label"].tolist() == predicted["label"].tolist()  # one row per image


def test_lstm_forecaster_beats_the_seasonal_naive_baseline(tmp_path: Path, mlflow_uri: str) -> None:
    ctx = run(make_project(tmp_path / "project", "weekly"), "weekly")
    validation = json.loads(ctx.paths.validation_summary.read_text())
    assert "level: 3 missing value(s) (0.9%)" in validation["notes"]
    metrics = json.loads(ctx.paths.metrics.read_text())
    assert {"test_rmse", "test_mae", "test_mape", "test_naive_rmse", "test_rmse_vs_naive"} <= set(metrics)
    assert metrics["test_rmse"] < metrics["test_naive_rmse"]
    model = mlflow.pyfunc.load_model("models:/weekly@champion")
    history = weekly_series().tail(30)
    forecast = model.predict(history)
    future = forecast[forecast["origin"] == history["week"].max()]
    assert future["step"].tolist() == [1, 2]
    assert future["time"].tolist() == [history["week"].max() + pd.Timedelta(weeks=k) for k in (1, 2)]
    assert future["level"].between(290, 330).all()
    history.to_csv(tmp_path / "history.csv", index=False)  # dates as text, read back by the schema
    out = tmp_path / "forecast.csv"
    args = ["--input", str(tmp_path / "history.csv"), "--output", str(out)]
    assert main(["predict", "--task", "weekly", "--params", str(ctx.root / "params.yaml"), *args]) == 0
    written = pd.read_csv(out)
    assert len(written) == (30 - 26 + 1) * 2 and list(written.columns) == ["origin", "time", "step", "level"]
    assert written["level"].tolist() == pytest.approx(forecast["level"].tolist())


def test_lstm_text_classifier_end_to_end(tmp_path: Path, mlflow_uri: str) -> None:
    ctx = run(make_project(tmp_path / "project", "reviews"), "reviews")
    metrics = json.loads(ctx.paths.metrics.read_text())
    assert metrics["test_accuracy"] >= 0.9
    model = mlflow.pyfunc.load_model("models:/reviews@champion")
    raw = pd.DataFrame({"review": ["a superb and lovely film !", "boring , dull and awful", "zzz unseen words"]})
    predicted = model.predict(raw)
    assert predicted["label"].tolist()[:2] == ["pos", "neg"]
    assert predicted["probability"].between(0, 1).all()


def test_lstm_sequence_classifier_on_long_format_rows(tmp_path: Path, mlflow_uri: str) -> None:
    ctx = run(make_project(tmp_path / "project", "trends"), "trends")
    test_ids = set(ctx.read_split("test")["seq"])
    assert test_ids.isdisjoint(ctx.read_split("train")["seq"])  # a sequence never straddles splits
    metrics = json.loads(ctx.paths.metrics.read_text())
    assert metrics["test_accuracy"] >= 0.9
    model = mlflow.pyfunc.load_model("models:/trends@champion")
    rows = trends(n_sequences=6, seed=9)
    predicted = model.predict(rows.drop(columns=["trend"]))
    expected = rows.groupby("seq")["trend"].first()
    assert predicted["seq"].tolist() == expected.index.tolist()  # one prediction per sequence
    assert (predicted["label"].to_numpy() == expected.to_numpy()).mean() >= 5 / 6


def test_sequence_arrays_become_long_format_rows(tmp_path: Path, mlflow_uri: str) -> None:
    root = make_project(tmp_path / "project", "trends")
    x = np.random.default_rng(0).normal(size=(4, 6, 2))
    np.savez(root / "data" / "sources" / "trends.npz", x=x, y=np.array(["up", "down", "up", "down"]))
    params = yaml.safe_load((root / "params.yaml").read_text())
    task = params["tasks"]["trends"]
    task["source"] = {"path": "data/sources/trends.npz"}
    task["schema"]["rows"]["min"] = 10
    task["schema"]["columns"] = {
        "x0": {"type": "number"},
        "x1": {"type": "number"},
        "trend": {"type": "category", "categories": ["down", "up"]},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = run(root, "trends", "ingest")
    raw = pd.read_parquet(ctx.paths.raw)
    assert list(raw.columns) == ["seq", "t", "x0", "x1", "trend"] and len(raw) == 24
    assert raw.loc[raw["seq"] == 2, "x1"].tolist() == pytest.approx(x[2, :, 1].tolist())


def test_a_non_image_file_in_the_folder_is_named(tmp_path: Path, mlflow_uri: str) -> None:
    root = make_project(tmp_path / "project", "shapes")
    (root / "data" / "sources" / "shapes" / "bar" / "notes.txt").write_text("not an image")
    with pytest.raises(ModelyardError, match=r"notes\.txt"):
        run(root, "shapes", "ingest")


def test_images_of_another_size_fail_validation(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    root = make_project(tmp_path / "project", "shapes")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"]["shapes"]["schema"]["image"]["height"] = 28
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["ingest", "--params", str(root / "params.yaml")]) == 0
    assert main(["validate", "--params", str(root / "params.yaml")]) == 3
    assert "height: 120 value(s) (100%) outside the allowed range [28, 28]" in capsys.readouterr().err


def test_arrays_whose_counts_disagree_are_refused(tmp_path: Path, mlflow_uri: str) -> None:
    root = make_project(tmp_path / "project", "shapes")
    np.savez(root / "data" / "sources" / "shapes.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(9, np.int64))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"]["shapes"]["source"] = {"path": "data/sources/shapes.npz"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ModelyardError, match="10 images but 9 labels"):
        run(root, "shapes", "ingest")


def test_a_series_too_short_for_the_window_is_a_clear_error(tmp_path: Path, mlflow_uri: str) -> None:
    root = make_project(tmp_path / "project", "weekly")
    weekly_series(n_weeks=40).to_csv(root / "data" / "sources" / "weekly.csv", index=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"]["weekly"]["schema"]["rows"]["min"] = 10
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ModelyardError, match="the training period has 26 time steps; window 26 \\+ horizon 2"):
        run(root, "weekly", "ingest", "validate", "split", "featurize")


def test_blank_texts_and_missing_labels_fail_validation(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    root = make_project(tmp_path / "project", "reviews")
    frame = reviews()
    frame.loc[:4, "review"] = "   "
    frame.loc[10:12, "sentiment"] = None
    frame.to_csv(root / "data" / "sources" / "reviews.csv", index=False)
    assert main(["ingest", "--params", str(root / "params.yaml")]) == 0
    assert main(["validate", "--params", str(root / "params.yaml")]) == 3
    err = capsys.readouterr().err
    assert "review: 5 value(s) (2.5%) are empty or blank texts" in err
    assert "sentiment: the target has 3 null value(s)" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("task", list(TASKS))
def test_each_family_trains_on_cuda(task: str, tmp_path: Path, mlflow_uri: str) -> None:
    ctx = run(make_project(tmp_path / "project", task, device="cuda"), task)
    assert json.loads(ctx.paths.metrics.read_text())
