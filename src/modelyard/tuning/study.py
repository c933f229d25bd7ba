"""The study: its name, its MLflow parent run, its warm start and its outcome.

A study is named after a fingerprint of everything that shapes it (features, search
space, fixed hyperparameters, budget, seed), so rerunning after an interruption continues
the same study up to the requested number of finished (complete or pruned) trials, while
changed inputs start a fresh one. The same command on another machine, pointed at the
same RDB storage, joins the same study. On retraining, the champion's hyperparameters are
the first trial of a new study (`warm_start_params`); an MLP study then runs a linear
model (`search_space.baseline_params`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelyard import tracking
from modelyard.config import Distribution, Hyperparams, TaskSettings, TuneSettings
from modelyard.errors import ModelyardError
from modelyard.search_space import baseline_params, contains, describe
from modelyard.tuning.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    fail_stale_trials,
    open_storage,
    stale_run_closer,
    storage_label,
    store_identity,
)
from modelyard.tuning.trials import FINISHED, Arrays, StudySetup, load_study, sampler_seed, trial_target
from modelyard.tuning.workers import run_trials, run_workers, worker_threads


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


def warm_start_params(hparams: Hyperparams, space: dict[str, Distribution]) -> dict[str, Any]:
    """The searched hyperparameters of an earlier model that the current search space still
    holds: the first trial of a warm-started study."""
    return {name: getattr(hparams, name) for name, dist in space.items() if contains(dist, getattr(hparams, name))}


def log_study_summary(parent: tracking.Run, study: optuna.Study, monitor: str) -> None:
    """The study's outcome on its parent run: the best trial's parameters (params
    `best.<name>`, and `best_params.json`), the optimization history and the parameter
    importances (`param_importances.json`).

    The history is two metrics by step, one step per completed trial (its number):
    `trial_<monitor>`, the trial's value, and `best_<monitor>`, the best value so far. The
    MLflow UI charts them on the parent run's "Model metrics" tab, as Optuna's history plot
    does, and the latest `best_<monitor>` is the study's best value. A resumed study adds
    the steps of its new trials. Each trial's per-epoch curve is its child run's, and the
    runs table's "Compare" draws the trials' parallel coordinates: MLflow shows those
    itself, so the study draws no figures. Drawing Optuna's views here cost more than
    the rest of the study's tracking (matplotlib's import alone about 0.5 s, and fANOVA
    importances up to a second: bench/README.md "Tracking overhead").

    MLflow params never change: when a resumed study finds a better trial, params already
    logged keep the first best, and `best_params.json`, the `modelyard.best_trial` tag and
    the `best_<monitor>` metric tell the current one."""
    best = study.best_trial
    parent.set_tags({tracking.TAG_BEST_TRIAL: str(best.number)})
    parent.log_dict({"trial": best.number, monitor: best.value, "params": best.params}, "best_params.json")
    logged = parent.logged_params()
    parent.log_params({f"best.{k}": v for k, v in best.params.items() if f"best.{k}" not in logged})
    history = study_history(study, monitor)
    logged_steps = parent.logged_steps(f"best_{monitor}")
    new = {step: row for step, row in history.items() if step not in logged_steps}
    last = max(history)
    if new and last not in new:
        # A trial numbered below the last logged one finished since (another worker's): the
        # best again at the last step, so that the latest (MLflow's: highest step, then
        # newest) counts it.
        new[last] = {f"best_{monitor}": history[last][f"best_{monitor}"]}
    parent.log_steps(new)
    importances = param_importances(study)
    if importances:
        parent.log_dict(importances, "param_importances.json")


def study_history(study: optuna.Study, monitor: str) -> dict[int, dict[str, float]]:
    """Per completed trial (by number): its value and the best value up to it."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    history: dict[int, dict[str, float]] = {}
    best = math.inf if minimize else -math.inf
    for trial in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        best = min(best, trial.value) if minimize else max(best, trial.value)
        history[trial.number] = {f"trial_{monitor}": trial.value, f"best_{monitor}": best}
    return history


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Each searched parameter's share of the variation in the completed trials' values,
    largest first: Optuna's PED-ANOVA (Watanabe et al. 2023), which takes milliseconds
    where fANOVA's forest takes up to a second. Empty when the study cannot tell yet (too
    few completed trials, or nothing searched); with a few dozen trials it is a rough guide."""
    import warnings

    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks PED-ANOVA experimental
        try:
            importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}
    return {name: round(float(value), 4) for name, value in importances.items()}


def _parent_run(client, experiment: str, setup_tags: dict[str, str], study_name: str, params: dict) -> tracking.Run:
    """The study's parent run: found by its study and store tags, or created (with `params`)
    by the first command. A study of the same name in another store has a parent of its own."""
    identity = {tracking.TAG_STUDY: study_name, tracking.TAG_STORE: setup_tags[tracking.TAG_STORE]}
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
    fail_stale_trials(study, storage, client, experiment)
    if not study.get_trials(deepcopy=False):  # a new study: the champion's trial, then the baseline
        champion = warm_start_params(warm_start, settings.search_space) if warm_start is not None else {}
        for start in (champion, baseline_params(settings.search_space, len(arrays.x_train), task.problem)):
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
    tags = {**tags, tracking.TAG_STORE: store_identity(storage_url)}
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
    try:
        if workers == 1:
            run_trials(setup, study=study, storage=storage, client=client, on_trial_end=on_trial_end)
        else:
            exit_codes = run_workers(setup, workers)
    finally:
        fail_stale_trials(study, storage, client, experiment)  # trials of workers that died during this run
        close_parent(parent, study, task)
    return study_outcome(study, task, exit_codes)


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def close_parent(parent: tracking.Run, study: optuna.Study, task: TaskSettings) -> None:
    """The parent run's trial counts and, once a trial completed, the study's summary; then
    it ends (FAILED when no trial completed)."""
    complete = count(study, TrialState.COMPLETE)
    parent.log_metrics(
        {
            "n_trials_requested": task.tune.n_trials,
            "n_complete": complete,
            "n_pruned": count(study, TrialState.PRUNED),
            "n_failed": count(study, TrialState.FAIL),
        }
    )
    if complete:
        log_study_summary(parent, study, task.monitor)
    parent.finish("FINISHED" if complete else "FAILED")


def study_outcome(study: optuna.Study, task: TaskSettings, exit_codes: list[int]) -> StudyResult:
    """The finished study as train reads it; an error when its workers failed before it
    was done, or when no trial completed."""
    failed_workers = [code for code in exit_codes if code != 0]
    finished, target = count(study, *FINISHED), trial_target(task)
    if failed_workers and finished < target:
        raise ModelyardError(
            f"{len(failed_workers)} of {len(exit_codes)} tuning workers failed (exit codes {failed_workers}) "
            f"with {finished} of {target} trials finished",
            "see the worker messages above; rerun the same command to continue the study",
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = {t.user_attrs.get("fail_reason", "") for t in study.get_trials(states=(TrialState.FAIL,))}
        raise ModelyardError(
            f"no trial of study {study.study_name} completed; "
            f"failures: {'; '.join(sorted(r for r in reasons if r))[:800]}",
            "check the search space (e.g. a lower learning rate) and the data",
        )
    best = study.best_trial
    trained = [t for t in complete if "duplicate_of" not in t.user_attrs]
    return StudyResult(
        study_name=study.study_name,
        best_params=best.params,
        best_value=float(best.value),
        best_trial=best.number,
        n_complete=len(complete),
        n_pruned=count(study, TrialState.PRUNED),
        n_failed=count(study, TrialState.FAIL),
        complete=tuple((t.number, float(t.value), t.params) for t in trained),
        minimize=study.direction == optuna.study.StudyDirection.MINIMIZE,
    )
