"""The only module that talks to MLflow runs: the store, experiments, runs, tags, logging.

Runs are driven through `MlflowClient` with explicit run ids rather than MLflow's global
"active run", so trials running side by side never log into each other's runs.
Metrics are logged once per epoch in one batch call, never per batch.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from modelyard.errors import ModelyardError, stop_if_terminated
from modelyard.files import process_alive
from modelyard.paths import home_root
from modelyard.redaction import redact

TAG_TASK = "modelyard.task"
TAG_FAMILY = "modelyard.family"
TAG_STAGE = "modelyard.stage"
TAG_STUDY = "modelyard.study"
TAG_TRIAL_STATE = "modelyard.trial_state"
PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
TRACKING_TIMEOUT_S = 10
TAG_HOST = "modelyard.host"  # the machine and process that opened a run, to tell a dead one
TAG_PID = "modelyard.pid"
TAG_END_REASON = "modelyard.end_reason"


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps `postgresql://` to psycopg 3; use the pinned psycopg2 when only it is installed."""
    if url.startswith("postgresql://") and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def tracking_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the embedded store `sqlite:///<checkout>/mlflow.db`."""
    return driver_url(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home_root(root) / 'mlflow.db'}")


def connect(root: Path) -> MlflowClient:
    """Point MLflow (tracking and registry) at the project's store and return a client,
    once the store has answered: an unreachable server or database is a clear error after
    `MODELYARD_TRACKING_TIMEOUT` seconds (default 10), not minutes of silent retries."""
    uri = tracking_uri(root)
    timeout = os.environ.get("MODELYARD_TRACKING_TIMEOUT", str(TRACKING_TIMEOUT_S))
    try:
        if float(timeout) <= 0:
            raise ValueError
    except ValueError:
        raise ModelyardError(
            f"MODELYARD_TRACKING_TIMEOUT={timeout!r} is not a number of seconds", "set it to e.g. 10, or unset it"
        ) from None
    # MLflow's own settings win where the user set them; a child process inherits these.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(round(float(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(max(2, round(float(timeout)))))  # libpq, for PostgreSQL stores
    try:
        if not uri.startswith(("http://", "https://", "sqlite:", "file:", "databricks")):
            # MLflow retries a database connection for about 100 s, whatever the timeout.
            import sqlalchemy

            sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool).connect().close()
        client = MlflowClient(uri, uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # HTTP, SQLAlchemy and driver errors all mean: no store there
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "sqlalche.me" not in line]
        reason = (lines or [""])[0][:300]
        raise ModelyardError(
            redact(f"cannot reach the MLflow store {uri}: {type(exc).__name__}: {reason}"),
            "start the tracking server or database, or point MLFLOW_TRACKING_URI at one that runs "
            "(unset it for the embedded store); MODELYARD_TRACKING_TIMEOUT sets the wait in seconds",
        ) from None
    mlflow.set_tracking_uri(uri)  # only a store that answered becomes the process's default
    mlflow.set_registry_uri(uri)
    return client


def experiment_id(client: MlflowClient, root: Path, task: str) -> str:
    """The task's experiment (one per task), created on first use; runs that a dead process
    of this host left RUNNING are closed first (`close_dead_runs`).

    With a database store (the embedded sqlite, or PostgreSQL) its artifacts go to
    `<checkout>/mlruns/<task>`; a tracking server chooses its own artifact root.
    """
    found = client.get_experiment_by_name(task)
    if found is not None:
        close_dead_runs(client, found.experiment_id)
        return found.experiment_id
    location = None
    if not tracking_uri(root).startswith(("http://", "https://")):
        location = (home_root(root) / "mlruns" / task).as_uri()
    return client.create_experiment(task, artifact_location=location)


def file_md5(path: Path) -> str:
    """The MD5 DVC records for a file dependency."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def lineage_tags(root: Path, task: str, family: str, stage: str, inputs: Mapping[str, Path]) -> dict[str, str]:
    """Tags that tie a run to its code and data: git commit, task, family, stage, and the
    DVC hash (MD5) of each stage input, as `dvc.md5.<file name>`."""
    tags = {TAG_TASK: task, TAG_FAMILY: family, TAG_STAGE: stage}
    commit = git_commit(root)
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    for name, path in inputs.items():
        tags[f"dvc.md5.{name}"] = file_md5(path)
    return tags


class Run:
    """One MLflow run, addressed by id."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        stop_if_terminated()  # the safe point where SIGTERM stops a training or tuning loop (each epoch)
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def start_run(
    client: MlflowClient, experiment: str, name: str, tags: Mapping[str, str], parent: Run | None = None
) -> Run:
    """A new run (a child of `parent` when given) with its tags set."""
    all_tags = {**tags, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    if parent is not None:
        all_tags[PARENT_TAG] = parent.run_id
    created = client.create_run(experiment, run_name=name, tags=all_tags)
    return Run(client, created.info.run_id)


def close_dead_runs(client: MlflowClient, experiment: str) -> list[str]:
    """End as FAILED the runs a process of this host left RUNNING and no longer runs (kill -9,
    a crash, a power cut), with the reason as a tag, and fail their PENDING logged models;
    returns their ids. A study's parent run is left to the study, which other hosts join."""
    host = socket.gethostname()
    found = client.search_runs(
        [experiment], filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'", max_results=500
    )
    dead = [
        run
        for run in found
        if TAG_STUDY not in run.data.tags
        and int(run.data.tags.get(TAG_PID, "0")) != os.getpid()
        and not process_alive(int(run.data.tags.get(TAG_PID, "0")))
    ]
    for run in dead:
        pid = run.data.tags.get(TAG_PID)
        client.set_tag(run.info.run_id, TAG_END_REASON, f"process {pid} on {host} ended without closing the run")
        client.set_terminated(run.info.run_id, "FAILED")
    ids = {run.info.run_id for run in dead}
    if ids:  # filtered here: a status filter is not portable across MLflow's database backends
        for model in client.search_logged_models([experiment], max_results=1000):
            if model.source_run_id in ids and model.status == LoggedModelStatus.PENDING:
                client.finalize_logged_model(model.model_id, "FAILED")
    return sorted(ids)


def find_run(client: MlflowClient, experiment: str, tags: dict[str, str]) -> Run | None:
    """The newest run of the experiment that carries every one of `tags`, if any."""
    found = client.search_runs(
        [experiment],
        filter_string=" and ".join(f"tags.`{name}` = '{value}'" for name, value in tags.items()),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return Run(client, found[0].info.run_id) if found else None


def resume(run: Run) -> Run:
    """Mark an existing run as running again (the parent run of a resumed study)."""
    run.client.update_run(run.run_id, status="RUNNING")
    return run
