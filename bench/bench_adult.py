"""Benchmark modelyard against the hand-written peer (../shared/bench/naive_adult.py) on Adult.

Both run here, one after the other (peer first), with the same trial and epoch budget and
the same seeded split. The timed part is the tuning only: the peer's `study.optimize` and
modelyard's `tune` stage. Then modelyard trains its final model and scores it on the test rows.

    python bench/bench_adult.py --trials 12 --epochs 12
    python bench/bench_adult.py --no-peer --set tasks.adult.metric=loss --json bench/results/loss.json
    python bench/bench_adult.py --no-peer --untracked   # the tune stage with and without MLflow
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PEER = Path(__file__).resolve().parents[2] / "shared" / "bench" / "naive_adult.py"
PEER_LINE = re.compile(r"best_val_acc=(\S+) test_acc=(\S+) wall_s=(\S+) s_per_trial=(\S+)")
TASK = "adult"


def load() -> str:
    """The 1, 5 and 15-minute load averages, as `uptime` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def apply_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=VALUE` items (VALUE read as YAML) in a nested params mapping."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. tasks.adult.metric=loss")
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return params


def run_peer(trials: int, epochs: int, workdir: Path) -> dict[str, float]:
    """The peer script in a subprocess; its printed figures."""
    if not PEER.is_file():
        raise SystemExit(f"peer script not found at {PEER}; expected ../shared/bench/ beside the checkout")
    command = [sys.executable, str(PEER), "--trials", str(trials), "--epochs", str(epochs)]
    command += ["--tracking-uri", f"sqlite:///{workdir / 'naive.db'}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = PEER_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"peer failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    best_val, test, wall, per_trial = (float(x) for x in found.groups())
    return {"best_val_acc": best_val, "test_acc": test, "tune_wall_s": wall, "s_per_trial": per_trial}


def load_study(ctx: Any, best: dict[str, Any]) -> Any:
    import optuna

    from modelyard.tuning.storage import open_storage

    return optuna.load_study(study_name=best["study"], storage=open_storage(None, ctx.paths.study_journal))


def trial_costs(study: Any) -> list[dict[str, Any]]:
    """Where the tune time went: each trial's shape, epochs and seconds, slowest first."""
    rows = []
    for trial in study.trials:
        if trial.datetime_complete is None:
            continue
        shape = {k: trial.params[k] for k in ("n_layers", "units", "batch_size", "dropout") if k in trial.params}
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "epochs": len(trial.intermediate_values),
                "s": round(seconds, 2),
            }
            | {k: round(v, 2) if isinstance(v, float) else v for k, v in shape.items()}
        )
    return sorted(rows, key=lambda row: -row["s"])


def best_val_accuracy(ctx: Any, best: dict[str, Any]) -> float:
    """Validation accuracy of the best trial at its best epoch (also when tuning monitors val_loss)."""
    if "val_accuracy" in best:
        return float(best["val_accuracy"])
    from modelyard import tracking

    study = load_study(ctx, best)
    client = tracking.connect(ctx.root)
    run_id = study.trials[best["best_trial"]].user_attrs["mlflow_run_id"]
    best_epoch = int(client.get_run(run_id).data.params["best_epoch"])
    history = client.get_metric_history(run_id, "val_accuracy")
    return next(m.value for m in history if m.step == best_epoch)


# What the tune stage calls in `tracking`: every MLflow call, and the lineage and dataset
# bookkeeping (git commit, file hashes) that goes with the runs.
TRACKING_CALLS = {
    "Run": (
        *("log_params", "log_metrics", "log_steps", "log_inputs", "log_dict", "set_tags", "finish"),
        *("logged_params", "logged_steps"),
    ),
    "module": (
        *("connect", "experiment_id", "close_dead_runs", "lineage_tags", "dataset_inputs"),
        *("start_run", "find_run", "resume"),
    ),
}


@contextmanager
def tracking_timer() -> Iterator[dict[str, float]]:
    """Seconds and calls spent inside `TRACKING_CALLS` while the block runs, in this process
    (a call made from inside another counts once, in the outer one)."""
    from modelyard import tracking

    spent: dict[str, Any] = {"seconds": 0.0, "calls": 0, "depth": 0, "by_call": {}}
    originals = []

    def timed(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            spent["depth"] += 1
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent["depth"] -= 1
                if spent["depth"] == 0:
                    seconds = time.perf_counter() - start
                    spent["seconds"] += seconds
                    spent["calls"] += 1
                    spent["by_call"][name] = spent["by_call"].get(name, 0.0) + seconds

        return call

    owners = {"Run": tracking.Run, "module": tracking}
    for owner_name, names in TRACKING_CALLS.items():
        for name in names:
            owner = owners[owner_name]
            originals.append((owner, name, getattr(owner, name)))
            setattr(owner, name, timed(name, getattr(owner, name)))
    try:
        yield spent
    finally:
        for owner, name, real in originals:
            setattr(owner, name, real)


@contextmanager
def untracked() -> Iterator[None]:
    """The tune stage with no MLflow at all: every `TRACKING_CALLS` entry does nothing (a run
    is an id), and the study's parameter importances, computed only for MLflow, are not
    computed."""
    import uuid

    from modelyard import tracking
    from modelyard.tuning import study

    def start_run(*args: Any, **kwargs: Any) -> Any:
        return tracking.Run(None, uuid.uuid4().hex, kwargs.get("buffered", False))

    stubs: dict[tuple[Any, str], Any] = {(tracking.Run, name): (lambda *a, **k: None) for name in TRACKING_CALLS["Run"]}
    stubs[(tracking.Run, "logged_params")] = lambda *a, **k: {}
    stubs[(tracking.Run, "logged_steps")] = lambda *a, **k: set()
    stubs.update({(tracking, name): (lambda *a, **k: None) for name in TRACKING_CALLS["module"]})
    stubs[(tracking, "experiment_id")] = lambda *a, **k: "0"
    stubs[(tracking, "close_dead_runs")] = lambda *a, **k: []
    stubs[(tracking, "lineage_tags")] = lambda *a, **k: {}
    stubs[(tracking, "dataset_inputs")] = lambda *a, **k: []
    stubs[(tracking, "start_run")] = start_run
    stubs[(tracking, "resume")] = lambda run: run
    stubs[(study, "param_importances")] = lambda *a, **k: {}
    originals = {key: getattr(*key) for key in stubs}
    for (owner, name), stub in stubs.items():
        setattr(owner, name, stub)
    try:
        yield
    finally:
        for (owner, name), real in originals.items():
            setattr(owner, name, real)


def run_modelyard(
    params: dict[str, Any], workdir: Path, threads: int | None, workers: int, tracked: bool = True
) -> dict[str, Any]:
    """All stages up to evaluate in a throwaway project; only `tune` (and train + evaluate) are
    timed. Not `tracked`: tune alone, with no MLflow (`untracked`)."""
    import torch

    from modelyard import stages, tracking
    from modelyard.config import parse_settings
    from modelyard.files import read_json

    root = workdir / "project"
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'modelyard.db'}"
    if threads:
        torch.set_num_threads(threads)
    ctx = stages.Context(root, parse_settings(params), TASK)
    for stage in (stages.ingest, stages.validate, stages.split, stages.featurize):
        stage(ctx)
    # Untimed, like the peer's set_experiment: create the MLflow store and import the tuning code.
    tracking.experiment_id(tracking.connect(root), root, TASK)
    import modelyard.tuning.study  # noqa: F401

    if not tracked:
        with untracked():
            start = time.perf_counter()
            stages.tune(ctx, **({"workers": workers} if workers > 1 else {}))
            return {"tune_wall_s": time.perf_counter() - start, "trials": read_json(ctx.paths.best_params)["trials"]}
    start = time.perf_counter()
    with tracking_timer() as timed:  # measures this process only: with workers > 1, their calls are not in it
        stages.tune(ctx, **({"workers": workers} if workers > 1 else {}))
    tune_wall = time.perf_counter() - start
    start = time.perf_counter()
    stages.train(ctx)
    stages.evaluate(ctx)
    train_wall = time.perf_counter() - start
    best = read_json(ctx.paths.best_params)
    n_trials = ctx.task.tune.n_trials
    return {
        "best_val_acc": best_val_accuracy(ctx, best),
        "test_acc": read_json(ctx.paths.metrics)["test_accuracy"],
        "tune_wall_s": tune_wall,
        "s_per_trial": tune_wall / n_trials,
        "train_eval_wall_s": train_wall,
        "final_best_epoch": read_json(ctx.paths.train_summary)["best_epoch"],
        "trials": best["trials"],
        "trial_costs": trial_costs(load_study(ctx, best)),
        "best_hparams": best["hparams"],
        "tracking_s": timed["seconds"],
        "tracking_calls": timed["calls"],
        "tracking_by_call": dict(sorted(timed["by_call"].items(), key=lambda item: -item[1])),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'':10} {'best_val_acc':>12} {'test_acc':>9} {'tune_wall_s':>12} {'s/trial':>8}")
    for name, r in results.items():
        if name.startswith("untracked"):
            continue  # tune only: see the overhead line below
        accuracy = f"{r['best_val_acc']:12.4f} {r['test_acc']:9.4f}"
        print(f"{name:10} {accuracy} {r['tune_wall_s']:12.1f} {r['s_per_trial']:8.2f}")
    ours = results["modelyard"]
    print(f"modelyard train+evaluate wall: {ours['train_eval_wall_s']:.1f} s (best epoch {ours['final_best_epoch']})")
    print(f"modelyard trials: {ours['trials']}, torch threads: {ours['torch_threads']}, workers: {ours['workers']}")
    costs = ("; ".join(f"{k} {v}" for k, v in row.items()) for row in ours["trial_costs"])
    print("modelyard trials, slowest first:\n  " + "\n  ".join(costs))
    if ours["workers"] == 1:
        share = ours["tracking_s"] / ours["tune_wall_s"]
        print(
            f"modelyard tracking (MLflow calls and run bookkeeping during tune): {ours['tracking_s']:.2f} s "
            f"in {ours['tracking_calls']} calls, {share:.1%} of the tune wall time; by call: "
            + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in ours["tracking_by_call"].items())
        )
    if "untracked" in results:
        bare = results["untracked"]
        overhead = ours["tune_wall_s"] - bare["tune_wall_s"]
        print(
            f"modelyard tune with MLflow {ours['tune_wall_s']:.1f} s, with no MLflow {bare['tune_wall_s']:.1f} s "
            f"(before it {results['untracked_first']['tune_wall_s']:.1f} s, the process's first tune; trials "
            f"{bare['trials']}): tracking overhead {overhead:.2f} s, {overhead / ours['tune_wall_s']:.1%}"
        )
    if "peer" in results:
        peer = results["peer"]
        print(f"speed ratio peer_wall / modelyard_wall: {peer['tune_wall_s'] / ours['tune_wall_s']:.2f}x")
        print(f"best_val_acc diff (modelyard - peer): {ours['best_val_acc'] - peer['best_val_acc']:+.4f}")
        print(f"test_acc diff (modelyard - peer): {ours['test_acc'] - peer['test_acc']:+.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12, help="trials for both (default 12)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per trial for both (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="modelyard's seed; the peer always uses 0")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for modelyard, e.g. tasks.adult.metric=loss (repeatable)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for modelyard (default: torch's own)")
    parser.add_argument("--workers", type=int, default=1, help="modelyard tuning worker processes (default 1)")
    parser.add_argument("--no-peer", action="store_true", help="run modelyard only")
    parser.add_argument(
        "--untracked",
        action="store_true",
        help="then run modelyard's tune again with no MLflow at all, and print the tracking overhead",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = args.seed
    budget = [f"tasks.{TASK}.tune.n_trials={args.trials}", f"tasks.{TASK}.tune.max_epochs={args.epochs}"]
    params = apply_overrides(params, [*budget, *args.overrides])
    results: dict[str, dict[str, Any]] = {}
    loads: dict[str, str] = {"start": load()}
    with tempfile.TemporaryDirectory(prefix="bench_adult_") as tmp:
        if not args.no_peer:
            results["peer"] = run_peer(args.trials, args.epochs, Path(tmp))
            loads["after_peer"] = load()
        if args.untracked:  # first once untimed-in-effect: it warms what any first tune in a process pays
            results["untracked_first"] = run_modelyard(params, Path(tmp) / "a", args.threads, args.workers, False)
        results["modelyard"] = run_modelyard(params, Path(tmp), args.threads, args.workers)
        loads["after_modelyard"] = load()
        if args.untracked:
            results["untracked"] = run_modelyard(params, Path(tmp) / "b", args.threads, args.workers, False)
            loads["after_untracked"] = load()
    print(f"trials={args.trials} epochs={args.epochs} seed={args.seed} overrides={args.overrides or 'none'}")
    print_table(results)
    print("load average (1/5/15 min): " + ", ".join(f"{k} {v}" for k, v in loads.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {"args": {k: str(v) for k, v in vars(args).items()}, "load": loads, **results}
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
