"""Where a study lives, and the trials its dead workers left behind.

An RDB storage (PostgreSQL, MySQL, SQLite) for a URL, with Optuna's heartbeat; else the
local journal file. Every trial records its worker (host, pid, a per-process token) and its
MLflow run id as user attributes. A RUNNING trial whose worker is gone is marked FAIL in
Optuna and its MLflow run FAILED (`fail_stale_trials`):
- a worker on this host is gone when its process no longer exists; this is checked when a
  command starts and after its workers exit, so a rerun after `kill -9` cleans up at once
  and live trials of other commands' workers on this host are left alone;
- on an RDB storage, Optuna's heartbeat also fails trials whose worker (on any host) has
  not reported for `GRACE_PERIOD_S`, and the stale-trial callback ends their MLflow runs;
- the local journal file has no heartbeat: a journal study is for one host, and a RUNNING
  trial that recorded no worker (its process died between asking for the trial and the
  objective's first line) is counted as stale there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelyard import tracking
from modelyard.console import say
from modelyard.errors import ModelyardError
from modelyard.files import process_alive
from modelyard.redaction import redact

HEARTBEAT_INTERVAL_S = 10

GRACE_PERIOD_S = 40

_TOKENS: dict[int, str] = {}


def worker_identity() -> dict[str, object]:
    """This process as a trial records it (host, pid, a token per process), so that another
    process can tell whether the trial's worker is still alive."""
    pid = os.getpid()
    token = _TOKENS.setdefault(pid, uuid.uuid4().hex)
    return {"host": socket.gethostname(), "pid": pid, "token": token}


def storage_label(url: str | None, journal: Path) -> str:
    """The storage as it may be shown or logged: the URL with its password redacted, or the journal path."""
    return redact(url) if url else f"journal:{journal}"


def open_storage(
    url: str | None,
    journal: Path,
    *,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    heartbeat: tuple[int, int] = (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S),
) -> optuna.storages.BaseStorage:
    """An RDB storage for a URL (PostgreSQL, MySQL, SQLite) with Optuna's heartbeat, else the
    local journal file. `on_stale(study, trial)` runs for each trial the heartbeat fails."""
    if url:
        interval, grace = heartbeat
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    tracking.driver_url(url),
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except Exception as exc:  # the driver's own errors vary by backend
            raise ModelyardError(
                f"cannot open Optuna storage {redact(url)}: {redact(f'{type(exc).__name__}: {exc}')}",
                "check tune.storage in params.yaml (or --storage): the server, database name and user",
            ) from None
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def store_identity(url: str | None) -> str:
    """Which Optuna store a study lives in, the same from every machine that joins it: the
    journal file, or the URL's backend and database (no host or user, which may differ)."""
    if not url:
        return "journal"
    parts = urlsplit(url)
    return f"{parts.scheme.split('+')[0]}:{parts.path.lstrip('/')}"


def worker_gone(trial: FrozenTrial, *, heartbeat: bool) -> bool:
    """Whether the process running a RUNNING trial is known to be gone.

    Only workers on this host can be checked; elsewhere the RDB heartbeat decides. A trial
    that recorded no worker is gone on the journal file (one host, and the gap between asking
    for a trial and recording its worker is a few milliseconds). On an RDB storage such a
    trial is gone once it is older than the heartbeat's grace period: a worker killed in that
    gap may not have sent a heartbeat either, and would otherwise stay RUNNING for ever.
    """
    owner, me = trial.user_attrs.get("worker"), worker_identity()
    if not isinstance(owner, dict):
        started = trial.datetime_start
        age_s = (datetime.now() - started).total_seconds() if started else 0.0
        return not heartbeat or age_s > GRACE_PERIOD_S
    if owner.get("token") == me["token"] or owner.get("host") != me["host"]:
        return False
    if owner.get("pid") == me["pid"]:
        return True  # the pid now belongs to this process: the old owner is gone
    return not process_alive(int(owner.get("pid", 0)))


def close_trial_run(client, experiment: str, study_name: str, trial: FrozenTrial, reason: str) -> None:
    """End a failed trial's MLflow run as FAILED, with the reason, found by the run id the
    trial recorded or else by its `modelyard.trial` tag."""
    try:
        run_id = trial.user_attrs.get("mlflow_run_id")
        run = tracking.Run(client, run_id) if run_id else None
        if run is None:
            run = tracking.find_run(client, experiment, {tracking.TAG_TRIAL: f"{study_name}/{trial.number}"})
        if run is None:
            return
        run.set_tags({tracking.TAG_TRIAL_STATE: "FAIL", tracking.TAG_FAIL_REASON: reason})
        run.finish("FAILED")
    except Exception as exc:  # the Optuna side is what matters; MLflow may be down
        say(redact(f"warning: could not mark the MLflow run of trial {trial.number} failed: {exc}"))


def fail_stale_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, client=None, experiment: str | None = None
) -> list[FrozenTrial]:
    """Mark RUNNING trials whose worker is gone as failed, in Optuna and in MLflow.

    Trials of dead processes on this host first, with the reason as `fail_reason`; then, on
    an RDB storage with a heartbeat, Optuna's own check for the rest (workers on other
    hosts; its callback, set by `open_storage`, ends their MLflow runs). In that order a
    worker killed here keeps its precise reason even when the rerun comes after the
    heartbeat's grace period. `storage` is the study's (`open_storage`): Optuna's public
    storage API records the reason.
    """
    heartbeat = getattr(storage, "get_heartbeat_interval", lambda: None)() is not None
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if worker_gone(t, heartbeat=heartbeat)
    ]
    reason = "worker process killed mid-trial"
    study_id = storage.get_study_id_from_name(study.study_name) if stale else None
    for trial in stale:
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        if client is not None and experiment is not None:
            close_trial_run(client, experiment, study.study_name, trial, reason)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return stale


def stale_run_closer(client, experiment: str) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The RDB heartbeat's stale-trial callback: end the failed trial's MLflow run too.

    (Optuna has already finished the trial, so no `fail_reason` attribute can be added.)
    """

    def close(study: optuna.Study, trial: FrozenTrial) -> None:
        close_trial_run(client, experiment, study.study_name, trial, "worker stopped sending heartbeats mid-trial")

    return close


@contextlib.contextmanager
def heartbeats(storage: optuna.storages.BaseStorage, study: optuna.Study, numbers: list[int]) -> Iterator[None]:
    """Send the RDB heartbeat of trials asked with `study.ask` (which, unlike
    `study.optimize`, sends none) while the block runs, so that other machines do not take
    them for stale. Nothing on a storage without a heartbeat (the journal file)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None or not numbers:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers]
    done = threading.Event()

    def beat() -> None:
        while not done.is_set():
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)
            done.wait(interval)

    thread = threading.Thread(target=beat, name="modelyard-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
