"""One tiny end-to-end `dvc repro` of the real repo (built-in Adult data, shrunk params)
in a temporary git + DVC checkout, as a user would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from modelyard.config import SourceSettings
from modelyard.data.sources import read_source
from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def shell(cwd: Path, *args: str, stdout_only: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return done.stdout if stdout_only else output


def shrunk_params() -> dict:
    """The repo's params.yaml, every default task (adult, digits, co2) with tiny budgets."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for task in params["tasks"].values():
        task["tune"].update(n_trials=2, max_epochs=2)
        task["train"].update(max_epochs=2, patience=1)
        task["registry"].update(n_bootstrap=100)
    return params


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e") / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipeline", "src", "data/sources"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_params(), sort_keys=False))
    shell(root, "git", "init", "-q")
    shell(root, str(BIN / "dvc"), "init", "-q")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # in place of the one `dvc init` writes
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # the plot templates dvc.yaml names
    shell(root, "git", "add", "-A")
    shell(root, "git", "commit", "-qm", "init")
    shell(root, str(BIN / "dvc"), "repro")
    return root


def test_repro_tracks_study_and_registers_a_champion(checkout: Path) -> None:
    uri = f"sqlite:///{checkout / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("adult")
    assert experiment.artifact_location == (checkout / "mlruns" / "adult").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "modelyard.study" in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2
    train_runs = [r for r in runs if r.data.tags.get("modelyard.stage") == "train"]
    assert train_runs and train_runs[0].data.tags.get("mlflow.source.git.commit")
    assert "test_accuracy" in train_runs[0].data.metrics

    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/adult@champion")
    raw = read_source(SourceSettings(builtin="adult"), checkout).drop(columns=["income"]).head(20)
    predictions = model.predict(raw)
    assert len(predictions) == 20
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["label"]) <= {"<=50K", ">50K"}
    assert isinstance(predictions, pd.DataFrame)


def test_repro_runs_the_image_and_series_tasks_too(checkout: Path) -> None:
    uri = f"sqlite:///{checkout / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    for task in ("digits", "co2"):
        assert str(client.get_model_version_by_alias(task, "champion").version) == "1"
    assert "test_accuracy" in json.loads((checkout / "data" / "digits" / "metrics.json").read_text())
    co2 = json.loads((checkout / "data" / "co2" / "metrics.json").read_text())
    assert co2["test_rmse_vs_naive"] == pytest.approx(co2["test_rmse"] / co2["test_naive_rmse"])
    notes = json.loads((checkout / "data" / "co2" / "validation.json").read_text())["notes"]
    assert "co2: 59 missing value(s) (2.6%)" in notes  # the missing weeks, reported


def axis_fields(spec: object, axis: str) -> set[str]:
    """The fields a Vega-Lite spec puts on an axis ("x" or "y"), in any of its layers."""
    found: set[str] = set()
    if isinstance(spec, dict):
        encoding = spec.get("encoding", {})
        if isinstance(encoding.get(axis), dict) and "field" in encoding[axis]:
            found.add(encoding[axis]["field"])
        for value in spec.values():
            found |= axis_fields(value, axis)
    elif isinstance(spec, list):
        for value in spec:
            found |= axis_fields(value, axis)
    return found


def test_plots_show_draws_each_curve_once_against_its_own_axes(checkout: Path) -> None:
    """Per task the plots of its problem, each once and against the columns dvc.yaml names
    (none against the row index), plus the training curves; the plot files a problem has
    no use for draw nothing."""
    shown = json.loads(shell(checkout, str(BIN / "dvc"), "plots", "show", "--json", stdout_only=True))
    assert not shown.get("errors")
    expected = {
        "data/adult/plots/confusion.csv": ("predicted", "actual"),
        "data/adult/plots/roc.csv": ("fpr", "tpr"),
        "data/adult/plots/precision_recall.csv": ("recall", "precision"),
        "data/digits/plots/confusion.csv": ("predicted", "actual"),
        "data/co2/plots/predictions.csv": ("predicted", "actual"),
        "data/co2/plots/forecast.csv": ("time", "value"),  # actual, predicted and naive, folded
    } | {f"data/{task}/curves/train.csv": ("epoch", "loss") for task in ("adult", "digits", "co2")}
    drawn = {plot_id: plots for plot_id, plots in shown["data"].items() if plots}
    assert set(drawn) == set(expected)
    for plot_id, (x, y) in expected.items():
        (plot,) = drawn[plot_id]
        xs, ys = axis_fields(plot["content"], "x"), axis_fields(plot["content"], "y")
        # "step" is the row index DVC draws against when a plot names no x
        assert x in xs and y in ys and "step" not in xs | ys, (plot_id, xs, ys)
    forecast = drawn["data/co2/plots/forecast.csv"][0]["content"]["data"]["values"]
    assert {"time", "target", "actual", "predicted", "naive"} <= set(forecast[0])
    curves = pd.read_csv(checkout / "data" / "adult" / "curves" / "train.csv")
    assert list(curves.columns[:3]) == ["epoch", "train_loss", "val_loss"] and curves["epoch"].iloc[0] == 1


def test_second_repro_does_nothing(checkout: Path) -> None:
    """Also after another Python wrote compiled files beside the stages' source folders."""
    for folder in ("features", "models", "tuning"):
        cache = checkout / "src" / "modelyard" / folder / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "__init__.cpython-399.pyc").write_bytes(b"compiled elsewhere")
    output = shell(checkout, str(BIN / "dvc"), "repro")
    assert "Running stage" not in output
    assert "up to date" in output


def test_training_param_reruns_only_train_evaluate_register(checkout: Path) -> None:
    output = shell(checkout, str(BIN / "dvc"), "exp", "run", "-S", "tasks.adult.train.max_epochs=3")
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@adult", "evaluate@adult", "register@adult"}


PROBE = """
import runpy, sys
stage, tasks = sys.argv[1], sys.argv[2:]
for task in tasks:
    sys.argv = [f"pipeline/{stage}.py", "--task", task]
    try:
        runpy.run_path(f"pipeline/{stage}.py", run_name="__main__")
    except SystemExit as exit:
        assert not exit.code, f"{stage} {task} exited {exit.code}"
for name, module in sorted(sys.modules.items()):
    if name.startswith("modelyard") and getattr(module, "__file__", None):
        print("loaded", module.__file__)
"""


def test_each_stage_lists_the_modules_it_loads(checkout: Path) -> None:
    """Each stage's script, run for every default task in a fresh interpreter, loads only
    modules of src/modelyard that its dvc.yaml entry lists (the file, or a folder above it),
    so editing one reruns that stage. Runs last: it runs the stages again."""
    stages = yaml.safe_load((checkout / "dvc.yaml").read_text())["stages"]
    tasks = list(yaml.safe_load((checkout / "params.yaml").read_text())["tasks"])
    unlisted = {}
    for stage, spec in stages.items():
        deps = [dep.rstrip("/") for dep in spec["do"]["deps"]]
        output = shell(checkout, sys.executable, "-c", PROBE, stage, *tasks, stdout_only=True)
        loaded = {
            "src/modelyard/" + line.split("/src/modelyard/", 1)[1]
            for line in output.splitlines()
            if line.startswith("loaded ") and "/src/modelyard/" in line
        }
        assert "src/modelyard/stages.py" in loaded
        missing = sorted(m for m in loaded if not any(m == dep or m.startswith(dep + "/") for dep in deps))
        if missing:
            unlisted[stage] = missing
    assert not unlisted, f"modules the stages load and dvc.yaml does not list as their deps: {unlisted}"
