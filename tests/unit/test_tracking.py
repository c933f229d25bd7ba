"""A trial's MLflow run buffers what it logs: few store writes, nothing lost when it ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard import tracking


@pytest.fixture
def client(tmp_path: Path, mlflow_uri: str):
    return tracking.connect(tmp_path)


def steps_of(client, run: tracking.Run, name: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.run_id, name)]


def test_a_short_trials_run_writes_once_when_it_ends_and_nothing_is_lost(client, monkeypatch) -> None:
    experiment = client.create_experiment("toy")
    run = tracking.start_run(client, experiment, "trial-0", {}, buffered=True)
    assert client.get_run(run.run_id).info.status == "RUNNING"  # the UI shows it from the start
    writes = []
    log_batch = client.log_batch
    monkeypatch.setattr(client, "log_batch", lambda *a, **k: writes.append(k) or log_batch(*a, **k))
    run.log_params({"lr": 0.01})
    for epoch in range(1, 51):
        run.log_metrics({"val_loss": 1.0 / epoch, "val_accuracy": 0.5}, step=epoch)
    assert steps_of(client, run, "val_loss") == [] and writes == []  # within FLUSH_INTERVAL_S: held
    run.set_tags({tracking.TAG_TRIAL_STATE: "COMPLETE"})
    run.finish()
    assert steps_of(client, run, "val_loss") == list(range(1, 51))
    stored = client.get_run(run.run_id)
    assert stored.data.params == {"lr": "0.01"}
    assert stored.data.tags[tracking.TAG_TRIAL_STATE] == "COMPLETE" and stored.info.status == "FINISHED"
    assert len(writes) == 1  # the params, 50 epochs and the tag in one write


def test_a_run_writes_again_once_the_interval_has_passed(client, monkeypatch) -> None:
    monkeypatch.setattr(tracking, "FLUSH_INTERVAL_S", 0.0)
    run = tracking.start_run(client, client.create_experiment("toy"), "trial-0", {}, buffered=True)
    for epoch in (1, 2):
        run.log_metrics({"val_loss": 1.0}, step=epoch)
    assert steps_of(client, run, "val_loss") == [1, 2]  # the MLflow UI follows a long trial


def test_more_metrics_than_one_mlflow_batch_holds_are_all_written(client) -> None:
    run = tracking.start_run(client, client.create_experiment("toy"), "train", {})
    run.log_metrics({f"m{i}": float(i) for i in range(tracking.BATCH_LIMITS["metrics"] + 200)})
    assert len(client.get_run(run.run_id).data.metrics) == tracking.BATCH_LIMITS["metrics"] + 200


def test_a_resumed_studys_history_adds_only_its_new_trials(client) -> None:
    """The parent run charts the optimization history by trial; a second command on the same
    study logs the steps of its new trials once, and the latest best is the study's best."""
    import optuna

    from modelyard.tuning.study import log_study_summary

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return -((x - 0.7) ** 2) + 0.001 * y

    parent = tracking.start_run(client, client.create_experiment("toy"), "study", {})
    study.optimize(objective, n_trials=6)
    log_study_summary(parent, study, "val_accuracy")
    study.optimize(objective, n_trials=6)  # the same study, resumed by a second command
    log_study_summary(tracking.Run(client, parent.run_id), study, "val_accuracy")
    assert steps_of(client, parent, "best_val_accuracy") == list(range(12))
    history = {m.step: m.value for m in client.get_metric_history(parent.run_id, "best_val_accuracy")}
    assert all(history[step] >= history[step - 1] for step in range(1, 12))
    assert client.get_run(parent.run_id).data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    importances = json.loads(Path(client.download_artifacts(parent.run_id, "param_importances.json")).read_text())
    assert set(importances) == {"x", "y"} and importances["x"] > importances["y"]  # y hardly moves the value


def test_a_trial_that_finishes_after_a_later_one_still_counts_in_the_latest_best(client) -> None:
    """Workers side by side: trial 0 finishes after trial 1 was logged; the parent's latest
    `best_<monitor>` is still the study's best."""
    import optuna

    from modelyard.tuning.study import log_study_summary

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    slow, fast = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), study.ask()
    study.tell(fast, 0.5)
    parent = tracking.start_run(client, client.create_experiment("toy"), "study", {})
    log_study_summary(parent, study, "val_loss")
    study.tell(slow, 0.1)  # the better trial, numbered before the one already logged
    log_study_summary(tracking.Run(client, parent.run_id), study, "val_loss")
    assert client.get_run(parent.run_id).data.metrics["best_val_loss"] == pytest.approx(0.1)
    assert sorted(steps_of(client, parent, "trial_val_loss")) == [0, 1]  # each trial once


def test_a_splits_schema_from_a_sample_is_the_schema_of_all_its_rows(tmp_path: Path) -> None:
    import warnings

    import numpy as np
    import pandas as pd
    from mlflow.types.utils import _infer_schema

    rng = np.random.default_rng(0)
    n_rows = tracking.SCHEMA_ROWS * 3
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n_rows),
            "age": rng.integers(0, 90, n_rows),
            "color": pd.Series(rng.choice(["red", "blue"], n_rows), dtype="str"),
            "label": rng.choice(["yes", "no"], n_rows),
        }
    )
    frame.loc[n_rows - 5, "color"] = None  # missing only far beyond the sample: still optional
    frame.loc[tracking.SCHEMA_ROWS + 7, "x"] = np.nan
    (logged,) = tracking.dataset_inputs("toy", "label", {"train": (frame, tmp_path / "train.parquet")}, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        everything = _infer_schema(frame).to_dict()
    assert json.loads(logged.dataset.schema)["mlflow_colspec"] == everything
    assert json.loads(logged.dataset.profile)["num_rows"] == n_rows  # the profile counts every row


def test_a_splits_digest_follows_its_rows(tmp_path: Path) -> None:
    """The same rows give the same MLflow dataset (the UI groups runs by it); a changed
    value, even past the first 10,000 rows MLflow's own digest reads, gives another."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"x": np.arange(12_000, dtype=float), "label": ["yes", "no"] * 6_000})

    def digest(rows: pd.DataFrame) -> str:
        (logged,) = tracking.dataset_inputs("toy", "label", {"train": (rows, tmp_path / "train.parquet")}, tmp_path)
        return logged.dataset.digest

    changed = frame.copy()
    changed.loc[11_000, "x"] = -1.0
    assert digest(frame) == digest(frame.copy()) != digest(changed)
