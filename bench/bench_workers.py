"""Tuning throughput with K worker processes on one Optuna study in PostgreSQL.

For each K it creates two fresh databases on the server (the Optuna study, the MLflow
store), runs the command a user runs,

    modelyard tune --task adult --storage postgresql://... --workers K

in a throwaway project whose data stages ran once, and drops the databases afterwards.
Figures per K: the command's wall time (process start, imports, worker start included),
trials per minute over that wall time, trials per minute between the first trial's start
and the last trial's end (the steady state), and failed trials.

    python bench/bench_workers.py --workers 1 2 --trials 16 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "adult"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def admin(server: dict[str, Any], sql: str) -> None:
    import psycopg2

    with closing(psycopg2.connect(dbname="postgres", connect_timeout=5, **server)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)


@contextmanager
def database(server: dict[str, Any], purpose: str):
    name = f"modelyard_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(root: Path, trials: int, epochs: int) -> None:
    """A project with only the task, its tune budget set, and its data stages done."""
    from modelyard import stages
    from modelyard.config import load_settings

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {TASK: params["tasks"][TASK]}
    params["tasks"][TASK]["tune"].update(n_trials=trials, max_epochs=epochs)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    ctx = stages.Context(root, load_settings(root / "params.yaml"), TASK)
    for stage in (stages.ingest, stages.validate, stages.split, stages.featurize):
        stage(ctx)


def run_tune(root: Path, server: dict[str, Any], workers: int, omp_threads: int | None) -> dict[str, Any]:
    """One `modelyard tune` with fresh databases; its figures."""
    import optuna
    from optuna.trial import TrialState

    from modelyard.tracking import driver_url

    base = f"postgresql://{server['user']}@{server['host']}:{server['port']}"
    with database(server, "optuna") as optuna_db, database(server, "mlflow") as mlflow_db:
        storage = f"{base}/{optuna_db}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": driver_url(f"{base}/{mlflow_db}")}
        if omp_threads:
            env["OMP_NUM_THREADS"] = str(omp_threads)
        command = [str(Path(sys.executable).parent / "modelyard"), "tune", "--task", TASK]
        command += ["--storage", storage, "--workers", str(workers)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
        rdb = optuna.storages.RDBStorage(driver_url(storage))
        (summary,) = rdb.get_all_studies()
        trials = optuna.load_study(study_name=summary.study_name, storage=rdb).get_trials()
        rdb.engine.dispose()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    ended = [t for t in trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in ended) - min(t.datetime_start for t in ended)).total_seconds()
    return {
        "workers": workers,
        "exit_code": done.returncode,
        "wall_s": wall,
        "finished": len(finished),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "trials_per_min_wall": len(finished) / wall * 60,
        "trials_per_min_steady": len(finished) / span * 60 if span > 0 else float("nan"),
        "worker_pids": len({t.user_attrs.get("worker", {}).get("pid") for t in trials}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts K (default 1 2)")
    parser.add_argument("--trials", type=int, default=16, help="trials M per run (default 16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--host", default="127.0.0.1", help="PostgreSQL host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5432, help="PostgreSQL port (default 5432)")
    parser.add_argument("--user", default="postgres", help="PostgreSQL user, allowed to create databases")
    parser.add_argument(
        "--omp-threads",
        type=int,
        help="OMP_NUM_THREADS for the tune command (default: unset; spawned workers take cpus // K threads)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    server = {"host": args.host, "port": args.port, "user": args.user}

    results, loads = [], {"start": load()}
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        root = Path(tmp) / "project"
        prepare(root, args.trials, args.epochs)
        for workers in args.workers:
            results.append(run_tune(root, server, workers, args.omp_threads))
            loads[f"after_K{workers}"] = load()
    threads = args.omp_threads or "unset"
    print(f"task={TASK} trials={args.trials} epochs={args.epochs} cpus={os.cpu_count()} OMP_NUM_THREADS={threads}")
    print(f"{'K':>2} {'wall_s':>7} {'finished':>8} {'failed':>6} {'trials/min(wall)':>16} {'trials/min(steady)':>18}")
    for r in results:
        print(
            f"{r['workers']:>2} {r['wall_s']:7.1f} {r['finished']:8d} {r['failed']:6d} "
            f"{r['trials_per_min_wall']:16.1f} {r['trials_per_min_steady']:18.1f}"
            + (f"  exit {r['exit_code']}" if r["exit_code"] else "")
        )
    print("load average (1/5/15 min): " + ", ".join(f"{k} {v}" for k, v in loads.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "load": loads, "runs": results}, indent=2, default=str))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
