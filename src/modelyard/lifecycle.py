"""The model lifecycle after the first pipeline run: unattended retraining that promotes on
evidence, the audit history, rollback, and batch prediction with the champion.

`retrain` runs the same stage functions `dvc repro` runs, writing to a scratch folder that
replaces the files of `data/<task>/` once it succeeds, then decides with the paired test of
`modelyard.promotion`. It does not update `dvc.lock`: the next `dvc repro` reruns the
stages from params.yaml and the source file.

Every decision about the champion is an MLflow run tagged `modelyard.audit=true` in the
task's experiment (register, retrain, rollback); `history` lists those runs and `rollback`
follows their `fallback_version` tags back to the champion before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard import registry, tracking
from modelyard.config import TABLE_SUFFIXES, Settings
from modelyard.console import say
from modelyard.data.sources import conform, frame_hash, read_table, read_task_frame
from modelyard.errors import DataRejected, ModelyardError
from modelyard.files import atomic_path, move_over, remove_stale_temporaries, write_json
from modelyard.paths import TaskPaths
from modelyard.stages import STAGES, Context, register_model, tune

# Exit codes of `modelyard retrain` (errors share the other commands' codes: 1 unexpected, 2 bad input).
PROMOTED = 0
VALIDATION_FAILED = 3
TRAINING_FAILED = 4
LOCK_TIMEOUT = 5
KEPT_CHAMPION = 10
UP_TO_DATE = 11

PREDICTION_SUFFIXES = (".csv", ".parquet", ".pq")


class LockTimeout(ModelyardError):
    exit_code = LOCK_TIMEOUT


class TrainingFailed(ModelyardError):
    exit_code = TRAINING_FAILED


@contextmanager
def task_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path`, waiting up to `timeout_s` seconds for another holder.

    An OS lock (flock): it is released when its process ends, even by kill -9, so a crashed
    job never blocks the next one. It guards one checkout; jobs on other machines sharing a
    tracking server need a scheduler that runs one job at a time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as handle:
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise LockTimeout(
                        f"{what}: another job ({holder}) held {path} for the whole {timeout_s:g} s wait",
                        "let it finish, or pass a longer --lock-timeout",
                    ) from None
                if not announced:
                    say(f"{what}: waiting up to {timeout_s:g} s for another job to finish")
                    announced = True
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def code_version() -> str:
    """A hash of the installed modelyard package's source files."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def input_versions(ctx: Context) -> dict[str, str]:
    """What a retrain depends on: the data's content, the task's params, the code.

    The source's location is left out of the params: the same rows under a new file name
    (a dated drop folder) are the same data.
    """
    frame = read_task_frame(ctx.task, ctx.root)
    params = {"seed": ctx.settings.seed, "task": ctx.task.model_dump(mode="json", by_alias=True, exclude={"source"})}
    return {
        "data": frame_hash(frame),
        "params": _sha256(json.dumps(params, sort_keys=True)),
        "code": code_version(),
    }


def with_source(settings: Settings, task_name: str, data: Path) -> Settings:
    """Settings whose task reads `data` (the `--data` option) instead of its own source."""
    task = settings.task(task_name)
    if data.suffix.lower() not in TABLE_SUFFIXES:
        raise ModelyardError(f"--data {data}: not a .csv or .parquet file", "pass a CSV or Parquet file")
    # Unlike params.yaml's sources, --data may lie anywhere (a dated drop folder): the retrain
    # reads it once and records its content hash. The task's CSV dialect still applies.
    update = {"path": str(data.resolve()), "builtin": None, "test": None, "labels": None}
    source = task.source.model_copy(update=update)
    tasks = {**settings.tasks, task_name: task.model_copy(update={"source": source})}
    return settings.model_copy(update={"tasks": tasks})


def _audit_runs(client, experiment: str, newest_first: bool = True) -> list:
    return tracking.search_runs(client, experiment, {tracking.TAG_AUDIT: "true"}, newest_first)


def _last_success(client, experiment: str):
    found = tracking.search_runs(client, experiment, {tracking.TAG_SUCCEEDED: "true"}, max_results=1)
    return found[0] if found else None


def _metric_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def retrain(
    root: Path,
    settings: Settings,
    task_name: str,
    *,
    data: Path | None = None,
    force: bool = False,
    lock_timeout_s: float = 600.0,
    workers: int = 1,
) -> int:
    """Retrain a task on its current (or `data`) source and promote on evidence.

    Returns PROMOTED, KEPT_CHAMPION or UP_TO_DATE; raises ValidationFailed or DataRejected
    (exit 3), TrainingFailed (4) or LockTimeout (5). Whatever happens, the champion alias moves only
    through the final registration step.
    """
    if data is not None:
        settings = with_source(settings, task_name, data)
    # The stages write to a scratch folder, moved over data/<task>/ only when the retrain
    # succeeds: a failed one leaves the files of the last good run (the champion's) in place.
    ctx = Context(root, settings, task_name, staging=root / "data" / f".retrain-{task_name}")
    with task_lock(ctx.paths.retrain_lock, lock_timeout_s, f"retrain {task_name}"):
        versions = input_versions(ctx)
        fingerprint = _sha256(json.dumps(versions, sort_keys=True))
        client = tracking.connect(root)
        experiment = tracking.experiment_id(client, root, task_name)
        last = _last_success(client, experiment)
        last_versions = json.loads(last.data.tags.get(tracking.TAG_INPUT_VERSIONS, "{}")) if last else {}
        if last is not None and last.data.tags.get(tracking.TAG_FINGERPRINT) == fingerprint and not force:
            say(
                f"retrain {task_name}: up to date: data, params and code are unchanged since the retrain "
                f"of {datetime.fromtimestamp(last.info.start_time / 1000, UTC):%Y-%m-%d %H:%M} UTC "
                f"(run {last.info.run_id}); pass --force to retrain anyway"
            )
            return UP_TO_DATE
        changed = [name for name in versions if last_versions.get(name) != versions[name]]
        reason = "forced" if force and not changed else ("changed: " + ", ".join(changed) if last else "first retrain")
        say(f"retrain {task_name}: {reason}")
        champion = registry.champion_version(client, task_name)
        before = (
            {tracking.TAG_PREVIOUS: str(champion.version), tracking.TAG_CHAMPION: str(champion.version)}
            if champion
            else {}
        )
        run = tracking.start_run(
            client,
            experiment,
            f"retrain-{task_name}",
            {
                **ctx.tags("retrain", {}),
                tracking.TAG_AUDIT: "true",
                tracking.TAG_EVENT: "retrain",
                tracking.TAG_FINGERPRINT: fingerprint,
                tracking.TAG_INPUT_VERSIONS: json.dumps(versions, sort_keys=True),
                **before,
            },
        )
        run.log_params({"source": str(data or ctx.task.source.path or ctx.task.source.builtin), "trigger": reason})
        shutil.rmtree(ctx.staging, ignore_errors=True)  # what a killed retrain left
        remove_stale_temporaries(TaskPaths(root, task_name).dir)
        try:
            outcome = _retrain_steps(ctx, client, run, workers)
            move_over(ctx.staging, TaskPaths(root, task_name).dir)
            return outcome
        except KeyboardInterrupt:
            run.set_tags({tracking.TAG_OUTCOME: "interrupted"})
            run.finish("KILLED")
            raise
        except BaseException as exc:
            outcome = {3: "validation failed", 4: "training failed"}.get(getattr(exc, "exit_code", 1), "error")
            run.set_tags({tracking.TAG_OUTCOME: outcome, tracking.TAG_REASON: str(exc)[:4000]})
            run.finish("FAILED")
            raise
        finally:
            shutil.rmtree(ctx.staging, ignore_errors=True)


def _retrain_steps(ctx: Context, client, run: tracking.Run, workers: int) -> int:
    """The stages of one retrain, its drift report and its decision, logged to `run`."""
    from modelyard.drift import drift_report, summarize

    for stage in ("ingest", "validate"):
        STAGES[stage](ctx)  # ValidationFailed (exit 3) propagates: nothing was trained
    champion = registry.champion_bundle(client, ctx.task_name)
    summary: dict[str, Any] = {"started": _now(), "run_id": run.run_id}
    if champion is not None and champion.reference is not None:
        report = drift_report(champion.reference, pd.read_parquet(ctx.paths.raw), ctx.task.schema_)
        summary["drift"] = [d.to_dict() for d in report]
        metrics = {f"drift_psi_{_metric_key(d.column)}": d.psi for d in report}
        metrics |= {f"drift_ks_{_metric_key(d.column)}": d.ks_statistic for d in report if d.ks_statistic is not None}
        metrics["drift_n_columns_drifted"] = sum(d.level != "stable" for d in report)
        run.log_metrics(metrics)
        run.log_dict(summary["drift"], "drift.json")
        say(f"retrain {ctx.task_name}: drift against the champion's training data: {summarize(report)}")
    else:
        say(f"retrain {ctx.task_name}: no champion training sample to measure drift against")
    try:
        for stage in ("split", "featurize"):
            STAGES[stage](ctx)
        tune(ctx, workers=workers, warm_start=champion.hparams if champion is not None else None)
        STAGES["train"](ctx)
        STAGES["evaluate"](ctx)
    except DataRejected:  # exit 3, as validation: the data cannot make a model
        raise
    except Exception as exc:
        raise TrainingFailed(
            f"retrain {ctx.task_name}: training failed ({type(exc).__name__}: {exc}); the champion is unchanged",
            "see the messages above; rerun with --debug for the traceback",
        ) from exc
    decision = register_model(ctx)
    write_json(ctx.paths.registry_decision, decision)
    comparison = decision["comparison"] or {}
    run.log_metrics(
        {
            key: comparison[key]
            for key in ("challenger", "champion", "improvement", "ci_low", "ci_high", "p_value")
            if comparison.get(key) is not None
        }
    )
    run.set_tags({**registry.decision_tags("retrain", decision), tracking.TAG_SUCCEEDED: "true"})
    summary |= {"finished": _now(), "decision": decision}
    run.log_dict(summary, "retrain.json")
    write_json(ctx.paths.retrain_summary, summary)
    run.finish("FINISHED")
    if decision["promoted"]:
        say(f"retrain {ctx.task_name}: version {decision['version']} promoted to champion ({decision['reason']})")
        return PROMOTED
    say(
        f"retrain {ctx.task_name}: kept champion v{decision['champion_version']}; "
        f"version {decision['version']} is challenger ({decision['reason']})"
    )
    return KEPT_CHAMPION


def history(root: Path, task_name: str) -> list[dict[str, str]]:
    """Every recorded decision about the task's champion, oldest first."""
    client = tracking.connect(root)
    experiment = tracking.existing_experiment(client, task_name)
    if experiment is None:
        return []
    rows = []
    for found in _audit_runs(client, experiment, newest_first=False):
        tags = found.data.tags
        rows.append(
            {
                "time": datetime.fromtimestamp(found.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "event": tags.get(tracking.TAG_EVENT, ""),
                "outcome": tags.get(tracking.TAG_OUTCOME)
                or ("running" if found.info.status == "RUNNING" else found.info.status.lower()),
                "champion": tags.get(tracking.TAG_CHAMPION, "-"),
                "candidate": tags.get(tracking.TAG_CANDIDATE, "-"),
                "reason": tags.get(tracking.TAG_REASON, ""),
                "run_id": found.info.run_id,
            }
        )
    return rows


def format_history(rows: list[dict[str, str]]) -> str:
    """A table for the console: when, what, champion after, candidate, why."""
    header = {"time": "time (UTC)", "event": "event", "outcome": "outcome", "champion": "champion", "candidate": "new"}
    widths = {key: max(len(header[key]), *(len(row[key]) for row in rows)) for key in header}
    lines = ["  ".join(header[k].ljust(widths[k]) for k in header) + "  reason"]
    for row in rows:
        lines.append("  ".join(row[k].ljust(widths[k]) for k in header) + "  " + row["reason"])
    return "\n".join(lines)


def _fallback_of(runs: list, version: str) -> str | None:
    """Where a rollback from `version` goes: the fallback recorded when it last became champion."""
    for found in runs:
        tags = found.data.tags
        moved = tags.get(tracking.TAG_OUTCOME) in ("promoted", "rolled back")
        if moved and tags.get(tracking.TAG_CHAMPION) == version:
            return tags.get(tracking.TAG_FALLBACK)
    return None


def rollback(
    root: Path, settings: Settings, task_name: str, to_version: int | None = None, lock_timeout_s: float = 600.0
) -> dict[str, Any]:
    """Move `champion` back to the version before the current one (or to `to_version`).

    The target must load as a model before the alias moves; the move is recorded as an
    audit run. Rolling back twice walks two promotions back.
    """
    ctx = Context(root, settings, task_name)
    with task_lock(ctx.paths.retrain_lock, lock_timeout_s, f"rollback {task_name}"):
        client = tracking.connect(root)
        current = registry.champion_version(client, task_name)
        if current is None:
            raise ModelyardError(f"task {task_name} has no champion to roll back", "run the pipeline first: dvc repro")
        experiment = tracking.experiment_id(client, root, task_name)
        runs = _audit_runs(client, experiment)
        current_version = str(current.version)
        target = str(to_version) if to_version is not None else _fallback_of(runs, current_version)
        if target is None:
            raise ModelyardError(
                f"no champion before v{current_version} is recorded for task {task_name}",
                "name the version to go back to: modelyard rollback --task T --to VERSION",
            )
        if target == current_version:
            raise ModelyardError(f"v{target} is already the champion of task {task_name}", "pick another --to VERSION")
        try:
            registry.load_champion(task_name, int(target))
        except Exception as exc:
            raise ModelyardError(
                f"version {target} of model {task_name} cannot be loaded ({type(exc).__name__}: {exc})",
                "the champion was left unchanged; pick another --to VERSION",
            ) from None
        fallback = _fallback_of(runs, target)
        reason = f"rolled back from v{current_version} to v{target} by {os.environ.get('USER', 'unknown user')}"
        registry.set_champion(client, task_name, int(target))
        tags = {
            tracking.TAG_AUDIT: "true",
            tracking.TAG_EVENT: "rollback",
            tracking.TAG_OUTCOME: "rolled back",
            tracking.TAG_CHAMPION: target,
            tracking.TAG_PREVIOUS: current_version,
            tracking.TAG_REASON: reason,
            **({tracking.TAG_FALLBACK: fallback} if fallback else {}),
        }
        run = tracking.start_run(client, experiment, f"rollback-{task_name}", tags)
        run.finish("FINISHED")
        registry.mark_rolled_back(client, task_name, current_version, _now())
        say(f"rollback {task_name}: champion is v{target} again (was v{current_version})")
        return {"champion": int(target), "previous": int(current_version), "reason": reason}


def _check_numbers(data: pd.DataFrame, schema, input_path: Path) -> None:
    """Each column the model signs as a number holds numbers (or blanks): an error names the
    column and how many values are not, never the values (they are the user's data)."""
    numeric = {spec.name for spec in schema.inputs if spec.type.name in ("double", "float", "long", "integer")}
    for name in (c for c in data.columns if c in numeric):
        values = data[name]
        bad = int((pd.to_numeric(values, errors="coerce").isna() & values.notna()).sum())
        if bad:
            raise ModelyardError(
                f"{input_path}: column {name!r} holds {bad} value(s) that are not numbers",
                f"give numbers in {name!r} (a blank cell is a missing value, which the model handles)",
            )


def predict_file(
    root: Path, settings: Settings, task_name: str, input_path: Path, output_path: Path, version: int | None = None
) -> int:
    """Score raw input with the champion (or `version`) and write the predictions to
    `output_path`; returns the number of rows written.

    Tabular and text rows keep their input columns beside `predicted_*` columns. Images
    (a .npy / .npz file) get one row per image, a series one row per forecast step (origin,
    time, step, value), sequences one row per id: their rows do not match input rows.
    """
    from modelyard.kinds import kind_of

    task = settings.task(task_name)
    if output_path.suffix.lower() not in PREDICTION_SUFFIXES:
        raise ModelyardError(f"--output {output_path}: not a .csv or .parquet file", "name a .csv or .parquet file")
    rows = None  # the file's rows as written, kept beside tabular and text predictions
    if input_path.suffix.lower() in (".npy", ".npz"):
        if not kind_of(task).takes_arrays:
            raise ModelyardError(f"{input_path}: arrays are input for image tasks", "give a .csv or .parquet file")
        from modelyard.data.images import read_unlabelled_images

        data = read_unlabelled_images(input_path).astype(np.float32)
    else:
        rows = read_table(input_path).reset_index(drop=True)
        if rows.empty:
            raise ModelyardError(f"{input_path} holds no rows", "give a file with a header and at least one row")
        data = conform(rows, task.schema_)
    client = tracking.connect(root)
    which = f"version {version}" if version else "champion"
    if version is None and registry.champion_version(client, task_name) is None:
        raise ModelyardError(f"task {task_name} has no champion model yet", "run the pipeline first: dvc repro")
    try:
        model = registry.load_champion(task_name, version)
    except Exception as exc:
        raise ModelyardError(
            f"the {which} of model {task_name} cannot be loaded ({type(exc).__name__}: {exc})",
            "check the version with: modelyard history --task " + task_name,
        ) from None
    if isinstance(data, pd.DataFrame):
        expected = model.metadata.get_input_schema().input_names()
        missing = [c for c in expected if c not in data.columns]
        if missing:
            raise ModelyardError(
                f"{input_path} lacks column(s) the model needs: {', '.join(missing)}",
                f"the model reads: {', '.join(expected)}",
            )
        data = data[expected]
        _check_numbers(data, model.metadata.get_input_schema(), input_path)
    try:
        # The bundle itself, not the pyfunc wrapper: MLflow's signature check rejects a whole
        # batch for one blank cell in an integer column, which the bundle imputes.
        predictions = registry.bundle_of(model).predict(data)
    except ModelyardError:
        raise
    except Exception as exc:  # its message may quote the input rows: only the type is shown
        raise ModelyardError(
            f"the {which} of model {task_name} could not score {input_path} ({type(exc).__name__})",
            "check the column types against the model's signature; --debug shows the full error",
        ) from exc
    if rows is not None and kind_of(task).keeps_rows:
        result = pd.concat([rows, predictions.add_prefix("predicted_")], axis=1)
    else:
        result = predictions
    with atomic_path(output_path) as temporary:
        if output_path.suffix.lower() == ".csv":
            result.to_csv(temporary, index=False)
        else:
            result.to_parquet(temporary, index=False)
    say(f"predict {task_name}: wrote {len(result)} rows to {output_path} ({which})")
    return len(result)
