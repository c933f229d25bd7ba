"""The only module that talks to MLflow runs: the store, experiments, runs, tags, logging.
(`registry.py` talks to the Model Registry; nothing else imports MLflow.) Every tag name
modelyard writes is defined here, once.

Runs are driven through `MlflowClient` with explicit run ids rather than MLflow's global
"active run", so trials running side by side never log into each other's runs.
Metrics are logged once per epoch in one batch call, never per batch. A trial's run buffers
its metrics, params and tags and writes them in one call at most every FLUSH_INTERVAL_S
seconds and when it ends: a store write costs about as much as a small trial's epoch.
A trial's run ends before Optuna is told the trial's state (never on a background thread):
a process killed in between would otherwise leave a trial COMPLETE in Optuna whose run
never ended in MLflow, with its metrics unwritten.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import closing
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, LoggedModelStatus, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from modelyard.data.sources import frame_hash
from modelyard.errors import ModelyardError, stop_if_terminated
from modelyard.files import process_alive
from modelyard.paths import home_root
from modelyard.redaction import redact

# Every tag modelyard writes (on runs and on model versions) is named here, once.
# Lineage, on every run:
TAG_TASK = "modelyard.task"
TAG_FAMILY = "modelyard.family"
TAG_STAGE = "modelyard.stage"
TAG_HOST = "modelyard.host"  # the machine and process that opened a run, to tell a dead one
TAG_PID = "modelyard.pid"
TAG_END_REASON = "modelyard.end_reason"
# Studies and trials:
TAG_STUDY = "modelyard.study"
TAG_STORE = "modelyard.optuna_store"  # which Optuna store the study lives in, on parent and trials
TAG_TRIAL = "modelyard.trial"  # "<study>/<trial number>" on each child run
TAG_TRIAL_STATE = "modelyard.trial_state"
TAG_FAIL_REASON = "modelyard.fail_reason"
TAG_BEST_TRIAL = "modelyard.best_trial"
# The train run: where the trained weights came from (retrained, ensemble, best_trial, ...).
TAG_TRAIN_SOURCE = "modelyard.train_source"
# Every decision about the champion (register, retrain, rollback) is a run carrying these;
# `modelyard history` lists them and `modelyard rollback` follows them back.
TAG_AUDIT = "modelyard.audit"
TAG_EVENT = "modelyard.event"
TAG_OUTCOME = "modelyard.outcome"
TAG_REASON = "modelyard.reason"
TAG_CHAMPION = "modelyard.champion_version"  # champion after the event
TAG_PREVIOUS = "modelyard.previous_champion"  # champion before the event
TAG_FALLBACK = "modelyard.fallback_version"  # where a rollback from this champion goes
TAG_CANDIDATE = "modelyard.candidate_version"
# Retraining: what the inputs were, and whether the retrain succeeded.
TAG_FINGERPRINT = "modelyard.fingerprint"
TAG_INPUT_VERSIONS = "modelyard.input_versions"
TAG_SUCCEEDED = "modelyard.retrain_succeeded"
# On model versions: the run that made it, the registration's decision, a rollback's time,
# and a SHA-256 over every file of the model (weights, pickles, MLmodel, bundled code) taken
# at registration and kept in the registry's database: a model whose artifacts were changed
# afterwards (by anyone with access to the artifact store alone) is refused before any of
# its pickles is loaded.
TAG_RUN_ID = "modelyard.run_id"
TAG_DECISION = "modelyard.decision"
TAG_ROLLED_BACK_AT = "modelyard.rolled_back_at"
TAG_DIGEST = "modelyard.files_sha256"
# MLflow's own:
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
TRACKING_TIMEOUT_S = 10
# How long a buffered run (a trial's) holds what it logged before writing it: the MLflow UI
# shows a running trial's epochs this late at most, and a killed trial loses at most this much.
FLUSH_INTERVAL_S = 5.0
# MLflow's limits for one log_batch call.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}
# The experiment kind MLflow's UI gives a model-training experiment. MLflow 3.17's UI still
# opens the GenAI view unless the link carries `?workflowType=machine_learning` (the README's
# and `make ui`'s links do) or the user picked "Model training" once in that browser.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION_TAG = "mlflow.note.content"  # the description MLflow shows above runs


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
    if "MLFLOW_TRACKING_URI" not in os.environ:
        follow_checkout(home_root(root))
    mlflow.set_tracking_uri(uri)  # only a store that answered becomes the process's default
    mlflow.set_registry_uri(uri)
    return client


# Where MLflow's database store keeps artifact locations: absolute paths and file:// URIs.
ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def follow_checkout(home: Path) -> list[str]:
    """Point the embedded store's artifact locations at this checkout's `mlruns/`.

    MLflow stores them as absolute paths, so a checkout that was moved, renamed or copied
    would read (and write) the artifacts of its old place, and `models:/adult@champion`
    would break. Locations under another folder's `mlruns/`, found from the experiments
    modelyard made, are rewritten in one transaction; returns the old folders (usually none).
    Task names are URL-safe in practice; one that `as_uri` would escape is left alone."""
    import sqlite3

    database, mlruns = home / "mlflow.db", home / "mlruns"
    if not database.is_file():
        return []
    with closing(sqlite3.connect(database, timeout=30)) as db, db:
        # only the experiments `experiment_id` made: `<checkout>/mlruns/<experiment name>`
        rows = db.execute("SELECT name, artifact_location FROM experiments").fetchall()
        moved = {
            loc.removesuffix(f"/mlruns/{name}") + "/mlruns/"
            for name, loc in rows
            if loc and loc.endswith(f"/mlruns/{name}")
        }
        here = {f"{mlruns.as_uri()}/", f"{mlruns}/"}
        for old in sorted(moved - here):
            new = f"{mlruns.as_uri()}/" if old.startswith("file:") else f"{mlruns}/"
            for table, column in ARTIFACT_COLUMNS:
                db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )
    return sorted(moved - here)


def experiment_id(client: MlflowClient, root: Path, task: str, description: str = "") -> str:
    """The task's experiment (one per task), created on first use; runs that a dead process
    of this host left RUNNING are closed first (`close_dead_runs`).

    With a database store (the embedded sqlite, or PostgreSQL) its artifacts go to
    `<checkout>/mlruns/<task>`; a tracking server chooses its own artifact root. The
    experiment gets MLflow's model-training kind and `description`, unless it has its own
    (a description edited in the UI stays).
    """
    found = client.get_experiment_by_name(task)
    if found is None:
        location = None
        if not tracking_uri(root).startswith(("http://", "https://")):
            location = (home_root(root) / "mlruns" / task).as_uri()
        tags = {**EXPERIMENT_KIND, **({DESCRIPTION_TAG: description} if description else {})}
        return client.create_experiment(task, artifact_location=location, tags=tags)
    close_dead_runs(client, found.experiment_id)
    for key, value in {**EXPERIMENT_KIND, DESCRIPTION_TAG: description}.items():
        if value and key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


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
    """Tags that tie a run to its code and data: MLflow's own context tags (user, source:
    the command that ran, relative to the checkout), git commit, task, family, stage, and
    the DVC hash (MD5) of each stage input, as `dvc.md5.<file name>`."""
    tags = {**resolve_tags(), "mlflow.source.name": _command(root)}
    tags |= {TAG_TASK: task, TAG_FAMILY: family, TAG_STAGE: stage}
    commit = git_commit(root)
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    for name, path in inputs.items():
        tags[f"dvc.md5.{name}"] = file_md5(path)
    return tags


def _command(root: Path) -> str:
    """This process's command line as a user typed it: `pipeline/train.py --task adult`,
    `modelyard train --task adult`."""
    program = Path(sys.argv[0])
    shown = program.name
    if program.is_file() and program.resolve().is_relative_to(root.resolve()) and program.parent.name == "pipeline":
        shown = str(program.resolve().relative_to(root.resolve()))
    return redact(shlex.join([shown, *sys.argv[1:]]))[:500]


# Rows a split's schema is inferred from: the validate stage has checked that each column
# holds one type, so more rows only cost time (MLflow checks each value of a text column).
SCHEMA_ROWS = 100


def schema_sample(frame: pd.DataFrame) -> pd.DataFrame:
    """The first SCHEMA_ROWS rows, plus each column's first missing value beyond them: the
    rows that give a split's schema, its optional (nullable) columns included."""
    head = frame.iloc[:SCHEMA_ROWS]
    missing = frame.iloc[SCHEMA_ROWS:].isna()
    extra = sorted({int(np.argmax(missing[column].to_numpy())) for column in missing if missing[column].any()})
    return pd.concat([head, frame.iloc[SCHEMA_ROWS:].iloc[extra]]) if extra else head


def dataset_inputs(
    task: str, target: str | None, splits: Mapping[str, tuple[Any, Path]], root: Path
) -> list[DatasetInput]:
    """The splits a run learned from or was scored on, as MLflow dataset inputs: name
    `<task>-<split>`, a digest of all its rows (`frame_hash`), schema, row count, the file
    as source, and the split's role (`training`, `validation`, `testing`) as its context.

    The schema is inferred from `schema_sample` rows, not all of them: MLflow checks every
    value of a text column in Python (0.4 s for 24,000 rows of Adult-like columns), and a split's
    columns hold one type each (the validate stage checked them)."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    contexts = {"train": "training", "val": "validation", "test": "testing"}
    inputs = []
    for split, (frame, path) in splits.items():
        source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        with warnings.catch_warnings():  # MLflow's hints about integer columns in schemas
            warnings.simplefilter("ignore")
            digest = frame_hash(frame)[:8]  # MLflow's own digest maps every cell in Python: 10x slower
            dataset = from_pandas(frame, source=source, name=f"{task}-{split}", targets=target, digest=digest)
            dataset.schema = infer_signature(schema_sample(frame)).inputs  # a cached property: set, not computed
        context = InputTag("mlflow.data.context", contexts.get(split, split))
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[context]))
    return inputs


class Run:
    """One MLflow run, addressed by id. A `buffered` run holds its metrics, params and tags
    until FLUSH_INTERVAL_S have passed since its last write, or it ends (`flush`)."""

    def __init__(self, client: MlflowClient, run_id: str, buffered: bool = False) -> None:
        self.client = client
        self.run_id = run_id
        self.buffered = buffered
        self.pending: dict[str, list] = {"metrics": [], "params": [], "tags": []}
        # A buffered run's first values wait like the rest (create_run already shows it
        # RUNNING in the UI): a trial shorter than FLUSH_INTERVAL_S writes once, at its end.
        self.written_at = time.monotonic() if buffered else -math.inf

    def _log(self, kind: str, entries: list) -> None:
        self.pending[kind].extend(entries)
        if not self.buffered or time.monotonic() - self.written_at >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write what the run holds, in as few log_batch calls as MLflow's limits allow."""
        while any(self.pending.values()):
            batch = {kind: entries[: BATCH_LIMITS[kind]] for kind, entries in self.pending.items()}
            self.pending = {kind: entries[BATCH_LIMITS[kind] :] for kind, entries in self.pending.items()}
            self.client.log_batch(self.run_id, **batch)
        self.written_at = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._log("params", [Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Log metrics at `step`; with `model_id` they also show on that logged model."""
        self.log_steps({step: metrics}, model_id)

    def log_steps(self, steps: Mapping[int, Mapping[str, float]], model_id: str | None = None) -> None:
        """Log each step's metrics, all in one write (a history the MLflow UI charts by step)."""
        stop_if_terminated()  # the safe point where SIGTERM stops a training or tuning loop (each epoch)
        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, step, model_id=model_id) for step, row in steps.items() for k, v in row.items()
        ]
        self._log("metrics", entries)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which the run holds metric `key`."""
        self.flush()
        return {metric.step for metric in self.client.get_metric_history(self.run_id, key)}

    def log_inputs(self, inputs: list[DatasetInput]) -> None:
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_figure(self, figure: Any, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)

    def log_dict(self, values: Mapping[str, Any] | list, path: str) -> None:
        self.client.log_dict(self.run_id, values if isinstance(values, list) else dict(values), path)

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def logged_params(self) -> dict[str, str]:
        """The params the run holds (MLflow params never change once logged)."""
        self.flush()
        return dict(self.client.get_run(self.run_id).data.params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._log("tags", [RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        """Write what is buffered, then end the run: FINISHED, FAILED or KILLED."""
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def start_run(
    client: MlflowClient,
    experiment: str,
    name: str,
    tags: Mapping[str, str],
    parent: Run | None = None,
    buffered: bool = False,
) -> Run:
    """A new run (a child of `parent` when given) with its tags set; see `Run` for `buffered`."""
    all_tags = {**tags, TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    if parent is not None:
        all_tags[PARENT_TAG] = parent.run_id
    created = client.create_run(experiment, run_name=name, tags=all_tags)
    return Run(client, created.info.run_id, buffered)


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


def search_runs(
    client: MlflowClient, experiment: str, tags: dict[str, str], newest_first: bool = True, max_results: int = 5000
) -> list:
    """The experiment's runs (MLflow's records: info, data.tags, ...) that carry every one of
    `tags`, by start time."""
    return client.search_runs(
        [experiment],
        filter_string=" and ".join(f"tags.`{name}` = '{value}'" for name, value in tags.items()),
        order_by=[f"attributes.start_time {'DESC' if newest_first else 'ASC'}"],
        max_results=max_results,
    )


def find_run(client: MlflowClient, experiment: str, tags: dict[str, str]) -> Run | None:
    """The newest run of the experiment that carries every one of `tags`, if any."""
    found = search_runs(client, experiment, tags, max_results=1)
    return Run(client, found[0].info.run_id) if found else None


def existing_experiment(client: MlflowClient, name: str) -> str | None:
    """The id of the experiment called `name`, or None when there is none (nothing is created)."""
    experiment = client.get_experiment_by_name(name)
    return None if experiment is None else experiment.experiment_id


def resume(run: Run) -> Run:
    """Mark an existing run as running again (the parent run of a resumed study)."""
    run.client.update_run(run.run_id, status="RUNNING")
    return run
