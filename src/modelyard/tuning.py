"""Optuna tuning: the search space from params, seeded TPE, pruning on the per-epoch
validation metric, a resumable study, and one MLflow child run per trial under a parent
run per study.

The default storage is a journal file in the checkout (`data/<task>/optuna.journal`): a
study is named after a fingerprint of everything that shapes it (features, search space,
fixed hyperparameters, budget, seed), so rerunning after an interruption continues the
same study up to the requested number of finished trials, while changed inputs start a
fresh one. A journal-file study is driven by one process at a time, so trials it finds
RUNNING when it opens were left by a killed run and are marked failed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from modelyard import tracking
from modelyard.config import Distribution, Hyperparams, TaskSettings, TuneSettings, hparam_kind
from modelyard.errors import ModelyardError
from modelyard.evaluation import lower_is_better
from modelyard.models import build_model
from modelyard.training import FitOptions, TrainingDiverged, fit

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


@dataclass(frozen=True)
class Arrays:
    """Featurized training and validation data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_outputs: int


@dataclass(frozen=True)
class StudyResult:
    study_name: str
    best_params: dict
    best_value: float
    best_trial: int
    n_complete: int
    n_pruned: int
    n_failed: int


def suggest_hparams(trial: optuna.Trial, base: Hyperparams, space: dict[str, Distribution]) -> Hyperparams:
    """The trial's hyperparameters: the fixed ones from params, with the searched ones drawn."""
    drawn: dict[str, object] = {}
    for name, dist in space.items():
        if dist.choices is not None:
            drawn[name] = trial.suggest_categorical(name, list(dist.choices))
        elif hparam_kind(name) is int:
            step = int(dist.step or 1)
            drawn[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log, step=step)
        else:
            drawn[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return Hyperparams.model_validate({**base.model_dump(), **drawn})


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def open_storage(url: str | None, journal: Path) -> optuna.storages.BaseStorage:
    """An RDB storage for a URL (PostgreSQL, MySQL, SQLite), else the local journal file."""
    if url:
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
        except Exception as exc:  # the driver's own errors vary by backend
            raise ModelyardError(f"cannot open Optuna storage: {exc}", "check tune.storage in params.yaml") from None
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def study_fingerprint(features_md5: str, task: TaskSettings, seed: int) -> str:
    """A short hash of everything that shapes a study; it names the study.

    The trial count is left out: asking for more trials continues the same study.
    """
    shape = {
        "features": features_md5,
        "tune": task.tune.model_dump(mode="json", exclude={"storage", "n_trials"}),
        "model": task.model.model_dump(mode="json"),
        "monitor": task.monitor,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def fail_stale_trials(study: optuna.Study, client=None) -> list[FrozenTrial]:
    """Mark trials left RUNNING by a killed process as failed, in Optuna and in MLflow."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if client is not None and run_id:
            run = tracking.Run(client, run_id)
            run.set_tags({tracking.TAG_TRIAL_STATE: "FAIL", "modelyard.fail_reason": "process killed mid-trial"})
            run.finish("FAILED")
    return list(stale)


def run_study(
    task_name: str,
    task: TaskSettings,
    arrays: Arrays,
    *,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    seed: int,
    device: str,
    client,
    experiment: str,
    tags: dict[str, str],
    on_trial_end: Callable[[FrozenTrial, int], None] | None = None,
) -> StudyResult:
    """Run (or continue) the study until `tune.n_trials` trials have finished."""
    settings: TuneSettings = task.tune
    direction = "minimize" if lower_is_better(task.monitor) else "maximize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(settings.pruner, settings.max_epochs),
        load_if_exists=True,
    )
    fail_stale_trials(study, client)
    parent = tracking.find_run(client, experiment, tracking.TAG_STUDY, study_name)
    if parent is None:
        parent = tracking.start_run(client, experiment, f"study-{study_name}", {**tags, tracking.TAG_STUDY: study_name})
        parent.log_params({"max_epochs_per_trial": settings.max_epochs, "pruner": settings.pruner, "seed": seed})
    else:
        tracking.resume(parent)
    options = FitOptions(
        problem=task.problem,
        monitor=task.monitor,
        max_epochs=settings.max_epochs,
        patience=settings.max_epochs,  # trials are cut by the pruner, not by early stopping
        grad_clip=task.train.grad_clip,
        loss=task.loss,
        seed=seed,
        device=device,
    )
    trial_tags = {k: v for k, v in tags.items() if not k.startswith("dvc.")}

    def objective(trial: optuna.Trial) -> float:
        hparams = suggest_hparams(trial, task.model, settings.search_space)
        run = tracking.start_run(client, experiment, f"trial-{trial.number}", trial_tags, parent=parent)
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params({**hparams.model_dump(), "trial_number": trial.number})

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            run.log_metrics(metrics, step=epoch)
            trial.report(metrics[task.monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        state, reason = TrialState.FAIL, ""
        try:
            model = build_model(task.family, arrays.x_train.shape[1], arrays.n_outputs, hparams)
            result = fit(
                model, (arrays.x_train, arrays.y_train), (arrays.x_val, arrays.y_val), hparams, options, on_epoch_end
            )
            value = result.best_metrics[task.monitor]
            if not math.isfinite(value):
                raise TrainingDiverged(f"{task.monitor} is {value}")
            run.log_metrics({f"best_{task.monitor}": value, "best_epoch": result.best_epoch})
            state = TrialState.COMPLETE
            return value
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            raise
        finally:
            run.set_tags(
                {tracking.TAG_TRIAL_STATE: state.name, **({"modelyard.fail_reason": reason[:500]} if reason else {})}
            )
            run.finish(RUN_STATUS[state])

    def count(states: tuple[TrialState, ...]) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    remaining = settings.n_trials - count(FINISHED)
    callbacks = [lambda s, t: on_trial_end(t, settings.n_trials)] if on_trial_end else []
    try:
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
    finally:
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
            parent.log_metrics({f"best_{task.monitor}": study.best_value})
            parent.set_tags({"modelyard.best_params": json.dumps(study.best_params, sort_keys=True)})
        parent.finish("FINISHED" if complete else "FAILED")
    if not complete:
        reasons = {t.user_attrs.get("fail_reason", "") for t in study.get_trials(states=(TrialState.FAIL,))}
        raise ModelyardError(
            f"no trial of study {study_name} completed; failures: {'; '.join(sorted(r for r in reasons if r))[:800]}",
            "check the search space (e.g. a lower learning rate) and the data",
        )
    best = study.best_trial
    return StudyResult(
        study_name=study_name,
        best_params=best.params,
        best_value=float(best.value),
        best_trial=best.number,
        n_complete=len(complete),
        n_pruned=count((TrialState.PRUNED,)),
        n_failed=count((TrialState.FAIL,)),
    )
