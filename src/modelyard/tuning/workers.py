"""The processes that run a study's trials: this one, or `workers` spawned ones.

Each worker runs trials the same way (`trials.TrialRunner`) and stops once the study as
a whole holds `trial_target` finished trials (`n_trials`, or fewer when the search space
holds fewer configurations; `MaxTrialsCallback`, and workers running side by side may
finish up to `workers - 1` trials beyond the count), or after that many failed trials of
its own. A spawned worker opens its own storage and MLflow connections, and ends when the
command that started it dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from modelyard import tracking
from modelyard.config import TaskSettings
from modelyard.console import say
from modelyard.errors import ModelyardError
from modelyard.redaction import redact
from modelyard.search_space import space_size
from modelyard.training import resolve_device
from modelyard.tuning.storage import heartbeats, open_storage, stale_run_closer
from modelyard.tuning.trials import (
    FINISHED,
    Started,
    StopAfterFailures,
    StudySetup,
    TrialRunner,
    describe_trial,
    load_study,
    sampler_seed,
    trial_target,
)

# Trials fused per worker with `tune.fuse: auto`, by device type (see `fusion_width`). On 2
# CPU cores a stacked step of K small networks costs nearly K single steps: 8 fused trained
# Adult's MLP at 1.09x and digits' CNN at 1.43x the trials per hour of one at a time
# (bench/README.md, "Trial fusion"), while a batch's followers take their leader's shape,
# so a study of a few dozen trials searches fewer shapes. On a GPU a small network's step
# is nearly all fixed cost, which K members share.
FUSE_AUTO = {"cpu": 1, "cuda": 8}
FUSED_FAMILIES = ("ann", "cnn")

QUIET_LOGGERS = ("alembic", "mlflow", "optuna", "urllib3", "git")


def run_trials(
    setup: StudySetup,
    *,
    study: optuna.Study | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    client=None,
    on_trial_end: Callable[[FrozenTrial, int], None] | None = None,
) -> None:
    """One worker: run trials until the study holds `n_trials` finished ones, `fusion_width`
    of them at a time.

    Without `study`, `storage` and `client` (a spawned worker) it opens its own connections.
    """
    client = client or tracking.connect(setup.root)
    if study is None or storage is None:
        on_stale = stale_run_closer(client, setup.experiment)
        storage = open_storage(setup.storage_url, setup.journal, on_stale=on_stale, heartbeat=setup.heartbeat)
        study = load_study(
            setup.study_name, storage, setup.task, sampler_seed(setup.seed, shared=True), len(setup.arrays.x_train)
        )
    n_trials = trial_target(setup.task)
    if len(study.get_trials(deepcopy=False, states=FINISHED)) >= n_trials:
        return
    runner = TrialRunner(setup, client, tracking.Run(client, setup.parent_run_id))
    width = fusion_width(setup.task, setup.device)
    if width > 1:
        run_fused(study, storage, runner, width, n_trials, on_trial_end)
        return
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
        StopAfterFailures(n_trials),
    ]
    if on_trial_end is not None:
        callbacks.append(lambda _, trial: on_trial_end(trial, n_trials))
    study.optimize(runner.objective, n_trials=None, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)


def fusion_width(task: TaskSettings, device: str) -> int:
    """How many trials a worker asks for at once (`tune.fuse`): a number as given, 1 for
    `off`, and for `auto` FUSE_AUTO of the device. Always 1 when the space is enumerated
    (each configuration once: nothing is drawn to fill a batch) or the family has nothing
    `fused.fusion_key` accepts (the tabular MLP and the image CNN fuse; the sequence and
    text networks do not)."""
    fuse = task.tune.fuse
    if fuse == "off" or task.family not in FUSED_FAMILIES or space_size(task.tune.search_space) <= task.tune.n_trials:
        return 1
    if fuse == "auto":
        return FUSE_AUTO[resolve_device(device).type]
    return int(fuse)


def ask_together(study: optuna.Study, runner: TrialRunner, count: int) -> list[tuple[optuna.Trial, Started | float]]:
    """Up to `count` trials that can train fused, each started (`TrialRunner.start`).

    The first is drawn as any trial is. When its network can fuse, the others take its
    structure (every drawn hyperparameter but `fused.MEMBER_HPARAMS`: depth, width, batch
    size, embedding) through `study.enqueue_trial`, and the sampler draws their learning
    rate, weight decay, dropout and frequency scale. A first trial that comes out of the
    queue (the baseline, a warm start, another worker's follower) takes no followers: it
    is one chosen configuration, not a region to search. Trials another worker enqueued
    may come out of the queue as followers; those that cannot fuse train alone.
    """
    from modelyard.fused import MEMBER_HPARAMS, fusion_key

    queued = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    leader = study.ask()
    asked = [(leader, runner.start(leader))]
    first = asked[0][1]
    drawn = count > 1 and not queued and isinstance(first, Started) and first.error is None
    if drawn and fusion_key(first.model, first.hparams) is not None:
        structure = {name: value for name, value in leader.params.items() if name not in MEMBER_HPARAMS}
        for _ in range(count - 1):
            study.enqueue_trial(structure, skip_if_exists=False)
        for _ in range(count - 1):
            trial = study.ask()
            asked.append((trial, runner.start(trial)))
    return asked


def run_fused(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    runner: TrialRunner,
    width: int,
    n_trials: int,
    on_trial_end: Callable[[FrozenTrial, int], None] | None,
) -> None:
    """Run trials `width` at a time (`ask_together`, `TrialRunner.run_together`) until the
    study holds `n_trials` finished ones, or this worker has failed `n_trials` of its own.
    Trials other workers are running count as finishing: a worker asks only for what the
    study still lacks, so workers side by side overshoot `n_trials` no more than when they
    run one trial at a time."""
    failed = 0
    while failed < n_trials:
        lacking = n_trials - len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
        if lacking <= 0:
            return
        asked: list[tuple[optuna.Trial, Started | float]] = []
        try:
            asked = ask_together(study, runner, min(width, lacking))
            started = [s for _, s in asked if isinstance(s, Started)]
            with heartbeats(storage, study, [s.trial.number for s in started]):
                ended = iter(runner.run_together(started))
            results = [next(ended) if isinstance(s, Started) else (TrialState.COMPLETE, s) for _, s in asked]
        except BaseException:
            for trial, _ in asked:  # interrupted: nothing of this batch stays RUNNING
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        for (trial, _), (state, value) in zip(asked, results, strict=True):
            frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            failed += state == TrialState.FAIL
            if on_trial_end is not None:
                on_trial_end(frozen, n_trials)


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
