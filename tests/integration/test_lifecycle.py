"""Scheduled retraining and the model lifecycle on the toy task, with a real MLflow store,
real Great Expectations and real Optuna journal storage.

The story: version 1 is a champion trained on labels shuffled at random (no signal); a
retrain on the real toy data must beat it with evidence and take its place; retraining
again with nothing changed skips; a crippled retrain, invalid data and diverging training
all leave the champion where it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from modelyard import lifecycle
from modelyard.cli import build_parser, main
from modelyard.stages import STAGES
from tests.conftest import REPO, toy_frame
from tests.integration.helpers import context, copy_project, featurized_template, migrated_sqlite, wait_for

SHRUNK = {
    "tune": {"n_trials": 2, "max_epochs": 3},
    "train": {"max_epochs": 5, "patience": 2},
    "registry": {"metric": "roc_auc", "n_bootstrap": 200},
}


def noise_frame() -> pd.DataFrame:
    """The toy rows with their labels shuffled: a model trained on them learns nothing."""
    frame = toy_frame(seed=1)
    frame["label"] = frame["label"].sample(frac=1.0, random_state=0).to_numpy()
    return frame


def cli(root: Path, *args: str) -> int:
    return main([*args[:1], "--task", "toy", "--params", str(root / "params.yaml"), *args[1:]])


def champion(client: MlflowClient) -> int:
    return int(client.get_model_version_by_alias("toy", "champion").version)


def n_versions(client: MlflowClient) -> int:
    return len(client.search_model_versions("name = 'toy'"))


def retrain_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("toy").experiment_id
    return client.search_runs(
        [experiment], "tags.`modelyard.event` = 'retrain'", order_by=["attributes.start_time DESC"]
    )


def clone(source: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, **sections: dict) -> Path:
    """A copy of a project folder (project + mlflow.db) pointed at its own store copy."""
    shutil.copy(source / "mlflow.db", folder / "mlflow.db")
    use_store(folder, monkeypatch)
    return copy_project(source / "project", folder, **sections)


def use_store(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the environment and this process's MLflow clients at `folder`/mlflow.db."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@pytest.fixture(scope="module")
def noise_champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1, trained on shuffled labels, is the champion; data/sources/good.csv holds real rows."""
    folder = tmp_path_factory.mktemp("lifecycle")
    root = copy_project(featurized_template(tmp_path_factory), folder, **SHRUNK)
    noise_frame().to_csv(root / "data" / "sources" / "toy.csv", index=False)
    toy_frame(seed=2).to_csv(root / "data" / "sources" / "good.csv", index=False)
    shutil.copy(migrated_sqlite(tmp_path_factory), folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        use_store(folder, patch)
        ctx = context(root)
        for stage in STAGES:
            STAGES[stage](ctx)
        assert champion(MlflowClient()) == 1
    return folder


@pytest.fixture(scope="module")
def promoted(noise_champion: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """noise_champion after `modelyard retrain --data good.csv` (exit code kept in exit_code.txt)."""
    folder = tmp_path_factory.mktemp("promoted")
    with pytest.MonkeyPatch.context() as patch:
        root = clone(noise_champion, folder, patch)
        code = cli(root, "retrain", "--data", str(root / "data" / "sources" / "good.csv"))
    (folder / "exit_code.txt").write_text(str(code))
    return folder


def test_retrain_on_new_data_promotes_with_evidence(promoted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (promoted / "exit_code.txt").read_text() == str(lifecycle.PROMOTED)
    use_store(promoted, monkeypatch)
    client = MlflowClient()
    assert champion(client) == 2
    assert client.get_model_version("toy", "2").tags["modelyard.decision"] == "promoted"
    run = retrain_runs(client)[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.outcome"] == "promoted"
    assert run.data.tags["modelyard.previous_champion"] == "1"
    assert run.data.tags["modelyard.champion_version"] == "2"
    # The evidence: the new model is better on the same test rows, and the interval says so.
    metrics = run.data.metrics
    assert metrics["challenger"] > metrics["champion"] + 0.2
    assert metrics["ci_low"] > 0
    assert "drift_psi_x1" in metrics and "drift_n_columns_drifted" in metrics
    drift_file = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="drift.json")
    drift = json.loads(Path(drift_file).read_text())
    assert {d["column"] for d in drift} == {"color", "size", "x1", "x2", "label"}
    summary = json.loads(context(promoted / "project").paths.retrain_summary.read_text())
    assert summary["decision"]["comparison"]["method"] == "bootstrap"


def test_retrain_warm_starts_the_study_with_the_champions_hyperparameters(
    promoted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_store(promoted, monkeypatch)
    old = mlflow.pyfunc.load_model("models:/toy/1").unwrap_python_model().bundle.hparams
    ctx = context(promoted / "project")
    study_name = json.loads(ctx.paths.best_params.read_text())["study"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ctx.paths.study_journal)))
    first = optuna.load_study(study_name=study_name, storage=storage).trials[0]
    assert {"lr", "batch_size", "dropout", "weight_decay"} <= set(first.params)  # task entries + defaults
    assert first.params == {name: pytest.approx(getattr(old, name)) for name in first.params}


def test_unchanged_inputs_skip_as_up_to_date(
    promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = clone(promoted, tmp_path, monkeypatch)
    client = MlflowClient()
    before = (n_versions(client), len(retrain_runs(client)))
    assert cli(root, "retrain", "--data", str(root / "data" / "sources" / "good.csv")) == lifecycle.UP_TO_DATE
    assert "up to date" in capsys.readouterr().err
    assert (n_versions(client), len(retrain_runs(client))) == before
    # The same rows under another file name are the same data.
    shutil.copy(root / "data" / "sources" / "good.csv", tmp_path / "renamed.csv")
    assert cli(root, "retrain", "--data", str(tmp_path / "renamed.csv")) == lifecycle.UP_TO_DATE


def test_a_worse_model_keeps_the_champion(promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crippled = {"search_space": {"lr": {"choices": [1.0e-6]}, "batch_size": {"choices": [32]}}}
    root = clone(promoted, tmp_path, monkeypatch, tune=crippled, train={"max_epochs": 1, "ensemble": 1})
    assert cli(root, "retrain", "--data", str(root / "data" / "sources" / "good.csv")) == lifecycle.KEPT_CHAMPION
    client = MlflowClient()
    assert champion(client) == 2
    assert int(client.get_model_version_by_alias("toy", "challenger").version) == 3
    run = retrain_runs(client)[0]
    assert run.data.tags["modelyard.outcome"] == "kept champion"
    assert run.data.metrics["improvement"] < 0
    assert client.get_model_version("toy", "3").tags["modelyard.decision"] == "kept champion"


def task_files(root: Path) -> dict[str, int]:
    """data/toy/'s stage outputs and their modification times (not the lock, nor the Optuna
    journal and trial weights: a store that every study, a retrain's too, adds to)."""
    folder = root / "data" / "toy"
    kept = ("retrain.lock", "optuna.journal", "trials")
    files = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] not in kept]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("x2", 500, "x2"),  # declared 0..100
        ("x1", float("inf"), "infinite or beyond"),  # 1e309 in a CSV reads as inf
        ("label", "yes", "1 class(es)"),  # a target with one class
    ],
)
def test_invalid_data_stops_before_training_and_leaves_the_task_files(
    promoted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    column: str,
    value: object,
    said: str,
) -> None:
    root = clone(promoted, tmp_path, monkeypatch)
    bad = toy_frame(seed=3)
    bad.loc[: 9 if column != "label" else None, column] = value
    bad.to_csv(tmp_path / "bad.csv", index=False)
    client = MlflowClient()
    versions, before = n_versions(client), task_files(root)
    assert cli(root, "retrain", "--data", str(tmp_path / "bad.csv")) == lifecycle.VALIDATION_FAILED
    assert said in capsys.readouterr().err
    assert champion(client) == 2 and n_versions(client) == versions
    assert task_files(root) == before  # the champion's raw data, split and features, untouched
    assert not (root / "data" / ".retrain-toy").exists()
    run = retrain_runs(client)[0]
    assert run.info.status == "FAILED" and run.data.tags["modelyard.outcome"] == "validation failed"


def test_diverging_training_fails_and_keeps_the_champion(
    promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    exploding = {"search_space": {"lr": {"choices": [1.0e12]}}}
    root = clone(promoted, tmp_path, monkeypatch, tune=exploding, model={"optimizer": "sgd"}, train={"grad_clip": None})
    client = MlflowClient()
    versions = n_versions(client)
    assert cli(root, "retrain", "--force") == lifecycle.TRAINING_FAILED
    assert "training failed" in capsys.readouterr().err
    assert champion(client) == 2 and n_versions(client) == versions
    assert retrain_runs(client)[0].data.tags["modelyard.outcome"] == "training failed"


def test_a_held_lock_times_out_with_its_own_exit_code(
    noise_champion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = clone(noise_champion, tmp_path, monkeypatch)
    with lifecycle.task_lock(context(root).paths.retrain_lock, 1, "test"):
        assert cli(root, "retrain", "--lock-timeout", "0.5") == lifecycle.LOCK_TIMEOUT
    assert "--lock-timeout" in capsys.readouterr().err
    assert len(retrain_runs(MlflowClient())) == 0


def test_concurrent_retrains_take_turns(promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = clone(promoted, tmp_path, monkeypatch)
    lock = context(root).paths.retrain_lock
    lock.unlink(missing_ok=True)
    command = [sys.executable, "-m", "modelyard.cli", "retrain", "--task", "toy", "--force", "--lock-timeout", "600"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = subprocess.Popen(command, cwd=root, stderr=logs[0].open("w"), stdout=subprocess.DEVNULL)
    wait_for(lambda: lock.is_file() and f"pid {first.pid}" in lock.read_text(), 60, "the first retrain to lock")
    second = subprocess.Popen(command, cwd=root, stderr=logs[1].open("w"), stdout=subprocess.DEVNULL)
    codes = [first.wait(timeout=600), second.wait(timeout=600)]
    texts = [log.read_text() for log in logs]
    assert codes[0] in (lifecycle.PROMOTED, lifecycle.KEPT_CHAMPION), texts[0]
    assert codes[1] in (lifecycle.PROMOTED, lifecycle.KEPT_CHAMPION), texts[1]
    assert "waiting up to 600 s" in texts[1]
    client = MlflowClient()
    runs = retrain_runs(client)[:2]
    assert all(r.info.status == "FINISHED" for r in runs)
    # One after the other: the second started only once the first had finished.
    assert runs[0].info.start_time >= runs[1].info.end_time
    assert n_versions(client) == 4


def test_a_terminated_retrain_ends_its_audit_run_and_keeps_the_champion(
    promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = clone(promoted, tmp_path, monkeypatch, train={"max_epochs": 2000, "patience": 2000})
    client = MlflowClient()
    versions, before = n_versions(client), task_files(root)
    command = [sys.executable, "-m", "modelyard.cli", "retrain", "--task", "toy", "--force"]
    log = tmp_path / "retrain.log"
    process = subprocess.Popen(command, cwd=root, stderr=log.open("w"), stdout=subprocess.DEVNULL)
    wait_for(lambda: "train toy epoch" in log.read_text(), 300, "the retrain to reach training")
    process.send_signal(signal.SIGTERM)  # what systemd's stop and a cancelled CI job send
    assert process.wait(timeout=60) == 143, log.read_text()
    run = retrain_runs(client)[0]
    assert run.info.status == "KILLED" and run.data.tags["modelyard.outcome"] == "interrupted"
    assert lifecycle.history(root, "toy")[-1]["outcome"] == "interrupted"
    assert champion(client) == 2 and n_versions(client) == versions
    assert task_files(root) == before and not (root / "data" / ".retrain-toy").exists()


def test_rollback_walks_back_and_is_recorded(
    promoted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = clone(promoted, tmp_path, monkeypatch)
    client = MlflowClient()
    assert cli(root, "rollback") == 0
    assert champion(client) == 1
    assert cli(root, "rollback") == 2  # nothing before version 1
    assert "no champion before v1" in capsys.readouterr().err
    assert champion(client) == 1
    assert cli(root, "rollback", "--to", "2") == 0
    assert champion(client) == 2
    capsys.readouterr()
    assert cli(root, "history") == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[2:5] for line in lines[1:]]  # after the date and time: event, outcome...
    assert [e[0] for e in events] == ["register", "retrain", "rollback", "rollback"]
    assert "rolled back from v2 to v1" in lines[3] and "rolled back from v1 to v2" in lines[4]
    assert "first version" in lines[1]


def test_predict_scores_raw_rows_and_checks_columns(
    noise_champion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = clone(noise_champion, tmp_path, monkeypatch)
    rows = toy_frame(n_rows=25, seed=5).drop(columns=["label"])
    rows.loc[0, "x2"] = None  # a missing cell in an integer column is imputed, not a rejected batch
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert cli(root, "predict", "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "out.csv")) == 0
    scored = pd.read_csv(tmp_path / "out.csv")
    assert len(scored) == 25 and list(scored.columns[:4]) == list(rows.columns)
    assert set(scored["predicted_label"]) <= {"yes", "no"}
    assert scored["predicted_probability"].between(0, 1).all()

    def refused(frame: pd.DataFrame) -> str:
        frame.to_csv(tmp_path / "bad.csv", index=False)
        code = cli(root, "predict", "--input", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "never.csv"))
        assert code == 2 and not (tmp_path / "never.csv").exists()
        return capsys.readouterr().err

    assert "lacks column(s) the model needs: x1" in refused(rows.drop(columns=["x1"]))
    assert "holds no rows" in refused(rows.head(0))
    typo = rows.astype({"x2": object})
    typo.loc[3, "x2"] = "seventy-two"
    err = refused(typo)
    assert "column 'x2' holds 1 value(s) that are not numbers" in err
    assert "seventy-two" not in err and "Traceback" not in err  # the user's data stays out of logs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_champion_answers_http(noise_champion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_store(noise_champion, monkeypatch)
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # mlflow starts `uvicorn` by name: the environment's bin folder must be on PATH, as it is
    # in an activated venv (make test runs pytest without activating it).
    monkeypatch.setenv("PATH", f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    command = ["models", "serve", "-m", "models:/toy@champion", "--env-manager", "local", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [str(mlflow_cli), *command, "--port", str(port)],
        stdout=(tmp_path / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def answers() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200
            except OSError:
                return False

        wait_for(answers, 180, "mlflow models serve to answer", interval=0.5)
        rows = toy_frame(n_rows=4, seed=6).drop(columns=["label"])
        rows.loc[0, "color"] = "purple"  # unseen category: handled by the saved preprocessing
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        local = mlflow.pyfunc.load_model("models:/toy@champion").predict(rows)
        assert [row["label"] for row in answer] == local["label"].tolist()
        assert [row["probability"] for row in answer] == pytest.approx(local["probability"].tolist(), abs=1e-6)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def scheduled_commands() -> dict[str, str]:
    """The modelyard command line each scheduling example runs."""
    deploy = REPO / "deploy"
    cron = [line for line in (deploy / "crontab").read_text().splitlines() if line and not line.startswith("#")]
    service = (deploy / "modelyard-retrain.service").read_text()
    workflow = yaml.safe_load((deploy / "github-retrain.yml").read_text())
    steps = [step.get("run", "") for step in workflow["jobs"]["retrain"]["steps"]]
    return {
        "cron": cron[0],
        "systemd": next(line for line in service.splitlines() if line.startswith("ExecStart=")),
        "github": next(run for run in steps if "modelyard retrain" in run),
    }


@pytest.mark.parametrize("scheduler", ["cron", "systemd", "github"])
def test_scheduling_examples_call_the_retrain_command(scheduler: str) -> None:
    line = scheduled_commands()[scheduler]
    words = line[line.index("modelyard retrain") :].split()[1:]
    end = next((i for i, word in enumerate(words) if word.startswith((">", "2>", "|", ";", "&"))), len(words))
    args = words[:end]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "retrain" and parsed.task


def test_scheduling_examples_are_well_formed() -> None:
    deploy = REPO / "deploy"
    timer = (deploy / "modelyard-retrain.timer").read_text()
    assert "OnCalendar=" in timer and "Unit=modelyard-retrain.service" in timer
    assert "SuccessExitStatus=10 11" in (deploy / "modelyard-retrain.service").read_text()
    workflow = yaml.safe_load((deploy / "github-retrain.yml").read_text())
    assert workflow[True]["schedule"][0]["cron"].count(" ") == 4  # YAML reads the key `on` as True
    schedule, command = scheduled_commands()["cron"].split(maxsplit=5)[:5], scheduled_commands()["cron"]
    assert all(field[0] in "0123456789*" for field in schedule)  # five time fields, then the command
    assert ">>" in command and "2>&1" in command  # where its log goes
