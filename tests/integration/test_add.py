"""`modelyard add` then every stage, with no edit in between: a user's table to a registered model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.cli import main
from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.conftest import REPO

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
    frame.to_csv(source, sep=";", index=False)
    assert (
        main(["add", "loans", "--source", str(source), "--target", "default", "--params", str(root / "params.yaml")])
        == 0
    )
    ctx = Context(root, load_settings(root / "params.yaml"), "loans")
    assert "loan_id" not in ctx.task.schema_.columns
    for stage in STAGES.values():
        stage(ctx)
    registry = json.loads(ctx.paths.registry_decision.read_text())
    assert registry["version"] == 1 and registry["promoted"]
    test = pd.read_parquet(ctx.paths.split_file("test"))
    majority = test["default"].value_counts(normalize=True).max()
    assert json.loads(ctx.paths.metrics.read_text())["test_accuracy"] > majority + 0.05
