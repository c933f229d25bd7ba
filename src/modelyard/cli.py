"""`modelyard <stage> [--task T]`: run a pipeline stage by hand, exactly as DVC runs it;
`modelyard retrain | history | rollback | predict`: the model lifecycle; `modelyard add`:
a new task inferred from a table.

Exit codes: 0 done; 2 bad input (params, data, files; the message says how to fix it);
3 data failed validation; 1 an unexpected error (rerun with --debug for the traceback);
130 interrupted (Ctrl-C), 143 terminated (SIGTERM: a service stop, a cancelled CI job);
either way the command's MLflow runs end KILLED or FAILED. `retrain` adds: 0 promoted,
10 kept the champion, 11 up to date, 4 training failed, 5 lock timeout (another job held the
task's lock too long).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.errors import ModelyardError, Terminated, request_termination, stop_if_terminated
from modelyard.redaction import redact

if TYPE_CHECKING:
    from modelyard.config import Settings

STAGE_HELP = {
    "ingest": "read a task's source into data/<task>/raw.parquet",
    "validate": "check the raw data with Great Expectations (Data Docs in data/<task>/data_docs)",
    "split": "seeded train / validation / test split",
    "featurize": "fit encoders and scaling on the training split; transform all splits",
    "tune": "Optuna study over the search space, one MLflow child run per trial (--workers N, --storage URL)",
    "train": "train the final model with the best hyperparameters and log it to MLflow",
    "evaluate": "test metrics and plots for the trained model",
    "register": "register the model; promote it to champion only if it beats the current one",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard", description="Tracked, reproducible training pipeline. `dvc repro` runs all stages in order."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and library logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, text in STAGE_HELP.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--task", action="append", help="task name from params.yaml (repeatable; default: all tasks)")
        sub.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if name == "tune":
            sub.add_argument(
                "--storage",
                metavar="URL",
                help="Optuna storage overriding tasks.<task>.tune.storage, e.g. postgresql://user@host/db; "
                "keep the password in ~/.pgpass or PGPASSWORD rather than in the URL",
            )
            sub.add_argument(
                "--workers",
                type=_positive_int,
                default=1,
                metavar="N",
                help="tuning processes on this machine (default 1); the same command on other machines, "
                "with the same RDB storage, joins the same study",
            )
    _add_lifecycle_commands(commands)
    add = commands.add_parser(
        "add",
        help="write a complete task into params.yaml, inferred from a table or images",
        description="Infer schema, problem, family and encoders from a table, an image folder or an image "
        "array (.npz, .npy, IDX with --labels) and add the "
        "task to params.yaml (the rest of the file kept as it is); a source outside data/sources/ is copied there.",
    )
    add.add_argument("name", help="the new task's name")
    add.add_argument(
        "--source", type=Path, required=True, help="a CSV or Parquet table, an image folder, or an image array"
    )
    add.add_argument("--labels", type=Path, help="the labels file of an IDX or .npy images file")
    add.add_argument("--target", help="the column to predict (an image folder: the label's name, default label)")
    add.add_argument("--problem", choices=["binary", "multiclass", "regression"], help="default: inferred")
    add.add_argument("--family", choices=["ann", "lstm"], help="default: inferred (lstm for text, series, sequences)")
    add.add_argument("--dry-run", action="store_true", help="print the entry; write nothing")
    add.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
    add.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def _add_lifecycle_commands(commands: argparse._SubParsersAction) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--task", required=True, help="task name from params.yaml")
        sub.add_argument("--params", type=Path, default=None, help="params file (default: <repo>/params.yaml)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        return sub

    retrain = command(
        "retrain",
        "rerun a task's stages on new data and promote the new model only on evidence; exit codes: "
        "0 promoted, 10 kept the champion, 11 up to date, 3 validation failed, 4 training failed, 5 lock timeout",
    )
    retrain.add_argument("--data", type=Path, help="CSV / Parquet file to train on instead of the task's source")
    retrain.add_argument("--force", action="store_true", help="retrain even when nothing changed")
    retrain.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="tuning processes")
    for sub in (retrain, command("rollback", "move the champion alias back to the previous champion")):
        sub.add_argument(
            "--lock-timeout", type=float, default=600.0, metavar="SECONDS", help="wait this long for another job"
        )
    commands.choices["rollback"].add_argument("--to", type=_positive_int, metavar="VERSION", help="version to restore")
    command("history", "which version was champion when, and why")
    predict = command("predict", "score raw input (CSV / Parquet rows, or .npy / .npz images) with the champion")
    predict.add_argument("--input", type=Path, required=True, help="CSV / Parquet rows, or .npy / .npz images")
    predict.add_argument("--output", type=Path, required=True, help="CSV or Parquet file to write")
    predict.add_argument("--version", type=_positive_int, help="a registered version instead of the champion")


def _positive_int(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def override_storage(settings: Settings, url: str) -> Settings:
    """Settings with every task's `tune.storage` set to `url` (the `--storage` option)."""
    tasks = {
        name: task.model_copy(update={"tune": task.tune.model_copy(update={"storage": url})})
        for name, task in settings.tasks.items()
    }
    return settings.model_copy(update={"tasks": tasks})


def quiet_libraries() -> None:
    """Keep third-party chatter (migrations, deprecations, progress bars) off the console."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow", "great_expectations", "optuna", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_lifecycle(args: argparse.Namespace, root: Path, settings: Settings) -> int:
    from modelyard import lifecycle

    settings.task(args.task)
    if args.command == "retrain":
        return lifecycle.retrain(
            root,
            settings,
            args.task,
            data=args.data,
            force=args.force,
            lock_timeout_s=args.lock_timeout,
            workers=args.workers,
        )
    if args.command == "rollback":
        lifecycle.rollback(root, settings, args.task, args.to, args.lock_timeout)
    elif args.command == "history":
        rows = lifecycle.history(root, args.task)
        print(lifecycle.format_history(rows) if rows else f"no decisions recorded for task {args.task} yet")
    else:
        lifecycle.predict_file(root, settings, args.task, args.input, args.output, args.version)
    return 0


def run_add(args: argparse.Namespace, root: Path) -> int:
    from modelyard.console import say
    from modelyard.onboarding import add_task

    text, inferred = add_task(
        root,
        args.name,
        args.source,
        args.target,
        labels=args.labels,
        problem=args.problem,
        family=args.family,
        dry_run=args.dry_run,
    )
    for note in inferred.notes:
        say(f"add {args.name}: {note}")
    if args.dry_run:
        print(text, end="")
    else:
        say(f"add {args.name}: written to params.yaml; run it with: dvc repro register@{args.name}")
    return 0


def run(args: argparse.Namespace) -> int:
    from modelyard.config import load_settings
    from modelyard.files import remove_stale_temporaries
    from modelyard.paths import find_root
    from modelyard.stages import STAGES, Context

    root = find_root(args.params.parent if args.params else None)
    if args.command == "add":
        return run_add(args, root)
    settings = load_settings(args.params or root / "params.yaml")
    if args.command not in STAGES:
        return run_lifecycle(args, root, settings)
    options = {}
    if args.command == "tune":
        options["workers"] = args.workers
        if args.storage:
            settings = override_storage(settings, args.storage)
    for task_name in args.task or list(settings.tasks):
        settings.task(task_name)
        ctx = Context(root, settings, task_name)
        remove_stale_temporaries(ctx.paths.dir)  # what a killed earlier run left half-written
        STAGES[args.command](ctx, **options)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        quiet_libraries()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_termination)
    try:
        code = run(args)
        stop_if_terminated()  # a stage with no safe point of its own finished first
    except ModelyardError as exc:
        if args.debug:
            raise
        print(redact(f"error: {exc}"), file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            redact(f"error: unexpected {type(exc).__name__}: {exc}\n  rerun with --debug for the traceback"),
            file=sys.stderr,
        )
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
