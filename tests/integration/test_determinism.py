"""Same inputs, same model: the toy task's study, training and evaluation run twice, each
stage a fresh `modelyard` process as `dvc repro` runs it, give identical results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.conftest import REPO, toy_frame, toy_params

pytestmark = pytest.mark.slow
DATA_STAGES = ("ingest", "validate", "split", "featurize")
MODEL_STAGES = ("tune", "train", "evaluate")
# Dropout, several shuffled batches an epoch and a searched learning rate and batch size:
# every source of randomness a run has.
PARAMS = toy_params(
    model={"units": 16, "n_layers": 2, "dropout": 0.2},
    tune={"n_trials": 3, "max_epochs": 3, "search_space": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}}},
    train={"max_epochs": 4, "patience": 2, "ensemble": 2},
)


def run_stages(root: Path, stages: tuple[str, ...]) -> None:
    """`modelyard <stage> --task toy` in `root`, each stage a fresh process."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    modelyard = str(Path(sys.executable).with_name("modelyard"))
    for stage in stages:
        done = subprocess.run([modelyard, stage, "--task", "toy"], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"


def outcome(root: Path) -> dict[str, dict]:
    """What tune, train and evaluate wrote."""
    task = root / "data" / "toy"
    train = json.loads((task / "train.json").read_text())
    return {
        "best_params": json.loads((task / "best_params.json").read_text()),
        "train": {key: train[key] for key in ("val", "best_epoch", "epochs_run", "threshold", "source")},
        "metrics": json.loads((task / "metrics.json").read_text()),
    }


def test_the_same_params_and_seed_give_the_same_model_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The features once, in this process (their own tests check those stages); the study
    # and the model twice, each stage a fresh process.
    base = tmp_path / "base"
    (base / "data" / "sources").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", base / "dvc.yaml")
    (base / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    toy_frame().to_csv(base / "data" / "sources" / "toy.csv", index=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    ctx = Context(base, load_settings(base / "params.yaml"), "toy")
    for name in DATA_STAGES:
        STAGES[name](ctx)
    runs = []
    for name in ("first", "second"):
        shutil.copytree(base, tmp_path / name)
        run_stages(tmp_path / name, MODEL_STAGES)
        runs.append(outcome(tmp_path / name))
    first, second = runs
    best = first["best_params"]
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 3
    for part in ("best_params", "train", "metrics"):
        assert first[part] == second[part], part  # exactly: not within a tolerance
