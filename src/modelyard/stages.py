"""The pipeline's stages: each reads its declared inputs, calls the core, and writes its
declared outputs atomically. `pipeline/<stage>.py` (run by DVC) and `modelyard <stage>`
both call these functions.

Heavy libraries (torch, MLflow, category_encoders) are imported inside the stages that
use them, so light stages such as ingest and split start in a fraction of a second.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import Hyperparams, Settings, TaskSettings
from modelyard.console import Progress, say
from modelyard.data.sources import conform, frame_hash, read_source
from modelyard.errors import ModelyardError
from modelyard.files import atomic_path, read_json, write_json
from modelyard.paths import TaskPaths

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Context:
    """One task's settings and files, as every stage sees them."""

    root: Path
    settings: Settings
    task_name: str

    @property
    def task(self) -> TaskSettings:
        return self.settings.task(self.task_name)

    @cached_property
    def paths(self) -> TaskPaths:
        return TaskPaths(self.root, self.task_name)

    def need(self, path: Path, stage: str) -> Path:
        """An input file, or an error that says which stage makes it."""
        if not path.exists():
            raise ModelyardError(
                f"{path.relative_to(self.root)} does not exist", f"run the {stage} stage first: dvc repro"
            )
        return path

    def read_split(self, part: str) -> pd.DataFrame:
        return pd.read_parquet(self.need(self.paths.split_file(part), "split"))

    def tags(self, stage: str, inputs: dict[str, Path]) -> dict[str, str]:
        from modelyard import tracking

        return tracking.lineage_tags(self.root, self.task_name, self.task.family, stage, inputs)


def ingest(ctx: Context) -> None:
    """Read the task's source into data/<task>/raw.parquet and record its size and hash."""
    frame = conform(read_source(ctx.task.source, ctx.root), ctx.task.schema_)
    with atomic_path(ctx.paths.raw) as temporary:
        frame.to_parquet(temporary, index=False)
    summary = {"rows": len(frame), "columns": frame.shape[1], "sha256": frame_hash(frame)}
    write_json(ctx.paths.ingest_summary, {**summary, "source": ctx.task.source.model_dump(mode="json")})
    say(f"ingest {ctx.task_name}: {summary['rows']} rows x {summary['columns']} columns")


def validate(ctx: Context) -> None:
    """Check the raw data against the task's schema with Great Expectations; stop on failure."""
    from modelyard.data.validation import ValidationFailed, validate_frame

    frame = pd.read_parquet(ctx.need(ctx.paths.raw, "ingest"))
    report = validate_frame(frame, ctx.task, docs_dir=ctx.paths.data_docs)
    write_json(ctx.paths.validation_summary, report.to_dict())
    if not report.success:
        raise ValidationFailed(report, ctx.task_name)
    say(f"validate {ctx.task_name}: {report.n_expectations} expectations passed")


def split(ctx: Context) -> None:
    """Seeded train / validation / test split of validated data."""
    from modelyard.data.splitting import split_frame

    if not read_json(ctx.need(ctx.paths.validation_summary, "validate")).get("success"):
        raise ModelyardError(f"the data of task {ctx.task_name} failed validation", "see data/<task>/validation.json")
    frame = pd.read_parquet(ctx.need(ctx.paths.raw, "ingest"))
    task = ctx.task
    parts = split_frame(
        frame, task.target, task.split, classification=task.problem != "regression", seed=ctx.settings.seed
    )
    with atomic_path(ctx.paths.split_dir) as temporary:
        temporary.mkdir()
        for name, part in zip(SPLITS, parts, strict=True):
            part.to_parquet(temporary / f"{name}.parquet", index=False)
    say(f"split {ctx.task_name}: " + ", ".join(f"{n} {len(p)}" for n, p in zip(SPLITS, parts, strict=True)))


def featurize(ctx: Context) -> None:
    """Fit encoders, imputation and scaling on the training rows only; transform all splits."""
    from modelyard.features import TargetCodec, build_preprocessor

    task = ctx.task
    frames = {part: ctx.read_split(part) for part in SPLITS}
    train = frames["train"]
    classes = list(task.schema_.columns[task.target].categories or []) or None
    codec = TargetCodec(task.problem, classes=classes, positive_label=task.positive_label).fit(train[task.target])
    preprocessor = build_preprocessor(task, seed=ctx.settings.seed).fit(
        train.drop(columns=[task.target]), codec.encode(train[task.target])
    )
    arrays: dict[str, np.ndarray] = {}
    for part, frame in frames.items():
        arrays[f"x_{part}"] = preprocessor.transform(frame.drop(columns=[task.target]))
        arrays[f"y_{part}"] = codec.encode(frame[task.target])
    with atomic_path(ctx.paths.features) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    with atomic_path(ctx.paths.preprocessor) as temporary, open(temporary, "wb") as handle:
        pickle.dump({"preprocessor": preprocessor, "codec": codec}, handle)
    say(f"featurize {ctx.task_name}: {preprocessor.n_features_out_} features")


def _load_arrays(ctx: Context) -> dict[str, np.ndarray]:
    with np.load(ctx.need(ctx.paths.features, "featurize")) as data:
        return {name: data[name] for name in data.files}


def _load_preprocessing(ctx: Context) -> dict[str, Any]:
    with open(ctx.need(ctx.paths.preprocessor, "featurize"), "rb") as handle:
        return pickle.load(handle)


def tune(ctx: Context, workers: int = 1, warm_start: Hyperparams | None = None) -> None:
    """Run, resume or join the Optuna study with `workers` processes; write the best hyperparameters.

    The storage is `tasks.<task>.tune.storage` (an RDB URL; the same command on other
    machines joins the same study), else the local journal file. `warm_start` hyperparameters
    (retraining passes the champion's) are the first trial of a new study.
    """
    from modelyard import tracking
    from modelyard.bundle import n_outputs
    from modelyard.tuning import Arrays, describe_trial, run_study, storage_label, study_fingerprint

    task = ctx.task
    arrays = _load_arrays(ctx)
    codec = _load_preprocessing(ctx)["codec"]
    features = Arrays(
        arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"], n_outputs(task.problem, codec)
    )
    client = tracking.connect(ctx.root)
    experiment = tracking.experiment_id(client, ctx.root, ctx.task_name)
    name = f"{ctx.task_name}-{study_fingerprint(tracking.file_md5(ctx.paths.features), task, ctx.settings.seed)}"
    storage = task.tune.storage
    say(
        f"tune {ctx.task_name}: study {name} in {storage_label(storage, ctx.paths.study_journal)}, "
        f"{workers} worker{'s' if workers > 1 else ''}"
    )
    # Spawned workers print a line per trial themselves; one in-process worker drives the bar.
    progress = Progress(task.tune.n_trials, f"tune {ctx.task_name}") if workers == 1 else None

    def on_trial_end(trial, total: int) -> None:
        progress.step(describe_trial(trial, task.monitor))

    try:
        result = run_study(
            ctx.task_name,
            task,
            features,
            study_name=name,
            storage_url=storage,
            journal=ctx.paths.study_journal,
            seed=ctx.settings.seed,
            device=ctx.settings.device,
            root=ctx.root,
            client=client,
            experiment=experiment,
            tags=ctx.tags("tune", {"features.npz": ctx.paths.features}),
            workers=workers,
            on_trial_end=on_trial_end if progress else None,
            warm_start=warm_start,
        )
    finally:
        if progress:
            progress.close()
    hparams = Hyperparams.model_validate({**task.model.model_dump(), **result.best_params})
    write_json(
        ctx.paths.best_params,
        {
            "study": result.study_name,
            "best_trial": result.best_trial,
            task.monitor: result.best_value,
            "hparams": hparams.model_dump(),
            "trials": {"complete": result.n_complete, "pruned": result.n_pruned, "failed": result.n_failed},
        },
    )
    say(f"tune {ctx.task_name}: best {task.monitor}={result.best_value:.4f} (trial {result.best_trial})")


def _reference_sample(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The training rows a bundle keeps for drift checks (at most REFERENCE_ROWS of them)."""
    from modelyard.bundle import REFERENCE_ROWS

    return train.sample(min(len(train), REFERENCE_ROWS), random_state=seed).reset_index(drop=True)


def train(ctx: Context) -> None:
    """Train the final model with the best hyperparameters; save the bundle and log it to MLflow."""
    from modelyard import registry, tracking
    from modelyard.bundle import ModelBundle, n_outputs
    from modelyard.models import build_model
    from modelyard.training import FitOptions, fit

    task = ctx.task
    arrays = _load_arrays(ctx)
    preprocessing = _load_preprocessing(ctx)
    hparams = Hyperparams.model_validate(read_json(ctx.need(ctx.paths.best_params, "tune"))["hparams"])
    codec = preprocessing["codec"]
    network = build_model(task.family, arrays["x_train"].shape[1], n_outputs(task.problem, codec), hparams)
    options = FitOptions(
        problem=task.problem,
        monitor=task.monitor,
        max_epochs=task.train.max_epochs,
        patience=task.train.patience,
        grad_clip=task.train.grad_clip,
        loss=task.loss,
        seed=ctx.settings.seed,
        device=ctx.settings.device,
        target_scale=getattr(codec, "scale_", 1.0),
    )
    client = tracking.connect(ctx.root)
    experiment = tracking.experiment_id(client, ctx.root, ctx.task_name)
    inputs = {"features.npz": ctx.paths.features, "best_params.json": ctx.paths.best_params}
    run = tracking.start_run(client, experiment, f"train-{ctx.task_name}", ctx.tags("train", inputs))
    progress = Progress(task.train.max_epochs, f"train {ctx.task_name} epoch")

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        run.log_metrics(metrics, step=epoch)
        progress.step(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    try:
        run.log_params({**hparams.model_dump(), **task.train.model_dump(), "seed": ctx.settings.seed})
        result = fit(
            network,
            (arrays["x_train"], arrays["y_train"]),
            (arrays["x_val"], arrays["y_val"]),
            hparams,
            options,
            on_epoch_end,
        )
        network.cpu()
        bundle = ModelBundle(
            family=task.family,
            problem=task.problem,
            hparams=hparams,
            schema=task.schema_,
            target=task.target,
            preprocessor=preprocessing["preprocessor"],
            codec=codec,
            network=network,
            reference=_reference_sample(ctx.read_split("train"), ctx.settings.seed),
        )
        # Logged from a staging folder that replaces the old model only once MLflow has it:
        # a failure or kill while logging leaves the previous model in place.
        with atomic_path(ctx.paths.model_dir) as staging:
            bundle.save(staging)
            model_uri = registry.log_bundle(run.run_id, staging, bundle, ctx.read_split("val"))
        run.log_metrics({f"best_{k}": v for k, v in result.best_metrics.items()} | {"best_epoch": result.best_epoch})
    except BaseException:
        run.finish("FAILED")
        raise
    finally:
        progress.close()
    run.finish("FINISHED")
    write_json(
        ctx.paths.train_summary,
        {"run_id": run.run_id, "model_uri": model_uri, "best_epoch": result.best_epoch, "val": result.best_metrics},
    )
    say(
        f"train {ctx.task_name}: best epoch {result.best_epoch}, {task.monitor}={result.best_metrics[task.monitor]:.4f}"
    )


def _true_targets(task: TaskSettings, codec, frame: pd.DataFrame) -> np.ndarray:
    """Class indices (classification) or values in target units (regression)."""
    return codec.encode(frame[task.target]) if task.problem != "regression" else frame[task.target].to_numpy(float)


def score_predictions(task: TaskSettings, codec, frame: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, float]:
    """Test metrics of a prediction frame against the frame's true targets."""
    from modelyard.bundle import prediction_outputs
    from modelyard.evaluation import compute_metrics

    outputs = prediction_outputs(predictions, task.problem, getattr(codec, "classes_", []))
    return compute_metrics(task.problem, _true_targets(task, codec, frame), outputs)


def evaluate(ctx: Context) -> None:
    """Score the trained bundle on the held-out test split: metrics, plots, MLflow."""
    from modelyard import tracking
    from modelyard.bundle import ModelBundle, prediction_outputs
    from modelyard.evaluation import curve_tables, plot_tables

    task = ctx.task
    bundle = ModelBundle.load(ctx.need(ctx.paths.model_dir, "train"))
    test = ctx.read_split("test")
    predictions = bundle.predict(test)
    metrics = score_predictions(task, bundle.codec, test, predictions)
    classes = getattr(bundle.codec, "classes_", [])
    outputs = prediction_outputs(predictions, task.problem, classes)
    tables = curve_tables(task.problem, _true_targets(task, bundle.codec, test), outputs, classes)
    write_json(ctx.paths.metrics, metrics)
    with atomic_path(ctx.paths.plots_dir) as temporary:
        temporary.mkdir()
        for name, table in tables.items():
            table.to_csv(temporary / f"{name}.csv", index=False)
    client = tracking.connect(ctx.root)
    run = tracking.Run(client, read_json(ctx.need(ctx.paths.train_summary, "train"))["run_id"])
    run.log_metrics(metrics)
    for name, figure in plot_tables(tables).items():
        client.log_figure(run.run_id, figure, f"plots/{name}.png")
    client.log_artifact(run.run_id, str(ctx.paths.metrics), "evaluation")
    say(f"evaluate {ctx.task_name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def register_model(ctx: Context) -> dict[str, Any]:
    """Register the trained model as challenger and promote it if it beats the champion on
    the current test split with a significant paired test (`tasks.<task>.registry`).

    The champion alias is left alone on any failure, including a champion that cannot be
    loaded or scored.
    """
    from modelyard import registry, tracking
    from modelyard.bundle import ModelBundle, prediction_outputs
    from modelyard.promotion import compare

    task = ctx.task
    summary = read_json(ctx.need(ctx.paths.train_summary, "train"))
    metrics = read_json(ctx.need(ctx.paths.metrics, "evaluate"))
    metric = task.promotion_metric
    if metric not in metrics:
        known = ", ".join(m.removeprefix("test_") for m in metrics)
        raise ModelyardError(
            f"metric {metric} was not computed for task {ctx.task_name}",
            f"set tasks.{ctx.task_name}.registry.metric to one of: {known}",
        )
    test = ctx.read_split("test")
    bundle = ModelBundle.load(ctx.need(ctx.paths.model_dir, "train"))
    classes = getattr(bundle.codec, "classes_", [])
    truth = _true_targets(task, bundle.codec, test)
    challenger = prediction_outputs(bundle.predict(test), task.problem, classes)

    def judge(champion_uri: str):
        try:
            champion = prediction_outputs(registry.load_champion(ctx.task_name).predict(test), task.problem, classes)
        except Exception as exc:
            raise ModelyardError(
                f"the current champion {champion_uri} cannot be loaded or scored ({type(exc).__name__}: {exc})",
                "the champion alias was left unchanged; point it at a working version in the MLflow UI, "
                "or delete the alias to let the next model take it",
            ) from None
        return compare(task.problem, metric, truth, challenger, champion, task.registry, seed=ctx.settings.seed)

    client = tracking.connect(ctx.root)
    return registry.register(
        client, ctx.task_name, summary["model_uri"], summary["run_id"], metric, metrics[metric], judge
    )


def register(ctx: Context) -> None:
    """Register the trained model; promote it to champion only if it beats the current one."""
    from modelyard import registry, tracking

    decision = register_model(ctx)
    client = tracking.connect(ctx.root)
    run_id = read_json(ctx.paths.train_summary)["run_id"]
    tracking.Run(client, run_id).set_tags(registry.decision_tags("register", decision))
    write_json(ctx.paths.registry_decision, decision)
    verb = "promoted to champion" if decision["promoted"] else "registered as challenger"
    say(f"register {ctx.task_name}: version {decision['version']} {verb} ({decision['reason']})")


STAGES: dict[str, Callable[[Context], None]] = {
    "ingest": ingest,
    "validate": validate,
    "split": split,
    "featurize": featurize,
    "tune": tune,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}
