"""`modelyard add` then every stage, with no edit in between: a user's table to a registered model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.cli import main
from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.conftest import REPO
from tests.integration.test_family_pipelines import (
    SHAPES,
    reviews,
    shape_image,
    trends,
    weekly_series,
    write_image_folder,
)
from tests.integration.test_stages import study_trials
from tests.unit.test_family_data import idx_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def loans(n_rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """A mixed table with gaps, an id column and a learnable binary target."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, n_rows).round(0)
    debt = rng.uniform(0, 1, n_rows).round(3)
    purpose = rng.choice(["car", "home", "study", "travel"], n_rows)
    risky = (debt > 0.6) | ((purpose == "travel") & (income < 20000))
    frame = pd.DataFrame(
        {
            "loan_id": np.arange(n_rows) + 1,
            "income": income,
            "debt_ratio": debt,
            "purpose": purpose,
            "years_employed": rng.integers(0, 30, n_rows),
            "default": np.where(risky, "yes", "no"),
        }
    )
    frame.loc[::9, "income"] = np.nan
    frame.loc[::13, "purpose"] = None
    return frame


def test_an_added_semicolon_table_runs_to_a_registered_model(tmp_path: Path, mlflow_uri: str) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (root / "params.yaml").write_text("seed: 0\ndevice: cpu\ntasks: {}\n")
    source = tmp_path / "loans.csv"
    frame = loans()
    frame.to_csv(source, sep=";", decimal=",", index=False)  # as a European spreadsheet exports it
    assert (
        main(["add", "loans", "--source", str(source), "--target", "default", "--params", str(root / "params.yaml")])
        == 0
    )
    ctx = Context(root, load_settings(root / "params.yaml"), "loans")
    assert "loan_id" not in ctx.task.schema_.columns
    assert ctx.task.source.decimal == "," and ctx.task.schema_.columns["income"].type == "number"
    for stage in STAGES.values():
        stage(ctx)
    registry = json.loads(ctx.paths.registry_decision.read_text())
    assert registry["version"] == 1 and registry["promoted"]
    baseline = study_trials(ctx)[0].params  # the study ran logistic regression first
    assert baseline["n_layers"] == 0 and baseline["numeric_embedding"] == "none" and baseline["dropout"] == 0.0
    test = pd.read_parquet(ctx.paths.split_file("test"))
    majority = test["default"].value_counts(normalize=True).max()
    assert json.loads(ctx.paths.metrics.read_text())["test_accuracy"] > majority + 0.05


def image_folder(folder: Path) -> list[str]:
    write_image_folder(folder, per_class=30)
    return ["--source", str(folder)]


def idx_files(folder: Path) -> list[str]:
    """The same shapes as an IDX images file and its labels file (the MNIST format)."""
    rng = np.random.default_rng(0)
    kinds = [kind for kind in SHAPES for _ in range(30)]
    folder.mkdir()
    (folder / "images-idx3-ubyte").write_bytes(idx_bytes(np.stack([shape_image(k, rng) for k in kinds]), 0x08))
    (folder / "labels-idx1-ubyte").write_bytes(idx_bytes(np.array([SHAPES.index(k) for k in kinds], np.uint8), 0x08))
    return ["--source", str(folder / "images-idx3-ubyte"), "--labels", str(folder / "labels-idx1-ubyte")]


def table(frame: pd.DataFrame, path: Path) -> list[str]:
    frame.to_csv(path, index=False)
    return ["--source", str(path)]


KINDS = {  # kind: (write the source, giving add's arguments; target; what the task must be)
    "images": (lambda d: image_folder(d / "shapes"), None, {"family": "cnn", "kind": "images"}),
    "idx": (lambda d: idx_files(d / "idx"), None, {"family": "cnn", "kind": "images"}),
    "sequences": (lambda d: table(trends(80), d / "trends.csv"), "trend", {"family": "lstm", "kind": "sequence"}),
    "text": (lambda d: table(reviews(160), d / "reviews.csv"), "sentiment", {"family": "lstm", "kind": "text"}),
    "series": (lambda d: table(weekly_series(260), d / "level.csv"), "level", {"family": "lstm", "kind": "series"}),
}


def shrink_study(params: Path, task: str) -> None:
    """Four trials instead of the default twenty: what `add` declared is what these tests
    check; the default budget's quality is the quality benchmark's (bench/quality.py)."""
    settings = yaml.safe_load(params.read_text())
    settings["tasks"][task]["tune"] = {**(settings["tasks"][task].get("tune") or {}), "n_trials": 4}
    params.write_text(yaml.safe_dump(settings, sort_keys=False))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_source_is_added_and_runs_to_a_registered_model(
    kind: str, tmp_path: Path, mlflow_uri: str
) -> None:
    write, target, expected = KINDS[kind]
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (root / "params.yaml").write_text("seed: 0\ndevice: cpu\ntasks: {}\n")
    args = ["add", kind, *write(tmp_path), "--params", str(root / "params.yaml")]
    assert main([*args, *(["--target", target] if target else [])]) == 0
    shrink_study(root / "params.yaml", kind)
    ctx = Context(root, load_settings(root / "params.yaml"), kind)
    assert ctx.task.family == expected["family"] and ctx.task.kind == expected["kind"]
    for stage in STAGES.values():
        stage(ctx)
    assert json.loads(ctx.paths.registry_decision.read_text())["promoted"]
    metrics = json.loads(ctx.paths.metrics.read_text())
    if kind == "series":
        assert metrics["test_rmse_vs_naive"] < 1.0  # better than repeating last season
    else:
        assert metrics["test_accuracy"] >= 0.8  # every one of these sets is easy to learn
