"""Where files and the MLflow store go: always the user's checkout, also inside DVC's temp experiments."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import ModelyardError
from modelyard.paths import TaskPaths, find_root, home_root
from modelyard.tracking import tracking_uri


def test_home_root_sees_through_dvc_temp_experiments(tmp_path: Path) -> None:
    temp_exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_exp.mkdir(parents=True)
    assert home_root(temp_exp) == tmp_path / "repo"
    assert home_root(tmp_path / "repo") == tmp_path / "repo"


def test_default_store_is_the_checkouts_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    temp_exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    temp_exp.mkdir(parents=True)
    assert tracking_uri(temp_exp) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(temp_exp) == "http://127.0.0.1:5000"


def test_study_journal_lives_in_the_checkout(tmp_path: Path) -> None:
    temp_exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    paths = TaskPaths(temp_exp, "adult")
    assert paths.raw == temp_exp / "data" / "adult" / "raw.parquet"
    assert paths.study_journal == tmp_path / "repo" / "data" / "adult" / "optuna.journal"


def test_find_root_walks_up_and_explains_failure(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("tasks: {}\n")
    (tmp_path / "pipeline").mkdir()
    assert find_root(tmp_path / "pipeline") == tmp_path.resolve()
    with pytest.raises(ModelyardError, match="no modelyard repository"):
        find_root(tmp_path.parent)
