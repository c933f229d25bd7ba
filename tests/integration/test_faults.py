"""Faults cost at most the trial in flight: `kill -9` of the tune stage, a NaN loss, a CUDA
out-of-memory error, a kill during train, and passwords in storage URLs. Real Optuna
journal storage, real MLflow store, the toy task; the data stages run once per session."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import weakref
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from modelyard import tracking
from modelyard.cli import main
from modelyard.errors import ModelyardError
from modelyard.redaction import redact
from modelyard.stages import STAGES, Context
from modelyard.tuning import storage as tuning_storage
from modelyard.tuning import trials as tuning_trials
from tests.conftest import REPO
from tests.integration.helpers import context, copy_project, migrated_sqlite, wait_for

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---------------------------------------------------------------- helpers (also used by test_postgres)


def study_of(root: Path, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The study the tune stage wrote (named in best_params.json), from its journal by default."""
    ctx = context(root)
    name = json.loads(ctx.paths.best_params.read_text())["study"]
    storage = storage or tuning_storage.open_storage(None, ctx.paths.study_journal)
    return optuna.load_study(study_name=name, storage=storage)


def runs_of(client: MlflowClient, experiment_name: str = "toy") -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], max_results=5000)


def child_runs(client: MlflowClient, study_name: str) -> dict[int, list]:
    """The study's trial runs, by trial number, under its one parent run."""
    runs = runs_of(client)
    parents = [r for r in runs if r.data.tags.get("modelyard.study") == study_name]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    children: dict[int, list] = {}
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id:
            number = int(run.data.tags[tracking.TAG_TRIAL].rsplit("/", 1)[1])
            children.setdefault(number, []).append(run)
    return children


def assert_study_recovered(study: optuna.Study, client: MlflowClient, n_trials: int, killed: dict) -> None:
    """After a kill and a rerun: the killed trials failed (Optuna and MLflow), the finished
    ones kept, every trial one child run, no run left RUNNING."""
    trials = {t.number: t for t in study.get_trials()}
    for number, (state, value) in killed.items():
        if state == TrialState.RUNNING:
            assert trials[number].state == TrialState.FAIL
            assert trials[number].user_attrs["fail_reason"] == "worker process killed mid-trial"
        else:
            assert (trials[number].state, trials[number].value) == (state, value)
    assert len([t for t in trials.values() if t.state in FINISHED]) >= n_trials
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    children = child_runs(client, study.study_name)
    assert all(len(runs) == 1 for runs in children.values())
    for number, trial in trials.items():
        if "mlflow_run_id" in trial.user_attrs:
            (run,) = children[number]
            assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
            assert run.info.status == tuning_trials.RUN_STATUS[trial.state]
            assert run.data.tags["modelyard.trial_state"] == trial.state.name
    for number, (state, _) in killed.items():
        if state == TrialState.RUNNING and number in children:
            assert children[number][0].data.tags["modelyard.fail_reason"] == "worker process killed mid-trial"
    assert all(r.info.status != "RUNNING" for r in runs_of(client))


def trial_snapshot(study: optuna.Study) -> dict[int, tuple[TrialState, float | None]]:
    return {t.number: (t.state, t.value) for t in study.get_trials()}


def mid_study(study: optuna.Study) -> bool:
    """At least one trial finished and one running with its MLflow run started."""
    trials = study.get_trials()
    return any(t.state == TrialState.COMPLETE for t in trials) and any(
        t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials
    )


def start_stage(root: Path, stage: str, *args: str, log: Path) -> subprocess.Popen:
    """`python pipeline/<stage>.py --task toy ...` in `root`, as DVC runs it."""
    command = [sys.executable, str(REPO / "pipeline" / f"{stage}.py"), "--task", "toy", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=root, stdout=out, stderr=subprocess.STDOUT)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


# ---------------------------------------------------------------- tune: kill -9, NaN, OOM


def test_kill_mid_study_then_rerun(template: Path, tmp_path: Path, mlflow_store: str) -> None:
    n_trials = 6
    root = copy_project(template, tmp_path, tune={"n_trials": n_trials, "max_epochs": 8})
    ctx = context(root)
    log = tmp_path / "tune.log"
    process = start_stage(root, "tune", log=log)
    try:
        storage = tuning_storage.open_storage(None, ctx.paths.study_journal)

        def running_study() -> optuna.Study | None:
            assert process.poll() is None, f"tune ended before it could be killed:\n{log.read_text()}"
            summaries = storage.get_all_studies()
            study = optuna.load_study(study_name=summaries[0].study_name, storage=storage) if summaries else None
            return study if study is not None and mid_study(study) else None

        study = wait_for(running_study, 120, "a finished trial and a running one")
    finally:
        kill(process)
    killed = trial_snapshot(study)
    assert TrialState.RUNNING in {state for state, _ in killed.values()}

    STAGES["tune"](ctx)  # the rerun

    study = study_of(root)
    assert_study_recovered(study, MlflowClient(), n_trials, killed)
    assert len([t for t in study.get_trials() if t.state in FINISHED]) == n_trials
    best = json.loads(ctx.paths.best_params.read_text())
    assert best["best_trial"] == study.best_trial.number
    assert best["val_loss"] == pytest.approx(study.best_value)  # 64 validation rows: ranked on the loss


def test_nan_loss_fails_the_trial_with_its_reason(
    template: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first trial trains on infinite inputs: a real NaN loss in the real loop (trials
    one at a time; a fused member's divergence is tests/unit/test_fused.py's)."""
    root = copy_project(template, tmp_path, tune={"fuse": "off"})
    real_fit, calls = tuning_trials.fit, []

    def fit_poisoning_the_first_trial(model, train, val, hparams, options, on_epoch_end=None):
        calls.append(1)
        if len(calls) == 1:
            train = (np.full_like(train[0], np.inf), train[1])
        return real_fit(model, train, val, hparams, options, on_epoch_end)

    monkeypatch.setattr(tuning_trials, "fit", fit_poisoning_the_first_trial)
    ctx = context(root)
    STAGES["tune"](ctx)

    study = study_of(root)
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("TrainingDiverged: training loss became nan")
    assert len([t for t in study.trials if t.state in FINISHED]) == 3  # the study went on to the count
    (run,) = child_runs(MlflowClient(), study.study_name)[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["modelyard.trial_state"] == "FAIL"
    assert "nan" in run.data.tags["modelyard.fail_reason"]
    trials = json.loads(ctx.paths.best_params.read_text())["trials"]
    assert trials["failed"] == 1 and trials["complete"] + trials["pruned"] == 3


def test_cuda_out_of_memory_fails_the_trial_and_frees_its_memory(
    template: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU: the first trial raises torch.cuda.OutOfMemoryError holding its model. By
    the next trial that model is gone and the CUDA cache was emptied once."""
    root = copy_project(template, tmp_path, tune={"fuse": "off"})
    real_fit, models, alive_at_next_trial = tuning_trials.fit, [], []
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    def fit_out_of_memory_once(model, train, val, hparams, options, on_epoch_end=None):
        if not models:
            models.append(weakref.ref(model))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        alive_at_next_trial.append(models[0]() is not None)
        return real_fit(model, train, val, hparams, options, on_epoch_end)

    monkeypatch.setattr(tuning_trials, "fit", fit_out_of_memory_once)
    STAGES["tune"](context(root))

    assert alive_at_next_trial[0] is False
    assert emptied == [1]
    study = study_of(root)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert len([t for t in study.trials if t.state in FINISHED]) == 3
    (run,) = child_runs(MlflowClient(), study.study_name)[0]
    assert run.info.status == "FAILED" and "OutOfMemoryError" in run.data.tags["modelyard.fail_reason"]


def test_a_fused_batch_that_runs_out_of_memory_fails_its_trials_and_the_study_goes_on(
    template: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials asked together train as one stacked model; when that model raises, each of
    its trials fails with the reason, its run ends FAILED, and later batches train."""
    from modelyard import fused

    root = copy_project(template, tmp_path, tune={"fuse": 2, "n_trials": 4})
    real_fit_fused, calls = fused.fit_fused, []

    def fit_fused_out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_fit_fused(*args, **kwargs)

    monkeypatch.setattr(fused, "fit_fused", fit_fused_out_of_memory_once)
    STAGES["tune"](context(root))

    study = study_of(root)
    assert [t.state for t in study.trials[:2]] == [TrialState.FAIL] * 2  # the first batch, fused
    assert all(t.user_attrs["fail_reason"].startswith("OutOfMemoryError") for t in study.trials[:2])
    assert len([t for t in study.trials if t.state in FINISHED]) == 4 and len(calls) >= 2
    children = child_runs(MlflowClient(), study.study_name)
    for number in (0, 1):
        (run,) = children[number]
        assert run.info.status == "FAILED" and "OutOfMemoryError" in run.data.tags["modelyard.fail_reason"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_out_of_memory_returns_gpu_memory(
    template: Path, tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial that holds 1 GiB on the GPU and then asks for far too much: after it, the
    allocated and reserved GPU memory are back where they were before it (trials one at a time)."""
    root = copy_project(template, tmp_path, tune={"fuse": "off"})
    real_fit, levels = tuning_trials.fit, []

    def fit_exhausting_the_gpu(model, train, val, hparams, options, on_epoch_end=None):
        if not levels:
            levels.append((torch.cuda.memory_allocated(), torch.cuda.memory_reserved()))
            held = torch.ones(256 * 2**20, device="cuda")
            torch.empty(2**50, dtype=torch.uint8, device="cuda")  # raises OutOfMemoryError
            del held
        elif len(levels) == 1:
            levels.append((torch.cuda.memory_allocated(), torch.cuda.memory_reserved()))
        return real_fit(model, train, val, hparams, options, on_epoch_end)

    monkeypatch.setattr(tuning_trials, "fit", fit_exhausting_the_gpu)
    STAGES["tune"](context(root))
    assert levels[1] == levels[0]
    assert study_of(root).trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError")


def test_stale_check_spares_live_workers_and_fails_dead_ones(tmp_path: Path, mlflow_store: str) -> None:
    """On the journal file several commands may share a study: only trials whose process is
    gone are failed; a trial killed before recording its run id still gets its run FAILED."""
    storage = tuning_storage.open_storage(None, tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=storage)
    client = tracking.connect(tmp_path)
    experiment = client.create_experiment("toy", artifact_location=(tmp_path / "art").as_uri())
    parent = tracking.start_run(client, experiment, "study-s", {"modelyard.study": "s"})
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    try:
        owners = {
            "live": {"host": host, "pid": sleeper.pid, "token": "a"},
            "dead": {"host": host, "pid": gone.pid, "token": "b"},
            "remote": {"host": "another-host", "pid": 1, "token": "c"},
        }
        trials = {}
        for name, owner in owners.items():
            trials[name] = study.ask()
            trials[name].set_user_attr("worker", owner)
        trials["unowned"] = study.ask()  # killed between asking for the trial and recording its worker
        orphan_run = tracking.start_run(
            client, experiment, "trial-1", {tracking.TAG_TRIAL: f"s/{trials['dead'].number}"}, parent=parent
        )

        failed = tuning_storage.fail_stale_trials(study, storage, client, experiment)

        assert {t.number for t in failed} == {trials["dead"].number, trials["unowned"].number}
        states = {name: study.trials[t.number].state for name, t in trials.items()}
        assert states == {
            "live": TrialState.RUNNING,
            "dead": TrialState.FAIL,
            "remote": TrialState.RUNNING,
            "unowned": TrialState.FAIL,
        }
        run = client.get_run(orphan_run.run_id)
        assert run.info.status == "FAILED" and run.data.tags["modelyard.trial_state"] == "FAIL"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    assert [t.number for t in tuning_storage.fail_stale_trials(study, storage, client, experiment)] == [
        trials["live"].number
    ]


# ---------------------------------------------------------------- train: kill, interrupted save, failed logging


@pytest.fixture(scope="module")
def registered(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy pipeline through register (version 1 is champion), with its own MLflow store."""
    folder = tmp_path_factory.mktemp("registered")
    root = copy_project(template, folder, tune={"n_trials": 2, "max_epochs": 2}, train={"max_epochs": 2})
    shutil.copy(migrated_sqlite(tmp_path_factory), folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        ctx = context(root)
        for stage in ("tune", "train", "evaluate", "register"):
            STAGES[stage](ctx)
    return folder


@pytest.fixture
def trained_copy(registered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the registered project and its MLflow store (the champion's artifacts stay shared)."""
    shutil.copy(registered / "mlflow.db", tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    root = copy_project(registered / "project", tmp_path)
    # Retraining is deterministic: a replaced model could have the same bytes. This file
    # is only in the previous model folder.
    (context(root).paths.model_dir / "previous.txt").write_text("the model before this test\n")
    return root


def model_files(ctx: Context) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ctx.paths.model_dir.iterdir())}


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias("toy", "champion").version)


def leftovers(ctx: Context) -> list[str]:
    return [p.name for p in ctx.paths.dir.iterdir() if p.name.startswith((".model.", ".train.json."))]


def train_runs(client: MlflowClient) -> list:
    return [r for r in runs_of(client) if r.info.run_name == "train-toy"]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_kill_during_train_keeps_the_previous_model_and_ends_its_run(
    trained_copy: Path, tmp_path: Path, how: signal.Signals
) -> None:
    root = trained_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tasks"]["toy"]["train"].update({"max_epochs": 2000, "patience": 2000})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = context(root)
    before, summary = model_files(ctx), ctx.paths.train_summary.read_text()
    command = [sys.executable, str(REPO / "pipeline" / "train.py"), "--task", "toy"]
    process = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + 120
        while not (seen and seen[-1].startswith("train toy epoch")):  # fit is under way
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            assert seen[-1] is not None, "train ended before it could be killed:\n" + "".join(seen[:-1])
    finally:
        process.send_signal(how)
        code = process.wait(timeout=60)
    assert model_files(ctx) == before
    assert ctx.paths.train_summary.read_text() == summary
    assert champion() == "1"
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # this test's store copy
    [run] = [r for r in train_runs(client) if r.data.tags["modelyard.pid"] == str(process.pid)]
    if how == signal.SIGTERM:  # caught: the run ends FAILED and nothing half-written is left
        assert code == 143 and run.info.status == "FAILED" and not leftovers(ctx)
        return
    # kill -9 cannot be caught: the run stays RUNNING, and a half-written model may stay behind
    # until the next command, which sees that the process is gone and cleans up after it
    assert run.info.status == "RUNNING"
    (ctx.paths.dir / f".model.tmp-{process.pid}").mkdir(exist_ok=True)
    assert main(["evaluate", "--task", "toy", "--params", str(root / "params.yaml")]) == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED" and f"process {process.pid}" in run.data.tags["modelyard.end_reason"]
    assert not leftovers(ctx)


def test_interrupted_model_save_keeps_the_previous_model(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle's weights are half written when the save stops: the old bundle stays whole."""
    ctx = context(trained_copy)
    before = model_files(ctx)

    def half_written(state, path):
        Path(path).write_bytes(b"\x80\x02 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("modelyard.bundle.torch.save", half_written)
    with pytest.raises(OSError, match="No space left"):
        STAGES["train"](ctx)
    assert model_files(ctx) == before
    assert not leftovers(ctx)
    assert champion() == "1"
    (train_run,) = [
        r for r in runs_of(MlflowClient()) if r.info.run_name == "train-toy" and r.info.status != "FINISHED"
    ]
    assert train_run.info.status == "FAILED"


def test_failed_model_logging_keeps_the_previous_model(trained_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(trained_copy)
    before, summary = model_files(ctx), ctx.paths.train_summary.read_text()

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr("modelyard.registry.log_bundle", unreachable)
    with pytest.raises(ConnectionError):
        STAGES["train"](ctx)
    assert champion() == "1"
    assert ctx.paths.train_summary.read_text() == summary
    assert model_files(ctx) == before


# ---------------------------------------------------------------- passwords


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://tuner:s3cret@db:5432/optuna", "postgresql://tuner:***@db:5432/optuna"),
        ("postgresql+psycopg2://u:p@ss@h/db and more", "postgresql+psycopg2://u:***@h/db and more"),
        ("at 'http://me:s3cret@mlflow:5000/'", "at 'http://me:***@mlflow:5000/'"),
        (
            "postgresql://h/db?user=u&password=s3cret&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("postgresql://tuner@db/optuna", "postgresql://tuner@db/optuna"),
        ("models:/toy@champion", "models:/toy@champion"),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
        ("postgresql://u:pa'ss@host/db", "postgresql://u:***@host/db"),  # a quote in the password
        ("x 'postgresql://u:pa ss@host/db' y", "x 'postgresql://u:***@host/db' y"),  # a space
        ("postgresql://u:pa%27s%40s@host/db", "postgresql://u:***@host/db"),  # percent-encoded
        ("host=db password='pa ss' user=u", "host=db password=*** user=u"),  # libpq keywords, quoted
        ("postgresql://h/db?password=x%20y", "postgresql://h/db?password=***"),
    ],
)
def test_redact_replaces_passwords_only(text: str, expected: str) -> None:
    assert redact(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=4, max_size=24))
def test_no_password_survives_redaction(password: str) -> None:
    url = f"postgresql://tuner:{password}@db:5432/optuna"
    assume(password not in "postgresql://tuner:***@db:5432/optuna")
    for text in (f"cannot reach {url} now", f"'{url}'", f"host=db password='{password}'"):
        assert password not in redact(text)


def test_storage_error_does_not_show_the_password(tmp_path: Path) -> None:
    with pytest.raises(ModelyardError) as raised:
        tuning_storage.open_storage("postgresql://tuner:s3cret@127.0.0.1:1/optuna", tmp_path / "unused.journal")
    message = str(raised.value)
    assert "s3cret" not in message
    assert "postgresql://tuner:***@127.0.0.1:1/optuna" in message
    assert "127.0.0.1" in message and "port 1" in message  # the driver's reason is kept


def test_tune_with_an_unreachable_storage_is_one_clean_error(
    template: Path, tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture
) -> None:
    root = copy_project(template, tmp_path)
    url = "postgresql://tuner:s3cret@127.0.0.1:1/optuna"
    code = main(["tune", "--task", "toy", "--params", str(root / "params.yaml"), "--storage", url])
    err = capsys.readouterr().err
    assert code == 2
    assert "s3cret" not in err and "Traceback" not in err
    assert "tuner:***@127.0.0.1:1/optuna" in err and "fix:" in err
    assert all("s3cret" not in json.dumps([r.data.params, r.data.tags]) for r in runs_of(MlflowClient()))
    assert not os.path.exists(root / "data" / "toy" / "best_params.json")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1", "postgresql://tuner:s3cret@127.0.0.1:1/mlflow"])
def test_an_unreachable_tracking_store_is_one_clean_error(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, uri: str
) -> None:
    root = copy_project(template, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MODELYARD_TRACKING_TIMEOUT", "2")
    assert main(["history", "--task", "toy", "--params", str(root / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the MLflow store" in err and "127.0.0.1" in err and "MLFLOW_TRACKING_URI" in err
    assert "s3cret" not in err and "Traceback" not in err


# ---------------------------------------------------------------- model files


def test_a_champion_whose_files_changed_is_refused_before_unpickling(
    trained_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's store copy, for runs and registry
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias("toy", "champion")
    assert len(version.tags["modelyard.files_sha256"]) == 64  # recorded at registration
    model_id = version.source.removeprefix("models:/")
    folder = Path(urllib.parse.urlparse(client.get_logged_model(model_id).artifact_location).path)
    pickled = folder / "python_model.pkl"
    original = pickled.read_bytes()
    tmp_rows = trained_copy / "rows.csv"
    pd.read_parquet(context(trained_copy).paths.split_file("test")).drop(columns=["label"]).to_csv(
        tmp_rows, index=False
    )
    try:
        pickled.write_bytes(original + b"\x00")  # what someone with write access to the artifacts could do
        out = trained_copy / "out.csv"
        command = ["predict", "--task", "toy", "--params", str(trained_copy / "params.yaml")]
        assert main([*command, "--input", str(tmp_rows), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert "differ from those registered (SHA-256 mismatch)" in err and not out.exists()
    finally:
        pickled.write_bytes(original)
    assert main([*command, "--input", str(tmp_rows), "--output", str(out)]) == 0  # the files restored, it loads
