"""Many workers on one study in PostgreSQL: Optuna's RDB storage and a PostgreSQL-backed
MLflow store, directly and through `mlflow server`. Every test gets fresh databases
(created here, dropped at teardown); the module is skipped when no server answers on
127.0.0.1:5432."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import optuna
import psycopg2
import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from modelyard import tracking
from modelyard.cli import main
from modelyard.files import process_alive
from modelyard.stages import STAGES
from modelyard.tuning import storage as tuning_storage
from modelyard.tuning import trials as tuning_trials
from tests.integration.helpers import context, copy_project, wait_for
from tests.integration.test_faults import (
    FINISHED,
    assert_study_recovered,
    child_runs,
    kill,
    mid_study,
    runs_of,
    start_stage,
    study_of,
    trial_snapshot,
)

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
OPTUNA_PASSWORD, MLFLOW_PASSWORD = "s3cret-optuna", "s3cret-mlflow"  # trust auth accepts any password


def _server_answers() -> bool:
    try:
        psycopg2.connect(dbname="postgres", connect_timeout=2, **SERVER).close()
    except psycopg2.Error:
        return False
    return True


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not _server_answers(), reason="no PostgreSQL server answers on 127.0.0.1:5432"),
]


def admin(sql: str) -> None:
    with closing(psycopg2.connect(dbname="postgres", connect_timeout=2, **SERVER)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)


@contextmanager
def database(purpose: str, template: str | None = None) -> Iterator[str]:
    """A fresh database with a unique name, dropped afterwards (open connections included)."""
    name = f"modelyard_test_{purpose}_{uuid.uuid4().hex[:8]}"
    if template:  # a template must have no open connections while it is copied
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{template}'")
    admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(name: str, password: str | None = None, driver: str = "postgresql") -> str:
    user = f"postgres:{password}" if password else "postgres"
    return f"{driver}://{user}@127.0.0.1:5432/{name}"


def mlflow_url(name: str) -> str:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project pins psycopg2.
    return pg_url(name, MLFLOW_PASSWORD, driver="postgresql+psycopg2")


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow database with its tables made once; tests get copies (migrations take seconds)."""
    with database("mlflow_template") as name:
        SqlAlchemyStore(mlflow_url(name), str(tmp_path_factory.mktemp("unused-artifacts"))).engine.dispose()
        yield name


@pytest.fixture
def optuna_db() -> Iterator[str]:
    with database("optuna") as name:
        yield name


@pytest.fixture
def mlflow_db(mlflow_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL MLflow store, as MLFLOW_TRACKING_URI (with a password in it)."""
    with database("mlflow", template=mlflow_template) as name:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url(name))
        yield name


def trials_and_runs(study: optuna.Study, client: MlflowClient) -> list:
    """Every trial finished or failed, with exactly one MLflow child run that agrees with it."""
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    children = child_runs(client, study.study_name)
    assert sorted(children) == [t.number for t in trials]
    for trial in trials:
        (run,) = children[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.info.status == tuning_trials.RUN_STATUS[trial.state]
        assert run.data.tags["modelyard.trial_state"] == trial.state.name
    return trials


def test_a_fused_study_on_postgres_records_every_trial_once(
    template: Path, tmp_path: Path, optuna_db: str, mlflow_db: str, capfd: pytest.CaptureFixture
) -> None:
    """Trials asked two at a time (`tune.fuse: 2`) through Optuna's RDB storage: enqueued
    followers, ask and tell, and the heartbeat of asked trials all go through PostgreSQL."""
    root = copy_project(template, tmp_path, tune={"n_trials": 4, "max_epochs": 3, "fuse": 2})
    storage_url = pg_url(optuna_db, OPTUNA_PASSWORD)
    code = main(["tune", "--task", "toy", "--params", str(root / "params.yaml"), "--storage", storage_url])
    output = capfd.readouterr()
    assert code == 0, output.err
    assert "Traceback" not in output.err  # nor from the heartbeat thread
    study = study_of(root, tuning_storage.open_storage(storage_url, tmp_path / "unused"))
    trials = trials_and_runs(study, MlflowClient())
    assert len([t for t in trials if t.state in FINISHED]) == 4
    # trials 0 and 1 were asked together: 1 took 0's structure (its batch size), and its own rate
    assert trials[1].params["batch_size"] == trials[0].params["batch_size"]
    assert trials[1].params["lr"] != trials[0].params["lr"]


def test_three_workers_record_every_trial_once(
    template: Path, tmp_path: Path, optuna_db: str, mlflow_db: str, capfd: pytest.CaptureFixture
) -> None:
    n_trials = 9
    root = copy_project(template, tmp_path, tune={"n_trials": n_trials, "max_epochs": 5})
    storage_url = pg_url(optuna_db, OPTUNA_PASSWORD)
    params = ["--task", "toy", "--params", str(root / "params.yaml")]
    code = main(["tune", *params, "--storage", storage_url, "--workers", "3"])
    output = capfd.readouterr()
    assert code == 0, output.err

    study = study_of(root, tuning_storage.open_storage(storage_url, tmp_path / "unused"))
    client = MlflowClient()
    trials = trials_and_runs(study, client)
    finished = [t for t in trials if t.state in FINISHED]
    assert n_trials <= len(finished) <= n_trials + 2  # side-by-side workers may each finish one more
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) >= 2 and os.getpid() not in pids  # the trials ran in spawned workers, side by side
    best = json.loads(context(root).paths.best_params.read_text())
    assert best["best_trial"] == study.best_trial.number
    assert best["val_loss"] == pytest.approx(study.best_value)  # 64 validation rows: ranked on the loss
    # 64 validation rows: train builds on the smallest network within one SE of the best (selection.py)
    selected = next(t for t in study.trials if t.number == best["selected_trial"])
    assert best["selected_trial"] in best["selection"]["within"]
    assert {name: best["hparams"][name] for name in selected.params} == selected.params

    runs = runs_of(client)
    (parent,) = [r for r in runs if "modelyard.study" in r.data.tags]
    assert parent.data.params["storage"] == pg_url(optuna_db, "***")
    assert parent.info.status == "FINISHED"
    assert len(re.findall(r"^tune toy worker \d: trial \d+ ", output.err, re.MULTILINE)) == len(trials)
    for secret in (OPTUNA_PASSWORD, MLFLOW_PASSWORD):
        assert secret not in output.out + output.err
        assert all(secret not in json.dumps([r.data.params, r.data.tags]) for r in runs)


def test_killed_workers_trials_fail_and_the_study_completes(
    template: Path, tmp_path: Path, optuna_db: str, mlflow_db: str
) -> None:
    """`kill -9` of a 2-worker tune: its workers exit, and a rerun fails their trials at once
    (their processes are gone; no need to wait out the heartbeat's grace period)."""
    n_trials = 5
    storage_url = pg_url(optuna_db)
    # Trials long enough (30 epochs) that one is surely still running when the workers see
    # their parent die; a toy trial of a few epochs can finish inside that moment.
    root = copy_project(template, tmp_path, tune={"n_trials": n_trials, "max_epochs": 30, "storage": storage_url})
    log = tmp_path / "tune.log"
    process = start_stage(root, "tune", "--workers", "2", log=log)
    storage = optuna.storages.RDBStorage(tracking.driver_url(storage_url))
    try:

        def running_study() -> optuna.Study | None:
            assert process.poll() is None, f"tune ended before it could be killed:\n{log.read_text()}"
            summaries = storage.get_all_studies()
            study = optuna.load_study(study_name=summaries[0].study_name, storage=storage) if summaries else None
            return study if study is not None and mid_study(study) else None

        study = wait_for(running_study, 120, "a finished trial and a running one", interval=0.1)
    finally:
        kill(process)
    workers = {t.user_attrs["worker"]["pid"] for t in study.get_trials() if "worker" in t.user_attrs}
    wait_for(lambda: not any(process_alive(pid) for pid in workers), 30, "the orphaned workers to exit")
    killed = trial_snapshot(study)
    assert TrialState.RUNNING in {state for state, _ in killed.values()}
    unowned = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "worker" not in t.user_attrs]
    if unowned:  # killed between creating its trial and recording its worker: failed once past the grace period
        time.sleep(tuning_storage.GRACE_PERIOD_S + 1)

    STAGES["tune"](context(root))  # the rerun, one worker

    study = study_of(root, storage)
    assert_study_recovered(study, MlflowClient(), n_trials, killed)
    assert not context(root).paths.study_journal.exists()  # the storage from params was used


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_heartbeat_fails_the_trial_of_a_silent_worker(optuna_db: str, tmp_path: Path, mlflow_store: str) -> None:
    """A worker on another host stops reporting: after the grace period the trial is FAIL
    and its MLflow run FAILED, through the storage's stale-trial callback."""
    client = tracking.connect(tmp_path)
    experiment = client.create_experiment("toy", artifact_location=(tmp_path / "artifacts").as_uri())
    on_stale = tuning_storage.stale_run_closer(client, experiment)
    storage = tuning_storage.open_storage(pg_url(optuna_db), tmp_path / "unused", on_stale=on_stale, heartbeat=(1, 2))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", {"host": "another-host", "pid": 1, "token": "x"})
    run = tracking.start_run(client, experiment, "trial-0", {tracking.TAG_TRIAL: "s/0"})
    trial.set_user_attr("mlflow_run_id", run.run_id)
    storage.record_heartbeat(trial._trial_id)
    assert tuning_storage.fail_stale_trials(study, storage, client, experiment) == []  # a fresh heartbeat: alive
    assert study.trials[0].state == TrialState.RUNNING

    def failed() -> bool:
        tuning_storage.fail_stale_trials(study, storage, client, experiment)
        return study.trials[0].state == TrialState.FAIL

    wait_for(failed, 20, "the heartbeat to go stale", interval=0.5)
    stale = client.get_run(run.run_id)
    assert stale.info.status == "FAILED"
    assert stale.data.tags["modelyard.fail_reason"] == "worker stopped sending heartbeats mid-trial"


def _free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str, process: subprocess.Popen, log: Path) -> bool:
    assert process.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture
def mlflow_server(mlflow_template: str, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port, PostgreSQL backend store, artifacts in tmp."""
    with database("mlflow_server", template=mlflow_template) as name:
        port, log = _free_port(), tmp_path / "mlflow-server.log"
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            mlflow_url(name),
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _answers(url, process, log), 120, "the MLflow server to answer", interval=0.5)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:  # the CLI process can take 10 s to follow its server
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def test_a_study_through_the_mlflow_server(
    template: Path, tmp_path: Path, optuna_db: str, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    root = copy_project(template, tmp_path, tune={"n_trials": 3, "storage": pg_url(optuna_db)})
    STAGES["tune"](context(root))

    study = study_of(root, tuning_storage.open_storage(pg_url(optuna_db), tmp_path / "unused"))
    client = MlflowClient(mlflow_server)
    trials = trials_and_runs(study, client)
    assert len([t for t in trials if t.state in FINISHED]) >= 3
    (parent,) = [r for r in runs_of(client) if "modelyard.study" in r.data.tags]
    assert parent.data.tags["modelyard.study"] == study.study_name
    assert parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    history = client.get_metric_history(trials[0].user_attrs["mlflow_run_id"], "val_loss")
    assert [m.step for m in history] == list(range(1, len(history) + 1)) and history  # epochs from 1


def test_the_same_study_in_the_journal_and_in_postgresql_has_two_parent_runs(
    template: Path, tmp_path: Path, optuna_db: str, mlflow_db: str
) -> None:
    journal_root = copy_project(template, tmp_path / "journal", tune={"n_trials": 2})
    STAGES["tune"](context(journal_root))
    shared_root = copy_project(template, tmp_path / "shared", tune={"n_trials": 2, "storage": pg_url(optuna_db)})
    STAGES["tune"](context(shared_root))

    parents = [r for r in runs_of(MlflowClient()) if "modelyard.study" in r.data.tags]
    assert len({p.data.tags["modelyard.study"] for p in parents}) == 1  # one study name ...
    assert sorted(p.data.tags["modelyard.optuna_store"] for p in parents) == ["journal", f"postgresql:{optuna_db}"]
    for parent in parents:  # ... and each store's parent has its own two trials and its own storage param
        children = [r for r in runs_of(MlflowClient()) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
        assert parent.data.params["storage"].startswith(
            "journal:" if "journal" in parent.data.tags["modelyard.optuna_store"] else "postgresql"
        )
