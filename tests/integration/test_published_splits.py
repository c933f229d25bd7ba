"""The real data and training stages on a toy task whose test rows come from a file of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.conftest import toy_frame, toy_params

STAGE_NAMES = ("ingest", "validate", "split", "featurize", "tune", "train", "evaluate")


def test_test_file_rows_are_exactly_the_test_split(project: Path, one_thread: None) -> None:
    sources = project / "data" / "sources"
    frame = toy_frame(400, seed=3)
    frame.iloc[:300].to_csv(sources / "toy.csv", index=False)
    frame.iloc[300:].to_csv(sources / "toy_test.csv", index=False)
    params = toy_params(
        source={"path": "data/sources/toy.csv", "test": "data/sources/toy_test.csv"},
        tune={"n_trials": 2, "max_epochs": 2, "search_space": {"lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}},
        train={"max_epochs": 2, "patience": 2, "min_epochs": 0},
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = Context(project, load_settings(project / "params.yaml"), "toy")
    for name in STAGE_NAMES:
        STAGES[name](ctx)

    assert json.loads(ctx.paths.ingest_summary.read_text())["test_rows"] == 100
    test = pd.read_parquet(ctx.paths.split_file("test"))
    expected = pd.read_csv(sources / "toy_test.csv")
    pd.testing.assert_frame_equal(test, expected, check_dtype=False)
    sizes = {part: len(pd.read_parquet(ctx.paths.split_file(part))) for part in ("train", "val")}
    assert sizes == {"train": 240, "val": 60}  # val_size 0.2 of the 300 rows of the data file
    assert "test_accuracy" in json.loads(ctx.paths.metrics.read_text())
