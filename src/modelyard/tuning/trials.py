"""Trials: what each one trains and reports, the sampler that draws them and the pruner
that cuts them.

The space is the task's `tune.search_space` completed by the family's defaults
(`search_space.py`). A space with no more configurations than trials is enumerated, each
configuration once; otherwise TPE draws, and a configuration it draws again reuses the
earlier trial's value instead of training it twice. A trial that beats the study's best
so far (on a small validation split, every completed trial: see `selection.py`) saves its
weights under `checkpoint_dir`, so the train stage can keep them. One trial is one MLflow
child run of the study's parent run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from modelyard import tracking
from modelyard.config import Distribution, Hyperparams, TaskSettings, hparam_kind
from modelyard.evaluation import lower_is_better
from modelyard.models import build_model
from modelyard.redaction import redact
from modelyard.search_space import space_size
from modelyard.selection import applies
from modelyard.training import (
    AUTO_TUNE,
    FitOptions,
    FitResult,
    TrainingDiverged,
    epoch_budget,
    fit,
    save_checkpoint,
    solves_exactly,
)
from modelyard.tuning.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, worker_identity

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A pruned trial did what the pruner asked: its run ends FINISHED, named "trial-<n> pruned",
# so only failures carry MLflow's red cross.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


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


def trial_budgets(task: TaskSettings, n_train: int) -> tuple[int, int]:
    """(shortest, longest) epoch budget of the study's trials, over its batch sizes."""
    searched = task.tune.search_space.get("batch_size")
    if searched is None:
        batch_sizes = [task.model.batch_size]
    else:
        batch_sizes = list(searched.choices) if searched.choices is not None else [searched.low, searched.high]
    budgets = [epoch_budget(task.tune.max_epochs, AUTO_TUNE, n_train, int(b)) for b in batch_sizes]
    return min(budgets), max(budgets)


def pruner_warmup(task: TaskSettings, n_train: int) -> int:
    """Epochs no pruner judges a trial in: a tenth of the shortest trial's epoch budget
    (twice the learning rate's warm-up), at least 3. Before that, small data (a few steps
    an epoch) has every trial still at chance level, and pruning on those values would cut
    good configurations on noise."""
    return max(3, trial_budgets(task, n_train)[0] // 10)


def make_pruner(name: str, warmup_epochs: int, longest: int) -> optuna.pruners.BasePruner:
    """The pruner. The median pruner judges no trial in its first `warmup_epochs`. ASHA
    (asynchronous successive halving, Li et al. 2020) runs its first rung there and one
    every 3x the epochs after it, keeping the best third of the trials that reached a rung,
    whether they finished or still run. Hyperband (Li et al. 2018) runs brackets of it
    from the warm-up to the `longest` trial budget: sized from the study's own epoch
    budgets, not from whatever the first trial reported (a linear baseline solved in a few
    L-BFGS rounds would otherwise set the maximum).

    On the eight quality tables ASHA trained 17 % fewer trial epochs than the median
    pruner at the same test scores, and Hyperband 43 % more: with a few dozen trials a
    bracket holds a handful, and its first trials pass for want of rivals (bench/README.md
    "Pruners"), so it is the default. It judges a trial against every trial that reached
    the rung, running ones included, so it needs no start-up trials; the linear baseline,
    which the median pruner spared as a start-up trial, is spared as an exactly solved
    model (`TrialRunner.on_epoch_end`)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup_epochs, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup_epochs, max_resource=max(longest, warmup_epochs))
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
        pruner=make_pruner(settings.pruner, pruner_warmup(task, n_train), trial_budgets(task, n_train)[1]),
        load_if_exists=True,
    )
    if study.metric_names is None:  # optuna-dashboard labels the objective with it
        study.set_metric_names([task.monitor])
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # resumed: a sampler seeded as at the start would draw the first trials again
        study.sampler = make_sampler(task, (seed + 7919 * existing) % 2**32)
    return study


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


@dataclass
class Started:
    """A trial with its hyperparameters drawn, its MLflow run open and its network built
    (`error`: what building it raised instead)."""

    trial: optuna.Trial
    hparams: Hyperparams
    run: tracking.Run
    model: nn.Module | None
    error: Exception | None = None


Outcome = FitResult | BaseException


class TrialRunner:
    """What every worker does with a trial: one trial = one MLflow child run of `parent`.

    `objective` runs one trial (for `study.optimize`); `run_together` runs trials asked
    together, those of one `fused.fusion_key` as one stacked model (`fused.fit_fused`).
    A trial that raises (NaN or infinite loss, CUDA out of memory, any error) ends FAIL
    with its reason as the `fail_reason` user attribute and the `modelyard.fail_reason`
    tag; its memory is released and the study goes on.
    """

    def __init__(self, setup: StudySetup, client, parent: tracking.Run) -> None:
        self.setup, self.client, self.parent = setup, client, parent
        task = setup.task
        # Trials stop early by the same rule as the final training (a converged trial frees
        # the CPU for the next one); the pruner cuts the unpromising ones.
        self.options = FitOptions.for_task(
            task,
            max_epochs=task.tune.max_epochs,
            patience=task.train.patience,
            seed=setup.seed,
            device=setup.device,
            target_scale=setup.arrays.target_scale,
            target_offset=setup.arrays.target_offset,
            tuning=True,
        )

    def start(self, trial: optuna.Trial) -> Started | float:
        """Draw the trial's hyperparameters, open its run and build its network; or, for a
        configuration the study already completed, that trial's value (nothing trained)."""
        setup, task = self.setup, self.setup.task
        trial.set_user_attr("worker", worker_identity())
        hparams = suggest_hparams(trial, task.model, task.tune.search_space)
        earlier = same_configuration(trial)
        if earlier is not None:  # TPE drew a configuration again: reuse its result, train nothing
            trial.set_user_attr("duplicate_of", earlier.number)
            return float(earlier.value)
        tags = {**setup.trial_tags, tracking.TAG_TRIAL: f"{setup.study_name}/{trial.number}"}
        run = tracking.start_run(
            self.client, setup.experiment, f"trial-{trial.number}", tags, parent=self.parent, buffered=True
        )
        started = Started(trial, hparams, run, None)
        try:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            run.log_inputs(list(setup.datasets))
            run.log_params({**hparams.of_family(task.family, task.problem, task.kind), "trial_number": trial.number})
            arrays = setup.arrays
            torch.manual_seed(setup.seed)  # initial weights from the seed, not from what ran before in this process
            started.model = build_model(
                task.family,
                arrays.x_train.shape[1:],
                arrays.n_outputs,
                hparams,
                arrays.vocab_size,
                arrays.masked,
                arrays.n_numeric,
            )
        except KeyboardInterrupt as exc:
            self.end(started, exc)
            raise
        except Exception as exc:
            started.error = exc
        return started

    def on_epoch_end(self, started: Started) -> Callable[[int, dict[str, float]], None]:
        """The trial's per-epoch callback: log, report to Optuna, prune. A linear model
        solved exactly is never pruned: its rounds are a solver's iterations, not a network
        learning, and selection and the cross-fit compare every network with it
        (`search_space.BASELINE_TRIAL`)."""
        trial, run, monitor = started.trial, started.run, self.setup.task.monitor
        prunable = started.model is not None and not solves_exactly(started.model, started.hparams)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            run.log_metrics(metrics, step=epoch)
            trial.report(metrics[monitor], epoch)
            if prunable and trial.should_prune():
                raise optuna.TrialPruned()

        return report

    def train(self, started: Started) -> Outcome:
        """Train one trial alone; its FitResult, or the exception that ended it."""
        if started.error is not None:
            return started.error
        arrays = self.setup.arrays
        try:
            return fit(
                started.model,
                (arrays.x_train, arrays.y_train),
                (arrays.x_val, arrays.y_val),
                started.hparams,
                self.options,
                self.on_epoch_end(started),
            )
        except Exception as exc:
            return exc

    def train_fused(self, group: list[Started]) -> list[Outcome]:
        """Train trials of one fusion key as one stacked model."""
        from modelyard.fused import fit_fused

        arrays = self.setup.arrays
        try:
            return fit_fused(
                [s.model for s in group],
                (arrays.x_train, arrays.y_train),
                (arrays.x_val, arrays.y_val),
                [s.hparams for s in group],
                self.options,
                [self.on_epoch_end(s) for s in group],
            )
        except Exception as exc:
            return [exc] * len(group)

    def end(self, started: Started, outcome: Outcome) -> tuple[TrialState, float, str]:
        """Record a trained trial's result (its value, best epoch and, where kept, its
        weights), tag and end its run; (state, value, fail reason)."""
        task, setup, run, trial = self.setup.task, self.setup, started.run, started.trial
        state, reason, value = TrialState.FAIL, "", math.nan
        try:
            if isinstance(outcome, FitResult):
                value = outcome.best_metrics[task.monitor]
                if not math.isfinite(value):
                    raise TrainingDiverged(f"{task.monitor} is {value}")
                run.log_metrics({f"best_{task.monitor}": value})
                run.log_params({"best_epoch": outcome.best_epoch})
                # On small data every completed trial may become the final model's (`selection.py`).
                keep = applies(task.problem, setup.arrays.y_val) or beats_study(trial.study, value)
                if setup.checkpoint_dir is not None and keep:
                    path = checkpoint_path(setup.checkpoint_dir, trial.number)
                    save_checkpoint(path, started.model, outcome.best_metrics, outcome.best_epoch, trial.number)
                state = TrialState.COMPLETE
            elif isinstance(outcome, optuna.TrialPruned):
                state = TrialState.PRUNED
            elif isinstance(outcome, KeyboardInterrupt):
                reason = "interrupted"
            else:
                reason = redact(f"{type(outcome).__name__}: {outcome}")
        except Exception as exc:
            state, reason = TrialState.FAIL, redact(f"{type(exc).__name__}: {exc}")
        finally:
            if reason:
                trial.set_user_attr("fail_reason", reason)
            run.set_tags(
                {tracking.TAG_TRIAL_STATE: state.name, **({tracking.TAG_FAIL_REASON: reason[:500]} if reason else {})}
            )
            if state == TrialState.PRUNED:
                run.set_tags({tracking.RUN_NAME_TAG: f"trial-{trial.number} pruned"})
            run.finish(RUN_STATUS[state])
        started.model = None  # the weights are saved where kept; the next trials need the memory
        return state, value, reason

    def objective(self, trial: optuna.Trial) -> float:
        """One trial, for `study.optimize`."""
        started = self.start(trial)
        if not isinstance(started, Started):
            return started
        try:
            outcome = self.train(started)
        except KeyboardInterrupt as exc:
            self.end(started, exc)
            raise
        state, value, reason = self.end(started, outcome)
        del outcome, started  # an exception's traceback holds the trial's tensors
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if state == TrialState.FAIL:
            free_memory()
            raise TrialFailed(reason)
        return value

    def run_together(self, started: list[Started]) -> list[tuple[TrialState, float]]:
        """Train started trials, those of one fusion key fused; (state, value) of each."""
        from modelyard.fused import fusable_groups, fusion_key

        keys = [fusion_key(s.model, s.hparams) if s.error is None else None for s in started]
        outcomes: dict[int, Outcome] = {}
        try:
            for group in fusable_groups(keys):
                members = [started[i] for i in group]
                results = self.train_fused(members) if len(group) > 1 else [self.train(members[0])]
                outcomes.update(zip(group, results, strict=True))
        except KeyboardInterrupt as exc:
            for i, s in enumerate(started):
                self.end(s, outcomes.get(i, exc))
            raise
        ended = [self.end(s, outcomes[i])[:2] for i, s in enumerate(started)]
        if any(state == TrialState.FAIL for state, _ in ended):
            outcomes.clear()
            free_memory()
        return ended


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
