"""Fixtures the integration tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.helpers import featurized_template, migrated_sqlite


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return featurized_template(tmp_path_factory)


@pytest.fixture
def mlflow_store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh MLflow sqlite store for one test, as MLFLOW_TRACKING_URI."""
    shutil.copy(migrated_sqlite(tmp_path_factory), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
