"""Optuna tuning: the search space from params, seeded TPE, pruning on the per-epoch
validation metric, a resumable study shared by any number of worker processes, and one
MLflow child run per trial under one parent run per study.

A study is named after a fingerprint of everything that shapes it (features, search
space, fixed hyperparameters, budget, seed), so rerunning after an interruption continues
the same study up to the requested number of finished (complete or pruned) trials, while
changed inputs start a fresh one. The same command on another machine, pointed at the
same RDB storage, joins the same study.

Workers. `run_study` creates (or loads) the study and the MLflow parent run, then runs
trials itself (`workers=1`) or in `workers` processes started with the "spawn" context.
Each worker calls the same `make_objective` and stops once the study as a whole holds
`trial_target` finished trials (`n_trials`, or fewer when the search space holds fewer
configurations; `MaxTrialsCallback`, and workers running side by side may finish up to
`workers - 1` trials beyond the count), or after that many failed trials of its own.

Search. The space is the task's `tune.search_space` completed by the family's defaults
(`search_space.py`). A space with no more configurations than trials is enumerated, each
configuration once; otherwise TPE draws, and a configuration it draws again reuses the
earlier trial's value instead of training it twice. A trial that beats the study's best
so far (on a small validation split, every completed trial: see `selection.py`) saves its
weights under `checkpoint_dir`, so the train stage can keep them.

Faults. Every trial records its worker (host, pid, a per-process token) and its MLflow run
id as user attributes. A RUNNING trial whose worker is gone is marked FAIL in Optuna and
its MLflow run FAILED (`fail_stale_trials`):
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

import gc
import hashlib
import json
import logging
import math
import multiprocessing
import os
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from modelyard import tracking
from modelyard.config import Distribution, Hyperparams, TaskSettings, TuneSettings, hparam_kind
from modelyard.console import say
from modelyard.errors import ModelyardError
from modelyard.evaluation import lower_is_better
from modelyard.files import process_alive
from modelyard.models import build_model
from modelyard.redaction import redact
from modelyard.search_space import describe, space_size
from modelyard.selection import applies
from modelyard.training import AUTO_TUNE, FitOptions, TrainingDiverged, epoch_budget, fit, save_checkpoint

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A pruned trial did what the pruner asked: its run ends FINISHED, named "trial-<n> pruned",
# so only failures carry MLflow's red cross.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}
TAG_TRIAL = "modelyard.trial"  # "<study>/<trial number>" on each child run
TAG_STORE = "modelyard.optuna_store"  # `store_identity` of the study's storage, on parent and trials
TAG_FAIL_REASON = "modelyard.fail_reason"
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 40
QUIET_LOGGERS = ("alembic", "mlflow", "optuna", "urllib3", "git")

_TOKENS: dict[int, str] = {}


def worker_identity() -> dict[str, object]:
    """This process as a trial records it (host, pid, a token per process), so that another
    process can tell whether the trial's worker is still alive."""
    pid = os.getpid()
    token = _TOKENS.setdefault(pid, uuid.uuid4().hex)
    return {"host": socket.gethostname(), "pid": pid, "token": token}


@dataclass(frozen=True)
class Arrays:
    """Featurized training and validation data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_outputs: int
    vocab_size: int | None = None  # text tasks: the embedding's size
    masked: bool = False  # sequence classification: the last input channel is a step mask
    n_numeric: int = 0  # tabular tasks: the trailing numeric feature columns
    target_scale: float = 1.0  # regression: val_rmse in target units
    target_offset: float = 0.0  # regression: with the scale, values back in target units


@dataclass(frozen=True)
class StudyResult:
    study_name: str
    best_params: dict
    best_value: float
    best_trial: int
    n_complete: int
    n_pruned: int
    n_failed: int
    complete: tuple[tuple[int, float, dict], ...] = ()  # (number, value, params) of each trained, completed trial
    minimize: bool = True  # the study's direction


@dataclass(frozen=True)
class StudySetup:
    """Everything a worker needs to run trials of one study. Plain values, so a spawned
    worker receives it whole (the storage URL travels through a pipe, never a command line)."""

    task_name: str
    task: TaskSettings
    arrays: Arrays
    study_name: str
    storage_url: str | None
    journal: Path
    seed: int
    device: str
    root: Path  # finds the MLflow store, as in the parent process
    experiment: str
    parent_run_id: str
    trial_tags: dict[str, str]
    heartbeat: tuple[int, int] = (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S)
    checkpoint_dir: Path | None = None  # where a trial that beats the study's best (small data: each) saves weights
    datasets: tuple = ()  # MLflow dataset inputs (the train and validation splits) of every trial run


class TrialFailed(RuntimeError):
    """A trial ended in an error; the message is the recorded (redacted) reason."""


def suggest_hparams(trial: optuna.Trial, base: Hyperparams, space: dict[str, Distribution]) -> Hyperparams:
    """The trial's hyperparameters: the fixed ones from params, with the searched ones drawn."""
    drawn: dict[str, object] = {}
    for name, dist in space.items():
        if dist.choices is None and dist.low == dist.high:  # a fixed value: nothing to draw
            drawn[name] = int(dist.low) if hparam_kind(name) is int else dist.low
        elif dist.choices is not None:
            drawn[name] = trial.suggest_categorical(name, list(dist.choices))
        elif hparam_kind(name) is int:
            step = int(dist.step or 1)
            drawn[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log, step=step)
        else:
            drawn[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return Hyperparams.model_validate({**base.model_dump(), **drawn})


def warm_start_params(hparams: Hyperparams, space: dict[str, Distribution]) -> dict[str, Any]:
    """The searched hyperparameters of an earlier model that the current search space still
    holds: the first trial of a warm-started study."""
    chosen: dict[str, Any] = {}
    for name, dist in space.items():
        value = getattr(hparams, name)
        inside = value in dist.choices if dist.choices is not None else dist.low <= value <= dist.high
        if inside:
            chosen[name] = value
    return chosen


def pruner_warmup(task: TaskSettings, n_train: int) -> int:
    """Epochs the median pruner leaves every trial alone: a tenth of the shortest trial's
    epoch budget (twice the learning rate's warm-up), at least 3. Before that, small data
    (a few steps an epoch) has every trial still at chance level, and pruning on those
    values would cut good configurations on noise."""
    searched = task.tune.search_space.get("batch_size")
    if searched is None:
        batch_sizes = [task.model.batch_size]
    else:
        batch_sizes = list(searched.choices) if searched.choices is not None else [searched.low, searched.high]
    shortest = min(epoch_budget(task.tune.max_epochs, AUTO_TUNE, n_train, int(b)) for b in batch_sizes)
    return max(3, shortest // 10)


def make_pruner(name: str, max_epochs: int | None, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner; the median pruner judges no trial in its first `warmup_epochs`."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or "auto")
    return optuna.pruners.NopPruner()


def trial_target(task: TaskSettings) -> int:
    """How many finished trials a study runs: `n_trials`, or fewer when the search space
    holds fewer configurations (a space with nothing to search runs one trial)."""
    return int(min(task.tune.n_trials, space_size(task.tune.search_space)))


def make_sampler(task: TaskSettings, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE; a space with no more configurations than trials is enumerated instead,
    each configuration once (Optuna's brute-force sampler ends the study when all have run)."""
    if space_size(task.tune.search_space) <= task.tune.n_trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.BruteForceSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


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


def study_fingerprint(features_md5: str, task: TaskSettings, seed: int) -> str:
    """A short hash of everything that shapes a study; it names the study.

    The trial count and the storage are left out: asking for more trials continues the
    same study, and every machine joining it computes the same name.
    """
    shape = {
        "features": features_md5,
        "tune": task.tune.model_dump(mode="json", exclude={"storage", "n_trials"}),
        "model": task.model.model_dump(mode="json"),
        "monitor": task.monitor,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def sampler_seed(seed: int, shared: bool) -> int:
    """The TPE seed: the task's seed for a study driven by one process; mixed with the
    worker's identity when several workers (here or on other machines) share the study,
    so that they do not all draw the same trials."""
    if not shared:
        return seed
    key = f"{seed}:{json.dumps(worker_identity(), sort_keys=True)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def load_study(
    name: str, storage: optuna.storages.BaseStorage, task: TaskSettings, seed: int, n_train: int
) -> optuna.Study:
    """Create the study, or load it when it exists, with the seeded sampler and the pruner
    (sized from the `n_train` training rows)."""
    settings = task.tune
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="minimize" if lower_is_better(task.monitor) else "maximize",
        sampler=make_sampler(task, seed),
        pruner=make_pruner(settings.pruner, settings.max_epochs, pruner_warmup(task, n_train)),
        load_if_exists=True,
    )
    if study.metric_names is None:  # optuna-dashboard labels the objective with it
        study.set_metric_names([task.monitor])
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # resumed: a sampler seeded as at the start would draw the first trials again
        study.sampler = make_sampler(task, (seed + 7919 * existing) % 2**32)
    return study


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
            run = tracking.find_run(client, experiment, {TAG_TRIAL: f"{study_name}/{trial.number}"})
        if run is None:
            return
        run.set_tags({tracking.TAG_TRIAL_STATE: "FAIL", TAG_FAIL_REASON: reason})
        run.finish("FAILED")
    except Exception as exc:  # the Optuna side is what matters; MLflow may be down
        say(redact(f"warning: could not mark the MLflow run of trial {trial.number} failed: {exc}"))


def fail_stale_trials(study: optuna.Study, client=None, experiment: str | None = None) -> list[FrozenTrial]:
    """Mark RUNNING trials whose worker is gone as failed, in Optuna and in MLflow.

    On an RDB storage with a heartbeat, Optuna's own check runs first (its callback, set by
    `run_study`, ends their MLflow runs); then trials of dead processes on this host.
    """
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)
    heartbeat = interval() is not None
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    stale = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if worker_gone(t, heartbeat=heartbeat)
    ]
    reason = "worker process killed mid-trial"
    for trial in stale:
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        if client is not None and experiment is not None:
            close_trial_run(client, experiment, study.study_name, trial, reason)
    return stale


def describe_trial(trial: FrozenTrial, monitor: str) -> str:
    """`trial 3 complete val_accuracy=0.8125`, or the failure reason."""
    note = f"{monitor}={trial.value:.4f}" if trial.value is not None else trial.user_attrs.get("fail_reason", "")
    if "duplicate_of" in trial.user_attrs:
        note += f" (the configuration of trial {trial.user_attrs['duplicate_of']}: not trained again)"
    return f"trial {trial.number} {trial.state.name.lower()} {note}".rstrip()


def free_memory() -> None:
    """Release what a failed trial held: Python cycles, and the CUDA cache (after an OOM)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_objective(setup: StudySetup, client, parent: tracking.Run) -> Callable[[optuna.Trial], float]:
    """The objective every worker runs: one trial = one MLflow child run of `parent`.

    A trial that raises (NaN or infinite loss, CUDA out of memory, any error) ends FAIL with
    its reason as the `fail_reason` user attribute and the `modelyard.fail_reason` tag; its
    memory is released and the study goes on.
    """
    task, arrays = setup.task, setup.arrays
    settings: TuneSettings = task.tune
    # Trials stop early by the same rule as the final training (a converged trial frees the
    # CPU for the next one); the pruner cuts the unpromising ones.
    options = FitOptions.for_task(
        task,
        max_epochs=settings.max_epochs,
        patience=task.train.patience,
        seed=setup.seed,
        device=setup.device,
        target_scale=arrays.target_scale,
        target_offset=arrays.target_offset,
        tuning=True,
    )

    def train_trial(trial: optuna.Trial, run: tracking.Run, hparams: Hyperparams) -> float:
        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            run.log_metrics(metrics, step=epoch)
            trial.report(metrics[task.monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        shape = arrays.x_train.shape[1:]
        torch.manual_seed(setup.seed)  # initial weights from the seed, not from what ran before in this process
        model = build_model(
            task.family, shape, arrays.n_outputs, hparams, arrays.vocab_size, arrays.masked, arrays.n_numeric
        )
        result = fit(
            model, (arrays.x_train, arrays.y_train), (arrays.x_val, arrays.y_val), hparams, options, on_epoch_end
        )
        value = result.best_metrics[task.monitor]
        if not math.isfinite(value):
            raise TrainingDiverged(f"{task.monitor} is {value}")
        run.log_metrics({f"best_{task.monitor}": value})
        run.log_params({"best_epoch": result.best_epoch})
        # On small data every completed trial may become the final model's (`selection.py`).
        if setup.checkpoint_dir is not None and (applies(len(arrays.y_val)) or beats_study(trial.study, value)):
            path = checkpoint_path(setup.checkpoint_dir, trial.number)
            save_checkpoint(path, model, result.best_metrics, result.best_epoch, trial.number)
        return value

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_identity())
        hparams = suggest_hparams(trial, task.model, settings.search_space)
        earlier = same_configuration(trial)
        if earlier is not None:  # TPE drew a configuration again: reuse its result, train nothing
            trial.set_user_attr("duplicate_of", earlier.number)
            return float(earlier.value)
        tags = {**setup.trial_tags, TAG_TRIAL: f"{setup.study_name}/{trial.number}"}
        run = tracking.start_run(client, setup.experiment, f"trial-{trial.number}", tags, parent=parent)
        state, reason, value = TrialState.FAIL, "", math.nan
        try:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            run.log_inputs(list(setup.datasets))
            run.log_params({**hparams.of_family(task.family, task.problem, task.kind), "trial_number": trial.number})
            value = train_trial(trial, run, hparams)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except Exception as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
        finally:
            if reason:
                trial.set_user_attr("fail_reason", reason)
            run.set_tags({tracking.TAG_TRIAL_STATE: state.name, **({TAG_FAIL_REASON: reason[:500]} if reason else {})})
            if state == TrialState.PRUNED:
                run.set_tags({tracking.RUN_NAME_TAG: f"trial-{trial.number} pruned"})
            run.finish(RUN_STATUS[state])
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if state == TrialState.FAIL:
            free_memory()  # after the except block, so the traceback no longer holds the trial's tensors
            raise TrialFailed(reason)
        return value

    return objective


def same_configuration(trial: optuna.Trial) -> FrozenTrial | None:
    """A completed trial of the study with exactly this trial's parameters, if any."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def beats_study(study: optuna.Study, value: float) -> bool:
    """Whether a trial's value beats every completed trial of the study so far."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not values:
        return True
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return value < min(values) if minimize else value > max(values)


def checkpoint_path(checkpoint_dir: Path, number: int) -> Path:
    return checkpoint_dir / f"trial-{number}.pt"


class StopAfterFailures:
    """Stop a worker after `limit` failed trials of its own, so a search space where every
    trial fails ends instead of retrying forever."""

    def __init__(self, limit: int) -> None:
        self.limit, self.n_failed = limit, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.n_failed += trial.state == TrialState.FAIL
        if self.n_failed >= self.limit:
            study.stop()


def run_trials(
    setup: StudySetup,
    *,
    study: optuna.Study | None = None,
    client=None,
    on_trial_end: Callable[[FrozenTrial, int], None] | None = None,
) -> None:
    """One worker: run trials until the study holds `n_trials` finished ones.

    Without `study` and `client` (a spawned worker) it opens its own connections.
    """
    client = client or tracking.connect(setup.root)
    if study is None:
        on_stale = stale_run_closer(client, setup.experiment)
        storage = open_storage(setup.storage_url, setup.journal, on_stale=on_stale, heartbeat=setup.heartbeat)
        study = load_study(
            setup.study_name, storage, setup.task, sampler_seed(setup.seed, shared=True), len(setup.arrays.x_train)
        )
    n_trials = trial_target(setup.task)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_trials:
        return
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
        StopAfterFailures(n_trials),
    ]
    if on_trial_end is not None:
        callbacks.append(lambda _, trial: on_trial_end(trial, n_trials))
    objective = make_objective(setup, client, tracking.Run(client, setup.parent_run_id))
    study.optimize(objective, n_trials=None, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)


def stale_run_closer(client, experiment: str) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The RDB heartbeat's stale-trial callback: end the failed trial's MLflow run too.

    (Optuna has already finished the trial, so no `fail_reason` attribute can be added.)
    """

    def close(study: optuna.Study, trial: FrozenTrial) -> None:
        close_trial_run(client, experiment, study.study_name, trial, "worker stopped sending heartbeats mid-trial")

    return close


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies (e.g. `kill -9` of the stage):
    its trial is left RUNNING and the next run marks it failed."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(0.1)
        os._exit(70)

    threading.Thread(target=watch, name="modelyard-parent-watch", daemon=True).start()


def worker_threads(n_workers: int) -> int:
    """Torch threads of each trial: the process's own in one worker, the CPUs shared out
    among several. Recorded on the study's run: the thread count can change the last bits
    of a sum, so a run is reproduced exactly only with the same count."""
    if n_workers == 1:
        return torch.get_num_threads()
    return max(1, (os.cpu_count() or 1) // n_workers)


def work(setup: StudySetup, index: int, n_workers: int, logging_state: tuple) -> None:
    """A spawned worker's entry point; errors become one redacted line and an exit code."""
    _exit_with_parent()
    levels, filters = logging_state
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = filters
    torch.set_num_threads(worker_threads(n_workers))
    label = f"tune {setup.task_name} worker {index}"

    def report(trial: FrozenTrial, total: int) -> None:
        say(f"{label}: {describe_trial(trial, setup.task.monitor)}")

    try:
        run_trials(setup, on_trial_end=report)
    except ModelyardError as exc:
        say(redact(f"{label}: error: {exc}"))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        say(redact(f"{label}: error: unexpected {type(exc).__name__}: {exc}"))
        sys.exit(1)


def run_workers(setup: StudySetup, n_workers: int) -> list[int]:
    """Run `n_workers` spawned worker processes to the end; their exit codes."""
    context = multiprocessing.get_context("spawn")
    logging_state = ({name: logging.getLogger(name).level for name in QUIET_LOGGERS}, list(warnings.filters))
    processes = [
        context.Process(target=work, args=(setup, i, n_workers, logging_state), name=f"modelyard-tune-{i}")
        for i in range(n_workers)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    finally:
        for process in processes:  # interrupted: stop the rest; their trials are failed below
            if process.is_alive():
                process.terminate()
            if process.pid is not None:
                process.join(timeout=30)
    return [process.exitcode for process in processes]


def log_study_summary(parent: tracking.Run, study: optuna.Study, monitor: str) -> None:
    """The study's outcome on its parent run: the best value (a metric), the best trial's
    parameters (params `best.<name>`, and `best_params.json`) and Optuna's figures.

    MLflow params never change: when a resumed study finds a better trial, params already
    logged keep the first best, and `best_params.json`, the `modelyard.best_trial` tag and
    the `best_<monitor>` metric tell the current one."""
    best = study.best_trial
    parent.log_metrics({f"best_{monitor}": study.best_value})
    parent.set_tags({"modelyard.best_trial": str(best.number)})
    parent.log_dict({"trial": best.number, monitor: best.value, "params": best.params}, "best_params.json")
    logged = parent.client.get_run(parent.run_id).data.params
    parent.log_params({f"best.{k}": v for k, v in best.params.items() if f"best.{k}" not in logged})
    for name, figure in study_figures(study).items():
        parent.log_figure(figure, f"optuna/{name}.png")


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's own views of the study (optimization history, intermediate values per epoch,
    parameter importances, parallel coordinates) as matplotlib figures; a view the study
    cannot draw yet (one trial, nothing searched) is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    figures = {}
    for name, draw in {
        "history": views.plot_optimization_history,
        "intermediate_values": views.plot_intermediate_values,
        "param_importances": views.plot_param_importances,
        "parallel_coordinate": views.plot_parallel_coordinate,
    }.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks these views experimental
            try:
                axes = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        figures[name] = figure
        plt.close(figure)  # pyplot forgets it; the figure itself can still be saved
    return figures


def store_identity(url: str | None) -> str:
    """Which Optuna store a study lives in, the same from every machine that joins it: the
    journal file, or the URL's backend and database (no host or user, which may differ)."""
    if not url:
        return "journal"
    parts = urlsplit(url)
    return f"{parts.scheme.split('+')[0]}:{parts.path.lstrip('/')}"


def _parent_run(client, experiment: str, setup_tags: dict[str, str], study_name: str, params: dict) -> tracking.Run:
    """The study's parent run: found by its study and store tags, or created (with `params`)
    by the first command. A study of the same name in another store has a parent of its own."""
    identity = {tracking.TAG_STUDY: study_name, TAG_STORE: setup_tags[TAG_STORE]}
    parent = tracking.find_run(client, experiment, identity)
    if parent is None:
        parent = tracking.start_run(client, experiment, f"study-{study_name}", {**setup_tags, **identity})
        parent.log_params(params)
        return parent
    return tracking.resume(parent)


def run_study(
    task_name: str,
    task: TaskSettings,
    arrays: Arrays,
    *,
    study_name: str,
    storage_url: str | None,
    journal: Path,
    seed: int,
    device: str,
    root: Path,
    client,
    experiment: str,
    tags: dict[str, str],
    workers: int = 1,
    on_trial_end: Callable[[FrozenTrial, int], None] | None = None,
    heartbeat: tuple[int, int] = (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S),
    warm_start: Hyperparams | None = None,
    checkpoint_dir: Path | None = None,
    datasets: list | None = None,
) -> StudyResult:
    """Run (or continue, or join) the study until it holds `trial_target` finished trials.

    The study and its MLflow parent run exist before any worker starts, so there is one
    parent run; `workers=1` runs the trials in this process, more start spawned workers.
    `warm_start` (the champion's hyperparameters, on retraining) becomes the first trial of
    a new study. `datasets` (MLflow dataset inputs) are logged on the parent and every trial.
    """
    if workers < 1:
        raise ModelyardError(f"workers must be 1 or more, got {workers}", "pass --workers N with N >= 1")
    settings: TuneSettings = task.tune
    optuna.logging.set_verbosity(max(optuna.logging.WARNING, optuna.logging.get_verbosity()))
    storage = open_storage(storage_url, journal, on_stale=stale_run_closer(client, experiment), heartbeat=heartbeat)
    shared = storage_url is not None or workers > 1
    study = load_study(study_name, storage, task, sampler_seed(seed, shared=shared), len(arrays.x_train))
    fail_stale_trials(study, client, experiment)
    if warm_start is not None and not study.get_trials(deepcopy=False):
        start = warm_start_params(warm_start, settings.search_space)
        if start:
            study.enqueue_trial(start)
    params = {
        "max_epochs_per_trial": settings.max_epochs or "auto",
        "pruner": settings.pruner,
        "sampler": type(study.sampler).__name__,
        "seed": seed,
        "threads": worker_threads(workers),
        "storage": storage_label(storage_url, journal),
        **{f"space.{name}": describe(dist) for name, dist in settings.search_space.items()},
    }
    tags = {**tags, TAG_STORE: store_identity(storage_url)}
    parent = _parent_run(client, experiment, tags, study_name, params)
    parent.log_inputs(datasets or [])
    setup = StudySetup(
        task_name=task_name,
        task=task,
        arrays=arrays,
        study_name=study_name,
        storage_url=storage_url,
        journal=journal,
        seed=seed,
        device=device,
        root=root,
        experiment=experiment,
        parent_run_id=parent.run_id,
        trial_tags={k: v for k, v in tags.items() if not k.startswith("dvc.")},
        heartbeat=heartbeat,
        checkpoint_dir=checkpoint_dir,
        datasets=tuple(datasets or ()),
    )
    exit_codes: list[int] = []

    def count(states: tuple[TrialState, ...]) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    try:
        if workers == 1:
            run_trials(setup, study=study, client=client, on_trial_end=on_trial_end)
        else:
            exit_codes = run_workers(setup, workers)
    finally:
        fail_stale_trials(study, client, experiment)  # trials of workers that died during this run
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        parent.log_metrics(
            {
                "n_trials_requested": settings.n_trials,
                "n_complete": len(complete),
                "n_pruned": count((TrialState.PRUNED,)),
                "n_failed": count((TrialState.FAIL,)),
            }
        )
        if complete:
            log_study_summary(parent, study, task.monitor)
        parent.finish("FINISHED" if complete else "FAILED")
    failed_workers = [code for code in exit_codes if code != 0]
    if failed_workers and count(FINISHED) < trial_target(task):
        raise ModelyardError(
            f"{len(failed_workers)} of {workers} tuning workers failed (exit codes {failed_workers}) "
            f"with {count(FINISHED)} of {trial_target(task)} trials finished",
            "see the worker messages above; rerun the same command to continue the study",
        )
    if not complete:
        reasons = {t.user_attrs.get("fail_reason", "") for t in study.get_trials(states=(TrialState.FAIL,))}
        raise ModelyardError(
            f"no trial of study {study_name} completed; failures: {'; '.join(sorted(r for r in reasons if r))[:800]}",
            "check the search space (e.g. a lower learning rate) and the data",
        )
    best = study.best_trial
    trained = [t for t in complete if "duplicate_of" not in t.user_attrs]
    return StudyResult(
        study_name=study_name,
        best_params=best.params,
        best_value=float(best.value),
        best_trial=best.number,
        n_complete=len(complete),
        n_pruned=count((TrialState.PRUNED,)),
        n_failed=count((TrialState.FAIL,)),
        complete=tuple((t.number, float(t.value), t.params) for t in trained),
        minimize=study.direction == optuna.study.StudyDirection.MINIMIZE,
    )
