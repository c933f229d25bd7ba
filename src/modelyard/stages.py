"""The pipeline's stages: each reads its declared inputs, calls the core, and writes its
declared outputs atomically. `pipeline/<stage>.py` (run by DVC) and `modelyard <stage>`
both call these functions.

Heavy libraries (torch, MLflow, category_encoders) are imported inside the stages that
use them, so light stages such as ingest and split start in a fraction of a second.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.config import MIN_METRIC_SAMPLES, Hyperparams, Settings, TaskSettings
from modelyard.console import Progress, say
from modelyard.data.sources import SPLIT_MARKER, frame_hash, read_task_frame
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
    staging: Path | None = None  # where the stages write instead of data/<task>/ (a retrain)

    @property
    def task(self) -> TaskSettings:
        return self.settings.task(self.task_name)

    @cached_property
    def paths(self) -> TaskPaths:
        return TaskPaths(self.root, self.task_name, self.staging)

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

    def experiment(self, client: Any) -> str:
        """The task's MLflow experiment, described for the UI on first use."""
        from modelyard import tracking

        task = self.task
        source = task.source.path or f"the built-in {task.source.builtin} dataset"
        description = (
            f"Task **{self.task_name}**: {task.problem} {task.kind} model (family `{task.family}`) "
            f"of `{task.target}`, from `{source}`.\n\n"
            f"`study-{self.task_name}-…` runs are Optuna studies (expand one for its trials); "
            f"`train-{self.task_name}` runs hold the final model, its test metrics and plots. "
            f"Registered model: `{self.task_name}` (aliases `champion`, `challenger`)."
        )
        return tracking.experiment_id(client, self.root, self.task_name, description)

    def datasets(self, *parts: str) -> list[Any]:
        """The named splits as MLflow dataset inputs, for a run's Dataset column."""
        from modelyard import tracking

        splits = {part: (self.read_split(part), self.paths.split_file(part)) for part in parts}
        return tracking.dataset_inputs(self.task_name, self.task.target, splits, self.root)


def ingest(ctx: Context) -> None:
    """Read the task's source into data/<task>/raw.parquet and record its size and hash."""
    frame = read_task_frame(ctx.task, ctx.root)
    with atomic_path(ctx.paths.raw) as temporary:
        frame.to_parquet(temporary, index=False)
    summary = {"rows": len(frame), "columns": frame.shape[1], "sha256": frame_hash(frame)}
    if SPLIT_MARKER in frame.columns:  # the marker is no data column
        summary |= {"columns": frame.shape[1] - 1, "test_rows": int((frame[SPLIT_MARKER] == "test").sum())}
    write_json(ctx.paths.ingest_summary, {**summary, "source": ctx.task.source.model_dump(mode="json")})
    test_rows = f" ({summary['test_rows']} from the test file)" if "test_rows" in summary else ""
    say(f"ingest {ctx.task_name}: {summary['rows']} rows{test_rows} x {summary['columns']} columns")


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
    """Train / validation / test split of validated data: seeded, or as a published split marks it."""
    from modelyard.data.splitting import split_task
    from modelyard.kinds import kind_of

    if not read_json(ctx.need(ctx.paths.validation_summary, "validate")).get("success"):
        raise ModelyardError(f"the data of task {ctx.task_name} failed validation", "see data/<task>/validation.json")
    frame = pd.read_parquet(ctx.need(ctx.paths.raw, "ingest"))
    parts = split_task(frame, ctx.task, kind_of(ctx.task), ctx.settings.seed)
    with atomic_path(ctx.paths.split_dir) as temporary:
        temporary.mkdir()
        for name, part in zip(SPLITS, parts, strict=True):
            part.to_parquet(temporary / f"{name}.parquet", index=False)
    say(f"split {ctx.task_name}: " + ", ".join(f"{n} {len(p)}" for n, p in zip(SPLITS, parts, strict=True)))


def featurize(ctx: Context) -> None:
    """Fit encoders, imputation and scaling on the training rows only; transform all splits."""
    from modelyard.features import TargetCodec
    from modelyard.kinds import kind_of

    task, kind = ctx.task, kind_of(ctx.task)
    frames = {part: ctx.read_split(part) for part in SPLITS}
    train = frames["train"]
    preprocessor = kind.preprocessor(task, seed=ctx.settings.seed)
    arrays: dict[str, np.ndarray] = {}
    codec = None
    if kind.forecasts:
        preprocessor.fit(train)
        history = kind.history(task, frames.__getitem__)
        for part, frame in frames.items():
            times = frame[task.schema_.time]
            x, y = preprocessor.windows(history, times.min(), times.max())
            if len(x) == 0:
                raise ModelyardError(
                    f"the {part} period ({len(frame)} steps) holds no complete window of "
                    f"{task.features.series.window} + {task.features.series.horizon} observed steps",
                    "use a longer series, a shorter series.window or horizon, or a larger split fraction",
                )
            arrays[f"x_{part}"], arrays[f"y_{part}"] = x, y
    else:
        # One target per sample: per row, or per sequence (sorted ids, as the samples come out).
        targets = {part: kind.targets(task, frame) for part, frame in frames.items()}
        classes = list(task.schema_.columns[task.target].categories or []) or None
        codec = TargetCodec(task.problem, classes=classes, positive_label=task.positive_label).fit(targets["train"])
        preprocessor.fit(train.drop(columns=[task.target]), codec.encode(targets["train"]))
        for part, frame in frames.items():
            arrays[f"x_{part}"] = preprocessor.transform(frame.drop(columns=[task.target]))
            arrays[f"y_{part}"] = codec.encode(targets[part])
    with atomic_path(ctx.paths.features) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    with atomic_path(ctx.paths.preprocessor) as temporary, open(temporary, "wb") as handle:
        pickle.dump({"preprocessor": preprocessor, "codec": codec}, handle)
    shape = " x ".join(str(n) for n in preprocessor.input_shape_)
    say(f"featurize {ctx.task_name}: {len(arrays['x_train'])} training samples of shape {shape}")


def network_size(task: TaskSettings, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What sizes the task's network beyond the input shape (see `bundle.network_size`)."""
    from modelyard import bundle

    return bundle.network_size(task.problem, preprocessing["preprocessor"], preprocessing["codec"])


def _load_arrays(ctx: Context) -> dict[str, np.ndarray]:
    with np.load(ctx.need(ctx.paths.features, "featurize")) as data:
        return {name: data[name] for name in data.files}


def _load_preprocessing(ctx: Context) -> dict[str, Any]:
    with open(ctx.need(ctx.paths.preprocessor, "featurize"), "rb") as handle:
        return pickle.load(handle)


def tune(ctx: Context, workers: int = 1, warm_start: Hyperparams | None = None) -> None:
    """Run, resume or join the Optuna study with `workers` processes; write the selected
    trial's hyperparameters and weights: the best trial's, or on a small validation split the
    smallest network within one standard error of it (`selection.py`).

    The study searches the task's search space completed by the family's defaults
    (`search_space.py`). The storage is `tasks.<task>.tune.storage` (an RDB URL; the same
    command on other machines joins the same study), else the local journal file.
    `warm_start` hyperparameters (retraining passes the champion's) are the first trial of
    a new study.
    """
    from modelyard import tracking
    from modelyard.search_space import describe, space_size, tuning_task
    from modelyard.tuning.storage import storage_label
    from modelyard.tuning.study import run_study, study_fingerprint
    from modelyard.tuning.trials import Arrays, checkpoint_path, describe_trial, trial_target

    arrays = _load_arrays(ctx)
    task = tuning_task(ctx.task, len(arrays["x_train"]), arrays["y_val"])
    size = network_size(task, _load_preprocessing(ctx))
    features = Arrays(arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"], **size)
    client = tracking.connect(ctx.root)
    experiment = ctx.experiment(client)
    tags = ctx.tags("tune", {"features.npz": ctx.paths.features})  # the features' MD5 among them
    name = f"{ctx.task_name}-{study_fingerprint(tags['dvc.md5.features.npz'], task, ctx.settings.seed)}"
    storage = task.tune.storage
    say(
        f"tune {ctx.task_name}: study {name} in {storage_label(storage, ctx.paths.study_journal)}, "
        f"{workers} worker{'s' if workers > 1 else ''}"
    )
    space = task.tune.search_space
    if space_size(space) <= 1:
        say(f"tune {ctx.task_name}: the search space holds one configuration, so the study runs one trial")
    else:
        say(f"tune {ctx.task_name}: searching " + "; ".join(f"{k} {describe(d)}" for k, d in space.items()))
    # Spawned workers print a line per trial themselves; one in-process worker drives the bar.
    progress = Progress(trial_target(task), f"tune {ctx.task_name}") if workers == 1 else None

    def on_trial_end(trial, total: int) -> None:
        progress.step(describe_trial(trial, task.monitor))

    checkpoints = ctx.paths.trial_checkpoints(name)
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
            tags=tags,
            datasets=ctx.datasets("train", "val"),
            workers=workers,
            on_trial_end=on_trial_end if progress else None,
            warm_start=warm_start,
            checkpoint_dir=checkpoints,
        )
    finally:
        if progress:
            progress.close()
    say(f"tune {ctx.task_name}: best {task.monitor}={result.best_value:.4f} (trial {result.best_trial})")
    chosen, selection = _selected_trial(ctx, task, arrays, size, result, checkpoints)
    keep_best_trial(checkpoint_path(checkpoints, chosen.number), ctx.paths.best_trial, chosen.number)
    write_json(
        ctx.paths.best_params,
        {
            "study": result.study_name,
            "best_trial": result.best_trial,
            task.monitor: result.best_value,
            "selected_trial": chosen.number,
            "selection": selection,
            "hparams": chosen.hparams.model_dump(),
            "trials": {"complete": result.n_complete, "pruned": result.n_pruned, "failed": result.n_failed},
        },
    )


def _selected_trial(ctx: Context, task: TaskSettings, arrays, size, result, checkpoints: Path):
    """(the trial train builds on, how it was chosen): the study's best, or on a small
    validation split the smallest network within one standard error of it (`selection.py`)."""
    from modelyard.kinds import kind_of
    from modelyard.search_space import base_hparams, baseline_params
    from modelyard.selection import Candidate, applies, n_parameters, simplest_within, standard_error, within
    from modelyard.training import FitOptions, load_checkpoint, score
    from modelyard.tuning.trials import checkpoint_path

    def hparams_of(params: dict) -> Hyperparams:
        return Hyperparams.model_validate({**base_hparams(ctx.task).model_dump(), **params})

    best = Candidate(result.best_trial, result.best_value, hparams_of(result.best_params))
    val = (arrays["x_val"], arrays["y_val"])
    weights = load_checkpoint(checkpoint_path(checkpoints, best.number)) if applies(task.problem, val[1]) else None
    if weights is None:  # a large validation split, or the best trial's weights are on another machine
        return best, {"rule": "best"}
    network = _network(arrays, size, task, best.hparams)
    network.load_state_dict(weights["state_dict"])
    options = FitOptions.for_task(
        task,
        max_epochs=None,
        patience=0,
        seed=ctx.settings.seed,
        device="cpu",
        target_scale=size["target_scale"],
        target_offset=size["target_offset"],
    )

    def metric_of(samples: tuple[np.ndarray, np.ndarray]) -> float:
        return score(network, samples, best.hparams, options)[task.monitor]

    error = standard_error(metric_of, val, ctx.settings.seed)
    baseline = baseline_params(task.tune.search_space, len(arrays["x_train"]), task.problem).items()
    candidates = [
        Candidate(number, value, hparams_of(params), bool(baseline) and all(params.get(k) == v for k, v in baseline))
        for number, value, params in result.complete
    ]
    chosen = simplest_within(
        candidates, best, error, result.minimize, lambda h: n_parameters(_network(arrays, size, task, h))
    )
    close = [c.number for c in within(candidates, best, error, result.minimize)]
    if chosen.number != best.number:
        say(
            f"tune {ctx.task_name}: trial {chosen.number} ({task.monitor}={chosen.value:.4f}) is the smallest "
            f"network within one standard error ({error:.4f}) of the best"
        )
    record: dict[str, Any] = {"rule": "one_standard_error", "standard_error": error, "within": close}
    linear = next((c for c in candidates if c.baseline), None)
    if linear is not None and chosen.number != linear.number and kind_of(task).cross_fits:
        chosen, record["cross_validation"] = _cross_validated(ctx, task, arrays, size, chosen, linear, result.minimize)
    return chosen, {**record, "value": chosen.value}


def _cross_validated(ctx: Context, task: TaskSettings, arrays, size, network: Any, baseline: Any, minimize: bool):
    """(the trial train builds on, the record): the network the rule kept on a small
    validation split, or the baseline unless the network beats it in cross-validation
    over train + validation (`selection.cross_validate`). `task` is the study's
    (`search_space.tuning_task`): its monitor and epoch budget are the trials'."""
    import torch

    from modelyard.selection import CV_FOLDS, cross_validate, nested_folds
    from modelyard.training import FitOptions, assign_folds, fit, score

    seed = ctx.settings.seed
    x = np.concatenate([arrays["x_train"], arrays["x_val"]])
    y = np.concatenate([arrays["y_train"], arrays["y_val"]])
    folds = nested_folds(x, y, assign_folds(y, CV_FOLDS, task.problem, seed))
    options = FitOptions.for_task(  # as a trial trains
        task,
        max_epochs=task.tune.max_epochs,
        patience=task.train.patience,
        seed=seed,
        device=ctx.settings.device,
        target_scale=size["target_scale"],
        target_offset=size["target_offset"],
        tuning=True,
    )

    def value_of(hparams: Hyperparams, fold) -> float:
        training, stopping, scored = fold
        torch.manual_seed(seed)
        model = _network(arrays, size, task, hparams)
        fit(model, training, stopping, hparams, options)
        return score(model, scored, hparams, options)[task.monitor]

    kept, record = cross_validate(value_of, network, baseline, folds, minimize)
    say(
        f"tune {ctx.task_name}: {CV_FOLDS}-fold cross-validation of train + validation, {task.monitor} "
        f"trial {network.number} {record['network']:.4f}, baseline trial {baseline.number} "
        f"{record['baseline']:.4f} (standard error of the difference {record['standard_error']:.4f}): "
        f"train builds on trial {kept.number}"
    )
    return kept, record


def keep_best_trial(checkpoint: Path, target: Path, trial: int) -> None:
    """Copy the best trial's weights to `target` (the tune stage's output), and drop the
    weights of the trials it beat. When the best trial ran on another machine its weights
    are not here: `target` then says so, and train keeps its own run."""
    from modelyard.training import save_checkpoint

    if checkpoint.is_file():
        with atomic_path(target) as temporary:
            shutil.copyfile(checkpoint, temporary)
    else:
        save_checkpoint(target, None, None, -1, trial)
    for other in checkpoint.parent.glob("trial-*.pt"):
        if other != checkpoint:
            other.unlink(missing_ok=True)


def _reference_sample(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The training rows a bundle keeps for drift checks (at most REFERENCE_ROWS of them)."""
    from modelyard.bundle import REFERENCE_ROWS

    return train.sample(min(len(train), REFERENCE_ROWS), random_state=seed).reset_index(drop=True)


def train(ctx: Context) -> None:
    """Train the final model with the best hyperparameters; save the bundle and log it to MLflow.

    The final run trains longer than a trial (see `training.py`). With `train.ensemble: k`
    it trains k seeds of the best configuration and the model averages them. Should the
    result still score worse on validation than the best trial's own weights, those weights
    are kept instead, so train never hands on a model worse than what tuning found.

    Small data (fewer than MIN_METRIC_SAMPLES validation samples, not a forecast) cross-fits
    the k members instead (`cross_fit_splits`): member 0 trains on the training split and
    validates on the validation split, as above, and is replaced by the best trial's
    weights when those score better there; each other member holds out another fold of the
    training rows and trains on everything else, validation split included. A dozen
    validation samples cannot pick a model reliably, while a member that learns from the
    validation split as well and is early-stopped on other samples does not depend on them
    alone. The validation figures are then out-of-fold: each held-out sample scored by the
    member that did not train on it.

    A linear model solved exactly trains one member unless it cross-fits (its seeds would
    all reach the same optimum), and is then refitted once on train + validation
    (`_refit_on_all_rows`). The choice is logged (`modelyard.train_source`: retrained,
    ensemble, best_trial, cross_fit, cross_fit_best_trial or refit) and written to train.json.
    """
    import torch

    from modelyard import registry, tracking
    from modelyard.kinds import kind_of
    from modelyard.training import FitOptions, cross_fit_splits, solves_exactly

    task = ctx.task
    arrays = _load_arrays(ctx)
    preprocessing = _load_preprocessing(ctx)
    hparams = Hyperparams.model_validate(read_json(ctx.need(ctx.paths.best_params, "tune"))["hparams"])
    size = network_size(task, preprocessing)
    options = FitOptions.for_task(
        task,
        max_epochs=task.train.max_epochs,
        patience=task.train.patience,
        seed=ctx.settings.seed,
        device=ctx.settings.device,
        target_scale=size["target_scale"],
        target_offset=size["target_offset"],
    )
    train_rows, val = (arrays["x_train"], arrays["y_train"]), (arrays["x_val"], arrays["y_val"])
    n_members = task.train.ensemble
    client = tracking.connect(ctx.root)
    experiment = ctx.experiment(client)
    inputs = {"features.npz": ctx.paths.features, "best_params.json": ctx.paths.best_params}
    run = tracking.start_run(client, experiment, f"train-{ctx.task_name}", ctx.tags("train", inputs))
    run.log_inputs(ctx.datasets("train", "val", "test"))  # the test split is scored on this run by evaluate
    epochs = options.epochs_for(len(train_rows[0]), hparams.batch_size)
    progress = Progress(epochs * n_members, f"train {ctx.task_name} epoch")
    exact = solves_exactly(_network(arrays, size, task, hparams), hparams)
    cross_fit = n_members > 1 and len(val[0]) < MIN_METRIC_SAMPLES and kind_of(task).cross_fits
    if cross_fit:
        splits = cross_fit_splits(train_rows, val, n_members, task.problem, ctx.settings.seed)
    else:  # seeds of a model solved exactly all reach the same optimum: one is trained
        splits = [(train_rows, val)] * (1 if exact else n_members)
    try:
        family_hparams = hparams.of_family(task.family, task.problem, task.kind)
        threads = torch.get_num_threads()  # with the seed, what reproduces the run exactly on the CPU
        run.log_params({**family_hparams, **task.train.model_dump(), "seed": ctx.settings.seed, "threads": threads})
        trained = _fit_members(ctx, arrays, size, hparams, options, splits, run, progress)
        progress.close()
        final = _final_model(ctx, arrays, size, hparams, options, splits, trained, cross_fit)
        if exact:
            final = _refit_on_all_rows(ctx, arrays, size, hparams, options, final)
        epochs_run = [len(result.history) for _, result in trained]
        final.network.cpu()
        threshold = _decision_threshold(task, final.held_out)
        if threshold != 0.5:
            say(
                f"train {ctx.task_name}: decision threshold {threshold:.3f}, "
                f"chosen on validation for {task.promotion_metric}"
            )
        bundle = _bundle(ctx, hparams, preprocessing, final.network, threshold)
        # Logged from a staging folder that replaces the old model only once MLflow has it:
        # a failure or kill while logging leaves the previous model in place.
        with atomic_path(ctx.paths.model_dir) as staging:
            bundle.save(staging)
            model_uri = registry.log_bundle(
                run.run_id, staging, bundle, kind_of(task).input_example(task, ctx.read_split), ctx.task_name
            )
        # The registered model's validation figures, shown on the logged model too; the
        # single values that are no curves (best epoch, threshold) are params.
        run.log_metrics({f"best_{k}": v for k, v in final.val_metrics.items()}, model_id=registry.model_id(model_uri))
        run.log_params({"best_epoch": final.best_epoch, "threshold": threshold, "train_source": final.source})
        outcome = (
            f"best epoch {final.best_epoch} ({final.source}), {task.monitor}={final.val_metrics[task.monitor]:.4f}"
        )
        description = f"The final model of {ctx.task_name}: {outcome}"
        run.set_tags({tracking.TAG_TRAIN_SOURCE: final.source, tracking.DESCRIPTION_TAG: description})
    except BaseException:
        run.finish("FAILED")
        raise
    finally:
        progress.close()
    run.finish("FINISHED")
    write_json(
        ctx.paths.train_summary,
        {
            "run_id": run.run_id,
            "model_uri": model_uri,
            "source": final.source,
            "selected_on": options.selection(val[1]),
            "ensemble": bundle.n_members,
            "best_epoch": final.best_epoch,
            "threshold": threshold,
            "epochs_run": epochs_run if len(epochs_run) > 1 else epochs_run[0],
            "validation": "out_of_fold" if cross_fit else "val_split",
            "val": final.val_metrics,
            "val_split": final.split_metrics,  # the (first) member's figures on the validation split
        },
    )
    write_training_curves(ctx.paths.train_curves, trained[0][1].history)
    say(f"train {ctx.task_name}: {outcome}")


def _bundle(ctx: Context, hparams: Hyperparams, preprocessing: dict[str, Any], network, threshold: float):
    """The model as it is saved and served: the network with its preprocessing and schema."""
    from modelyard.bundle import ModelBundle

    task = ctx.task
    return ModelBundle(
        family=task.family,
        problem=task.problem,
        hparams=hparams,
        schema=task.schema_,
        target=task.target,
        preprocessor=preprocessing["preprocessor"],
        codec=preprocessing["codec"],
        network=network,
        reference=_reference_sample(ctx.read_split("train"), ctx.settings.seed),
        kind=task.kind,
        threshold=threshold,
    )


def _fit_members(ctx: Context, arrays, size, hparams: Hyperparams, options, splits: list, run, progress) -> list:
    """(network, fit result) of one network per (train, validation) pair of `splits`, member
    i trained from seed + i. Member 0 logs the plain metric names, the others a
    `member<i>_` prefix."""
    import torch

    from modelyard.training import fit

    trained = []
    for member, (member_train, member_val) in enumerate(splits):
        prefix = f"member{member}_" if member else ""

        def on_epoch_end(epoch: int, metrics: dict[str, float], prefix: str = prefix) -> None:
            run.log_metrics({prefix + k: v for k, v in metrics.items()}, step=epoch)
            progress.step(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        member_options = replace(options, seed=options.seed + member)
        torch.manual_seed(member_options.seed)  # initial weights from the seed alone
        network = _network(arrays, size, ctx.task, hparams)
        trained.append((network, fit(network, member_train, member_val, hparams, member_options, on_epoch_end)))
    return trained


@dataclass(frozen=True)
class FinalModel:
    """What train registers: the network (one, or an ensemble) and its validation figures."""

    network: Any
    val_metrics: dict[str, float]  # out of fold when cross-fitted, else on the validation split
    split_metrics: dict[str, float]  # the (first) member's figures on the validation split
    source: str  # retrained, ensemble, best_trial, cross_fit, cross_fit_best_trial or refit
    best_epoch: int
    held_out: list  # (network, samples it did not train on) pairs, for the decision threshold


def _final_model(
    ctx: Context, arrays, size, hparams: Hyperparams, options, splits: list, trained: list, cross_fit: bool
) -> FinalModel:
    """The trained members as the final model (see `train`): one network, their ensemble, or
    the best trial's weights when those score better on validation."""
    from modelyard.models import Ensemble
    from modelyard.training import pooled_metrics, score

    task, val = ctx.task, splits[0][1]
    members = [network for network, _ in trained]
    first = trained[0][1]
    if len(members) == 1:
        candidate = (members[0], first.best_metrics, "retrained")
    elif cross_fit:
        candidate = (members[0], first.best_metrics, "cross_fit")
    else:
        ensemble = Ensemble(members, task.problem)
        candidate = (ensemble, score(ensemble, val, hparams, options), "ensemble")
    network, val_metrics, source, trial_epoch = _better_of(
        candidate, lambda: _network(arrays, size, task, hparams), ctx.paths.best_trial, val, hparams, options
    )
    best_epoch = first.best_epoch
    if source == "best_trial":
        best_epoch = trial_epoch
        say(f"train {ctx.task_name}: the best trial's weights score better on validation; keeping them")
    if not cross_fit:
        return FinalModel(network, val_metrics, val_metrics, source, best_epoch, [(network, val)])
    # member 0 (or the better best trial) is scored on the validation split, the rest on their folds
    members[0], source = network, "cross_fit_best_trial" if source == "best_trial" else "cross_fit"
    scores = [val_metrics] + [result.best_metrics for _, result in trained[1:]]
    pooled = pooled_metrics([(m, len(split[1][0])) for m, split in zip(scores, splits, strict=True)])
    held_out = [(member, split[1]) for member, split in zip(members, splits, strict=True)]
    say(
        f"train {ctx.task_name}: {len(members)} members cross-fitted on folds of train + validation "
        f"({sum(len(split[1][0]) for split in splits)} samples scored out of fold)"
    )
    return FinalModel(Ensemble(members, task.problem), pooled, val_metrics, source, best_epoch, held_out)


def _refit_on_all_rows(ctx: Context, arrays, size, hparams: Hyperparams, options, final: FinalModel) -> FinalModel:
    """A linear model solved exactly (`training.solve_convex`) stops on no validation rows,
    so its final model is one solve on train + validation at the chosen L2 strength, as
    scikit-learn's RidgeCV refits once the alpha is chosen; the members that held rows out
    keep giving the validation figures and the decision threshold. On Carseats' 320 rows,
    three cross-fitted members of 256 rows each were 0.6 % and 0.9 % above ridge's rmse on
    two of three splits (0.4 % below it on the third); the refit matches ridge.

    The strength is kept as scikit-learn keeps alpha or C when it refits: on the summed
    loss. The weight decay, a penalty on the mean loss, is scaled by training rows / all
    rows, so the baseline trial's (BASELINE_L2 / training rows) becomes exactly
    LogisticRegression(C=1) or Ridge(alpha=1) on train + validation."""
    from modelyard.training import fit

    rows = tuple(np.concatenate([arrays[f"{part}_train"], arrays[f"{part}_val"]]) for part in ("x", "y"))
    decay = hparams.weight_decay * len(arrays["x_train"]) / len(rows[0])
    hparams = hparams.model_copy(update={"weight_decay": decay})
    network = _network(arrays, size, ctx.task, hparams)
    result = fit(network, rows, (arrays["x_val"], arrays["y_val"]), hparams, options)
    say(f"train {ctx.task_name}: the linear model refitted on all {len(rows[0])} training and validation samples")
    return replace(final, network=network, source="refit", best_epoch=result.best_epoch)


def _decision_threshold(task: TaskSettings, held_out: list[tuple[Any, tuple[np.ndarray, np.ndarray]]]) -> float:
    """A binary task promoted on accuracy or F1 decides at the threshold that maximises that
    metric on held-out samples; any other task at 0.5. `held_out` pairs each network with
    samples it did not train on (the validation split, or a cross-fitted member's fold)."""
    from modelyard.evaluation import THRESHOLD_METRICS, best_threshold
    from modelyard.training import predict

    metric = task.promotion_metric.removeprefix("test_")
    if task.problem != "binary" or metric not in THRESHOLD_METRICS:
        return 0.5
    labels = np.concatenate([y for _, (_, y) in held_out])
    probabilities = np.concatenate([predict(network, x, "binary") for network, (x, _) in held_out])
    return best_threshold(labels, probabilities, metric)


def _network(arrays: dict[str, np.ndarray], size: dict[str, Any], task: TaskSettings, hparams: Hyperparams):
    """A fresh network for the task's features and hyperparameters."""
    from modelyard.models import build_model

    shape = arrays["x_train"].shape[1:]
    return build_model(
        task.family, shape, size["n_outputs"], hparams, size["vocab_size"], size["masked"], size["n_numeric"]
    )


def _better_of(
    candidate: tuple, new_network: Callable, checkpoint: Path, val: tuple[np.ndarray, np.ndarray], hparams, options
):
    """(network, validation metrics, source, best trial's epoch or -1): the `candidate`
    (network, its validation metrics, source), or a `new_network()` loaded with the best
    trial's weights when those score better on validation."""
    from modelyard.training import improves, load_checkpoint, score

    network, candidate_metrics, source = candidate
    trial = load_checkpoint(checkpoint)
    if trial is None:
        return network, candidate_metrics, source, -1
    spare = new_network()
    try:
        spare.load_state_dict(trial["state_dict"])
    except (RuntimeError, KeyError):  # weights of another network shape: not this study's
        return network, candidate_metrics, source, -1
    metrics = score(spare, val, hparams, options)
    if improves(metrics, candidate_metrics, options.selection(val[1])):
        return spare, metrics, "best_trial", int(trial["best_epoch"])
    return network, candidate_metrics, source, -1


def test_outputs(ctx: Context, predict: Callable[[Any], pd.DataFrame], codec) -> tuple[np.ndarray, np.ndarray]:
    """True targets and a model's outputs on the test split, as metrics take them.

    `predict` is a bundle's or a registered model's `predict`, so the challenger and the
    champion are scored on exactly the same rows. A series model forecasts from every point
    of the whole history; the forecasts of observed test-period values are scored.
    """
    from modelyard.bundle import prediction_outputs
    from modelyard.kinds import kind_of

    task, kind = ctx.task, kind_of(ctx.task)
    test = ctx.read_split("test")
    if kind.forecasts:
        return forecast_pairs(task, test, predict(kind.history(task, ctx.read_split)))
    predictions = predict(kind.model_input(task, test))
    targets = kind.targets(task, test)
    truth = targets.to_numpy(float) if task.problem == "regression" else codec.encode(targets)
    return truth, prediction_outputs(predictions, task.problem, getattr(codec, "classes_", []))


def forecast_pairs(task: TaskSettings, test: pd.DataFrame, forecasts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(observed, forecast) values for every forecast step that lands on an observed test
    value, all targets flattened, in the forecasts' order."""
    time, targets = task.schema_.time, list(task.forecast_targets)
    observed = test[[time, *targets]].rename(columns={time: "time"}).astype({"time": "datetime64[ns]"})
    forecasts = forecasts.astype({"time": "datetime64[ns]"})
    pairs = forecasts.merge(observed, on="time", suffixes=("", "__observed")).dropna(
        subset=[f"{t}__observed" for t in targets]
    )
    return pairs[[f"{t}__observed" for t in targets]].to_numpy(float).ravel(), pairs[targets].to_numpy(float).ravel()


def write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    """One CSV file per table in `folder`, which is replaced whole, atomically."""
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        for name, table in tables.items():
            table.to_csv(temporary / f"{name}.csv", index=False)


def write_training_curves(path: Path, history: list[dict[str, float]]) -> None:
    """A training run's per-epoch metrics (`evaluation.training_curves`) as a CSV file, atomically."""
    from modelyard.evaluation import training_curves

    with atomic_path(path) as temporary:
        training_curves(history).to_csv(temporary, index=False)


def evaluate(ctx: Context) -> None:
    """Score the trained bundle on the held-out test split: metrics, plots, MLflow.

    A forecasting task also reports the seasonal-naive baseline on the same steps
    (`test_naive_*`) and `test_rmse_vs_naive`, below 1 when the network is the better bet.
    """
    from modelyard import registry, tracking
    from modelyard.bundle import ModelBundle
    from modelyard.evaluation import compute_metrics, curve_tables, forecast_table, plot_files, plot_tables
    from modelyard.kinds import kind_of

    task, kind = ctx.task, kind_of(ctx.task)
    bundle = ModelBundle.load(ctx.need(ctx.paths.model_dir, "train"))
    classes = getattr(bundle.codec, "classes_", [])
    if kind.forecasts:  # forecasts from the whole history, the model's and the seasonal-naive ones
        frames = {part: ctx.read_split(part) for part in SPLITS}
        history = kind.history(task, frames.__getitem__)
        forecasts, baseline = bundle.predict(history), bundle.preprocessor.forecast(history, None)
        truth, outputs = forecast_pairs(task, frames["test"], forecasts)
        metrics = compute_metrics(task.problem, truth, outputs)
        metrics |= compute_metrics("regression", *forecast_pairs(task, frames["test"], baseline), prefix="test_naive_")
        metrics["test_rmse_vs_naive"] = metrics["test_rmse"] / metrics["test_naive_rmse"]
        tables = curve_tables(task.problem, truth, outputs, classes)
        tables["forecast"] = forecast_table(
            frames["test"], forecasts, baseline, task.schema_.time, task.forecast_targets
        )
    else:
        truth, outputs = test_outputs(ctx, bundle.predict, bundle.codec)
        metrics = compute_metrics(task.problem, truth, outputs, threshold=bundle.threshold)
        tables = curve_tables(task.problem, truth, outputs, classes, bundle.threshold)
    write_json(ctx.paths.metrics, metrics)
    write_tables(ctx.paths.plots_dir, plot_files(tables))
    client = tracking.connect(ctx.root)
    ctx.experiment(client)  # closes runs a killed command left open
    summary = read_json(ctx.need(ctx.paths.train_summary, "train"))
    run = tracking.Run(client, summary["run_id"])
    run.log_metrics(metrics, model_id=registry.model_id(summary["model_uri"]))  # shown on the logged model too
    for name, figure in plot_tables(tables).items():
        run.log_figure(figure, f"plots/{name}.png")
    run.log_artifact(ctx.paths.metrics, "evaluation")
    say(f"evaluate {ctx.task_name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def register_model(ctx: Context) -> dict[str, Any]:
    """Register the trained model as challenger and promote it if it beats the champion on
    the current test split with a significant paired test (`tasks.<task>.registry`).

    The champion alias is left alone on any failure, including a champion that cannot be
    loaded or scored.
    """
    from modelyard import registry, tracking
    from modelyard.bundle import ModelBundle
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
    bundle = ModelBundle.load(ctx.need(ctx.paths.model_dir, "train"))
    truth, challenger = test_outputs(ctx, bundle.predict, bundle.codec)

    def judge(champion_uri: str):
        try:
            champion = registry.load_champion(ctx.task_name)
            truth_again, outputs = test_outputs(ctx, champion.predict, bundle.codec)
            thresholds = (bundle.threshold, registry.bundle_of(champion).threshold)
            if len(truth_again) != len(truth):
                raise ValueError(f"it scored {len(truth_again)} test values, the new model {len(truth)}")
        except Exception as exc:
            raise ModelyardError(
                f"the current champion {champion_uri} cannot be loaded or scored ({type(exc).__name__}: {exc})",
                "the champion alias was left unchanged; point it at a working version in the MLflow UI, "
                "or delete the alias to let the next model take it",
            ) from None
        return compare(
            task.problem,
            metric,
            truth,
            challenger,
            outputs,
            task.registry,
            seed=ctx.settings.seed,
            thresholds=thresholds,
        )

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
