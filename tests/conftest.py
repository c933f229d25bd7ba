"""Shared fixtures: a tiny synthetic task on a user CSV, a temporary MLflow store, and
shrunk params, so stage tests run the real code in seconds."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TOY_TASK = {
    "source": {"path": "data/sources/toy.csv"},
    "target": "label",
    "problem": "binary",
    "positive_label": "yes",
    "schema": {
        "rows": {"min": 50},
        "columns": {
            "color": {"type": "category", "categories": ["red", "green", "blue"], "max_null_fraction": 0.2},
            "size": {"type": "category"},
            "x1": {"type": "number", "min": -10, "max": 10, "max_null_fraction": 0.1},
            "x2": {"type": "integer", "min": 0, "max": 100},
            "label": {"type": "category", "categories": ["no", "yes"]},
        },
    },
    "features": {"encoders": {"size": "target"}, "scaler": "standard"},
    "model": {"units": 16, "n_layers": 1},
    "tune": {
        "n_trials": 3,
        "max_epochs": 3,
        "pruner": "median",
        "search_space": {"lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True}, "batch_size": {"choices": [32, 64]}},
    },
    "train": {"max_epochs": 4, "patience": 2},
}


def toy_frame(n_rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A learnable binary task: the label follows x1 and the color, with some noise."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], n_rows)
    x1 = rng.normal(0, 2, n_rows)
    x2 = rng.integers(0, 100, n_rows)
    size = rng.choice(["S", "M", "L", "XL"], n_rows)
    score = x1 + (color == "red") * 1.5 - (color == "blue") + rng.normal(0, 0.5, n_rows)
    frame = pd.DataFrame({"color": color, "size": size, "x1": x1, "x2": x2, "label": np.where(score > 0, "yes", "no")})
    frame.loc[frame.index[::17], "color"] = None
    frame.loc[frame.index[::23], "x1"] = np.nan
    return frame


def toy_params(**task_overrides: object) -> dict:
    """params.yaml content with the one toy task; overrides replace top-level task keys."""
    task = copy.deepcopy(TOY_TASK)
    task.update(copy.deepcopy(task_overrides))
    return {"seed": 0, "device": "cpu", "tasks": {"toy": task}}


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh MLflow store for one test (never the repo's own mlflow.db)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def project(tmp_path: Path, mlflow_uri: str) -> Path:
    """A temporary modelyard project: dvc.yaml, params.yaml with the toy task, its CSV."""
    root = tmp_path / "project"
    (root / "data" / "sources").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(toy_params()))
    toy_frame().to_csv(root / "data" / "sources" / "toy.csv", index=False)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one CPU thread for a module (the CI machine has two cores), then as before."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
