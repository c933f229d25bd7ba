"""Helpers the integration tests share: a featurized toy project built once per session,
an MLflow store with its tables made once, project copies, and polling."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from modelyard.config import load_settings
from modelyard.stages import STAGES, Context
from tests.conftest import REPO, toy_frame, toy_params

UPSTREAM = ("ingest", "validate", "split", "featurize")


def featurized_template(factory: pytest.TempPathFactory) -> Path:
    """A toy project with its data stages done, built once per session; copy it, don't change it."""
    root = factory.getbasetemp() / "featurized-toy" / "project"
    if not (root / "data" / "toy" / "features.npz").is_file():
        shutil.rmtree(root.parent, ignore_errors=True)
        (root / "data" / "sources").mkdir(parents=True)
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        (root / "params.yaml").write_text(yaml.safe_dump(toy_params()))
        toy_frame().to_csv(root / "data" / "sources" / "toy.csv", index=False)
        context = Context(root, load_settings(root / "params.yaml"), "toy")
        for stage in UPSTREAM:
            STAGES[stage](context)
    return root


def migrated_sqlite(factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with its tables made, once per session (migrations take seconds)."""
    path = factory.getbasetemp() / "mlflow-template" / "mlflow.db"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "unused")).engine.dispose()
    return path


def copy_project(source: Path, folder: Path, **sections: dict) -> Path:
    """A copy of a project at `folder/project`; `sections` update the toy task's params
    (`tune={"n_trials": 6}` updates tasks.toy.tune)."""
    root = folder / "project"
    shutil.copytree(source, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, values in sections.items():
        params["tasks"]["toy"].setdefault(name, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def context(root: Path) -> Context:
    return Context(root, load_settings(root / "params.yaml"), "toy")


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
