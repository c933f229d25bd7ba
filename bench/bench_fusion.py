"""Trials per hour, fused against one at a time, on the built-in Adult (MLP) and digits (CNN).

For each task: the stage functions build its real features (ingest to featurize, in a
throwaway project from the repository's params.yaml); K trial configurations are drawn as
a fused batch of the study draws them (`tuning.workers.ask_together`: one drawn freely,
the others with its structure and their own learning rate, weight decay, dropout and
frequency scale; a seeded random sampler here, so both arms train the same K); then the K
train one after the other with `training.fit` (what `tune.fuse: off` does) and together
with `fused.fit_fused`, each for the same fixed number of epochs (no early stopping, no
pruning), alternating the two arms for `--rounds` rounds. It prints the wall time of each
arm, trials per hour, their ratio, and how far apart the two arms' best validation
figures are (fusion must not change what a trial learns).

    python bench/bench_fusion.py [--tasks adult,digits] [--k 8] [--epochs 12] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def features(task: str, workdir: Path) -> tuple:
    """(task settings as the study sees them, arrays, network sizes) after ingest..featurize."""
    from modelyard import stages
    from modelyard.config import parse_settings
    from modelyard.search_space import tuning_task

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {task: params["tasks"][task]}
    root = workdir / task
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    ctx = stages.Context(root, parse_settings(params), task)
    for stage in (stages.ingest, stages.validate, stages.split, stages.featurize):
        stage(ctx)
    arrays = dict(np.load(ctx.paths.features))
    study_task = tuning_task(ctx.task, len(arrays["x_train"]), arrays["y_val"])
    size = stages.network_size(study_task, stages._load_preprocessing(ctx))
    return study_task, arrays, size


def configurations(task, k: int, seed: int) -> list:
    """K hyperparameter sets as `ask_together` draws a fused batch (a leader that can fuse,
    then followers with its structure), from the task's effective search space."""
    from modelyard.fused import MEMBER_HPARAMS
    from modelyard.tuning.trials import suggest_hparams

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = task.tune.search_space
    while True:  # a leader with a hidden layer (a linear model is solved exactly, never fused)
        leader = study.ask()
        first = suggest_hparams(leader, task.model, space)
        if task.family != "ann" or first.n_layers > 0:
            break
        study.tell(leader, state=optuna.trial.TrialState.FAIL)
    structure = {name: value for name, value in leader.params.items() if name not in MEMBER_HPARAMS}
    drawn = [first]
    for _ in range(k - 1):
        study.enqueue_trial(structure, skip_if_exists=False)
        drawn.append(suggest_hparams(study.ask(), task.model, space))
    return drawn


def arm(fused: bool, task, arrays: dict, size: dict, hparams: list, epochs: int) -> tuple[float, list[float]]:
    """(wall seconds, each trial's best validation figure) of one arm."""
    from modelyard.fused import fit_fused, fusion_key
    from modelyard.models import build_model
    from modelyard.training import FitOptions, fit

    options = FitOptions.for_task(
        task,
        max_epochs=epochs,
        patience=epochs,  # no early stopping: both arms train every epoch
        seed=0,
        device="cpu",
        target_scale=size["target_scale"],
        target_offset=size["target_offset"],
        tuning=True,
    )

    def network(h):
        torch.manual_seed(0)
        shape = arrays["x_train"].shape[1:]
        return build_model(
            task.family, shape, size["n_outputs"], h, size["vocab_size"], size["masked"], size["n_numeric"]
        )

    train, val = (arrays["x_train"], arrays["y_train"]), (arrays["x_val"], arrays["y_val"])
    start = time.perf_counter()
    if fused:
        models = [network(h) for h in hparams]
        keys = {fusion_key(m, h) for m, h in zip(models, hparams, strict=True)}
        if len(keys) != 1 or None in keys:
            raise SystemExit(f"the drawn {task.family} configurations do not share one fusion key")
        results = fit_fused(models, train, val, hparams, options, [None] * len(hparams))
    else:
        results = [fit(network(h), train, val, h, options) for h in hparams]
    wall = time.perf_counter() - start
    return wall, [r.best_metrics[task.monitor] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="adult,digits", help="built-in tasks (default adult,digits)")
    parser.add_argument("--k", type=int, default=8, help="trials fused (default 8)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per trial (default 12)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn configurations (default 0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-fusion-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    print(
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch threads "
        f"{torch.get_num_threads()}; K={args.k}, {args.epochs} epochs per trial, {args.rounds} rounds"
    )
    try:
        for name in args.tasks.split(","):
            task, arrays, size = features(name.strip(), workdir)
            hparams = configurations(task, args.k, args.seed)
            walls: dict[bool, list[float]] = {False: [], True: []}
            values: dict[bool, list[float]] = {}
            for _ in range(args.rounds):
                for fused in (False, True):
                    wall, values[fused] = arm(fused, task, arrays, size, hparams, args.epochs)
                    walls[fused].append(wall)
            alone, together = statistics.median(walls[False]), statistics.median(walls[True])
            gap = max(abs(a - b) for a, b in zip(values[False], values[True], strict=True))
            print(
                f"{name}: {task.family}, {len(arrays['x_train'])} training rows, batch {hparams[0].batch_size}; "
                f"one at a time {alone:.1f} s ({3600 * args.k / alone:.0f} trials/h), fused {together:.1f} s "
                f"({3600 * args.k / together:.0f} trials/h): {alone / together:.2f}x "
                f"(walls {[round(w, 1) for w in walls[False]]} / {[round(w, 1) for w in walls[True]]}); "
                f"best {task.monitor} one at a time {min(values[False]):.4f}..{max(values[False]):.4f}, "
                f"largest gap between the arms {gap:.4f}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
