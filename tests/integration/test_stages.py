"""Every stage's real code on the toy task in a temporary project: real Great
Expectations, a real Optuna journal storage, a real MLflow store and registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from modelyard.cli import main
from modelyard.config import load_settings
from modelyard.errors import ModelyardError
from modelyard.evaluation import lower_is_better
from modelyard.stages import STAGES, Context
from modelyard.tracking import file_md5
from tests.conftest import toy_frame, toy_params

UPSTREAM = ("ingest", "validate", "split", "featurize")


def run(root: Path, *stages: str) -> Context:
    ctx = Context(root, load_settings(root / "params.yaml"), "toy")
    for name in stages:
        STAGES[name](ctx)
    return ctx


def runs_of(client: MlflowClient, experiment: str) -> list:
    return client.search_runs([experiment], max_results=1000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The whole pipeline once on the toy task; tests below read what it left."""
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("trained") / "project"
    (root / "data" / "sources").mkdir(parents=True)
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    # an ensemble of two seeds: evaluate, register and predict below all run on one
    (root / "params.yaml").write_text(yaml.safe_dump(toy_params(train={"max_epochs": 4, "patience": 2, "ensemble": 2})))
    toy_frame().to_csv(root / "data" / "sources" / "toy.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root.parent / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        ctx = run(root, *STAGES)
        client = MlflowClient(uri, uri)
        yield ctx, client


def test_data_stages_write_their_outputs(trained) -> None:
    ctx, _ = trained
    paths = ctx.paths
    assert pd.read_parquet(paths.raw).shape == (400, 5)
    assert json.loads(paths.ingest_summary.read_text())["rows"] == 400
    assert json.loads(paths.validation_summary.read_text())["success"] is True
    assert (paths.data_docs / "index.html").is_file()
    sizes = [len(pd.read_parquet(paths.split_file(p))) for p in ("train", "val", "test")]
    assert sum(sizes) == 400 and sizes[2] == 80
    with np.load(paths.features) as arrays:
        assert arrays["x_train"].shape[0] == sizes[0]
        assert arrays["x_test"].dtype == np.float32
        assert np.isfinite(arrays["x_train"]).all()


def test_study_is_a_parent_run_with_one_child_per_trial(trained) -> None:
    ctx, client = trained
    experiment = client.get_experiment_by_name("toy")
    assert experiment.artifact_location  # explicit, never the working directory
    runs = runs_of(client, experiment.experiment_id)
    parents = [r for r in runs if "modelyard.study" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    for child in children:
        assert {"lr", "batch_size", "units", "dropout"} <= set(child.data.params)
        assert child.data.tags["modelyard.trial_state"] in {"COMPLETE", "PRUNED"}
        assert child.info.status == "FINISHED"  # a pruned trial is no failure: no red cross
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and history  # epochs from 1
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(child.data.metrics)
    assert parent.data.tags["modelyard.task"] == "toy"
    assert parent.data.tags["modelyard.family"] == "ann"
    assert parent.data.tags["dvc.md5.features.npz"] == file_md5(ctx.paths.features)
    best = json.loads(ctx.paths.best_params.read_text())
    assert best["study"] == parent.data.tags["modelyard.study"]
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 3


def study_trials(ctx: Context) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ctx.paths.study_journal)))
    name = json.loads(ctx.paths.best_params.read_text())["study"]
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_a_default_study_searches_distinct_configurations(trained) -> None:
    ctx, client = trained
    trials = study_trials(ctx)
    # the toy task names lr and batch_size; the family's defaults add the rest it does not fix
    assert {"lr", "batch_size", "weight_decay", "dropout"} <= set(trials[0].params)
    assert "units" not in trials[0].params  # fixed in the task's model section
    configurations = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(configurations) == len(trials) == 3
    parent = next(
        r
        for r in runs_of(client, client.get_experiment_by_name("toy").experiment_id)
        if "modelyard.study" in r.data.tags
    )
    assert parent.data.params["space.weight_decay"].endswith("(log)")  # the effective space is on the parent run


def test_the_trained_model_is_no_worse_on_validation_than_its_best_trial(trained) -> None:
    ctx, client = trained
    best = json.loads(ctx.paths.best_params.read_text())
    summary = json.loads(ctx.paths.train_summary.read_text())
    trial = torch.load(ctx.paths.best_trial, weights_only=True)["val"]  # the best trial's own scores
    # the toy task validates on 64 rows, fewer than 100: trials and models are judged on the
    # validation loss, and the two members cross-fit (the second also learns from validation)
    assert best["val_loss"] == trial["val_loss"]
    # equally large networks (the toy fixes the layers): the rule keeps the best trial
    assert best["selection"]["rule"] == "one_standard_error" and best["selected_trial"] == best["best_trial"]
    assert best["best_trial"] in best["selection"]["within"]
    assert summary["selected_on"] == "val_loss"
    assert summary["val_split"]["val_loss"] <= trial["val_loss"]  # member 0, or the best trial itself
    assert summary["source"] in {"cross_fit", "cross_fit_best_trial"}
    assert summary["validation"] == "out_of_fold" and summary["ensemble"] == 2
    assert len(summary["epochs_run"]) == 2  # both members trained
    run = client.get_run(summary["run_id"])
    assert "member1_val_loss" in run.data.metrics  # the second member's curve is on the run too
    assert run.data.tags["modelyard.train_source"] == summary["source"]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(summary["val"]["val_accuracy"])


def test_a_tiny_table_learns_more_than_the_majority_class(trained) -> None:
    ctx, _ = trained
    test = pd.read_parquet(ctx.paths.split_file("test"))
    majority = test["label"].value_counts(normalize=True).max()
    assert json.loads(ctx.paths.metrics.read_text())["test_accuracy"] > majority + 0.1


def test_final_model_run_has_model_metrics_and_plots(trained) -> None:
    ctx, client = trained
    summary = json.loads(ctx.paths.train_summary.read_text())
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.stage"] == "train"
    metrics = json.loads(ctx.paths.metrics.read_text())
    assert set(metrics) >= {
        "test_accuracy",
        "test_precision",
        "test_recall",
        "test_f1",
        "test_roc_auc",
        "test_log_loss",
    }
    assert metrics["test_accuracy"] > 0.75  # the toy label is learnable
    assert run.data.metrics["test_roc_auc"] == pytest.approx(metrics["test_roc_auc"])
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/roc_curve.png"} <= artifacts
    for name in ("confusion", "roc", "precision_recall"):
        assert (ctx.paths.plots_dir / f"{name}.csv").is_file()


def test_runs_read_well_in_the_mlflow_ui(trained) -> None:
    """What the UI shows: the experiment's description and kind, each run's Source, user and
    Dataset, only the family's hyperparameters, the study's best params, history and parameter importances,
    and the logged model named after the task with its validation and test metrics."""
    ctx, client = trained
    experiment = client.get_experiment_by_name("toy")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Task **toy**" in experiment.tags["mlflow.note.content"]
    runs = runs_of(client, experiment.experiment_id)
    parent = next(r for r in runs if "modelyard.study" in r.data.tags)
    train = client.get_run(json.loads(ctx.paths.train_summary.read_text())["run_id"])
    trial = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    for run in (parent, trial, train):
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.user"]
        assert run.data.tags["mlflow.source.name"]  # the command that made it
        datasets = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
        assert {("toy-train", "training"), ("toy-val", "validation")} <= datasets
    assert ("toy-test", "testing") in {(d.dataset.name, d.tags[0].value) for d in train.inputs.dataset_inputs}
    # an MLP run logs no CNN or LSTM knobs, and single values are params, not bar charts
    for run in (trial, train):
        assert {"units", "n_layers", "lr", "best_epoch"} <= set(run.data.params)
        assert not {"filters", "n_blocks", "hidden_size", "embed_dim", "flip"} & set(run.data.params)
        assert "best_epoch" not in run.data.metrics
    best = json.loads(ctx.paths.best_params.read_text())
    assert parent.data.params["best.lr"] == str(best["hparams"]["lr"])
    # the optimization history, charted by step: one step per completed trial, the best so far never worse
    key = next(k for k in parent.data.metrics if k.startswith("best_val_"))
    monitor = key.removeprefix("best_")
    history = sorted(client.get_metric_history(parent.info.run_id, key), key=lambda m: m.step)
    values = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, f"trial_{monitor}")}
    assert len(history) == len(values) >= 2 and [m.step for m in history] == sorted(values)
    running = min if lower_is_better(monitor) else max
    assert [m.value for m in history] == [running(v for s, v in values.items() if s <= m.step) for m in history]
    assert parent.data.metrics[key] == pytest.approx(best[monitor])  # the latest step: the study's best
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best_params.json", "param_importances.json"}
    (model,) = client.search_logged_models([experiment.experiment_id])
    assert model.name == "toy"
    linked = {m.key for m in model.metrics}
    assert {"test_accuracy", "best_val_loss"} <= linked and "train_loss" not in linked  # no first-epoch figures
    assert "@champion" in client.get_registered_model("toy").description
    assert client.get_model_version("toy", "1").description.startswith("Promoted to champion: first version")


def test_a_moved_checkout_keeps_its_artifacts_and_champion(
    trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded store (no MLFLOW_TRACKING_URI) follows its checkout when it moves."""
    import shutil

    from modelyard import registry, tracking

    ctx, _ = trained
    old = tmp_path / "old"
    shutil.copytree(ctx.root, old)
    shutil.copy(ctx.root.parent / "mlflow.db", old / "mlflow.db")
    assert tracking.follow_checkout(old) == [f"{(ctx.root / 'mlruns').as_uri()}/"]  # now as if made in `old`
    moved = tmp_path / "renamed"
    old.rename(moved)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    client = tracking.connect(moved)
    assert client.get_experiment_by_name("toy").artifact_location == (moved / "mlruns" / "toy").as_uri()
    model = registry.load_champion("toy")
    raw = pd.read_parquet(ctx.paths.split_file("test")).drop(columns=["label"]).head(3)
    assert len(model.predict(raw)) == 3


def test_champion_predicts_on_raw_rows(trained) -> None:
    ctx, client = trained
    decision = json.loads(ctx.paths.registry_decision.read_text())
    assert decision["promoted"] is True and decision["version"] == 1
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "1"
    model = mlflow.pyfunc.load_model("models:/toy@champion")
    raw = pd.DataFrame(
        {"color": ["red", "purple", None], "size": ["S", "XXL", "M"], "x1": [3.0, -3.0, np.nan], "x2": [1, 50, 99]}
    )
    predictions = model.predict(raw)
    assert list(predictions.columns) == ["probability", "label"]
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["label"]) <= {"yes", "no"}
    assert predictions["label"].iloc[0] == "yes" and predictions["label"].iloc[1] == "no"


def test_an_equal_model_does_not_take_the_champion(trained) -> None:
    """Runs last in this module: it adds a version to the registry. Promotion on evidence
    (a better model taking over) is covered in test_lifecycle.py."""
    ctx, client = trained
    STAGES["register"](ctx)  # the same model again: no better on the same test rows
    decision = json.loads(ctx.paths.registry_decision.read_text())
    assert decision["promoted"] is False and decision["version"] == 2
    assert decision["comparison"]["improvement"] == 0 and decision["comparison"]["method"] == "bootstrap"
    assert "not better than the champion" in decision["reason"]
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("toy", "challenger").version) == "2"
    assert client.get_model_version("toy", "2").tags["modelyard.decision"] == "kept champion"
    train_run = client.get_run(json.loads(ctx.paths.train_summary.read_text())["run_id"])
    assert train_run.data.tags["modelyard.outcome"] == "kept champion"
    assert train_run.data.tags["modelyard.champion_version"] == "1"


def test_a_space_with_nothing_to_search_runs_one_trial(project: Path, capsys: pytest.CaptureFixture) -> None:
    params = toy_params()
    params["tasks"]["toy"]["tune"] = {"n_trials": 5, "max_epochs": 2, "default_space": False}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = run(project, *UPSTREAM, "tune")
    assert "holds one configuration, so the study runs one trial" in capsys.readouterr().err
    trials = study_trials(ctx)
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.COMPLETE
    run(project, "tune")  # asked again: the study is complete, nothing reruns
    assert len(study_trials(ctx)) == 1


def test_corrupt_champion_leaves_alias_alone(project: Path) -> None:
    ctx = run(project, *UPSTREAM, "tune", "train", "evaluate", "register")
    client = MlflowClient()
    champion = client.get_model_version_by_alias("toy", "champion")
    artifact_root = Path(client.get_experiment_by_name("toy").artifact_location.removeprefix("file://"))
    weights = list(artifact_root.rglob("network.pt"))
    assert weights
    for path in weights:  # damage the champion's stored weights where MLflow keeps them
        path.write_bytes(b"not a torch file")
    with pytest.raises(ModelyardError, match="champion alias was left unchanged"):
        STAGES["register"](ctx)
    assert client.get_model_version_by_alias("toy", "champion").version == champion.version
    assert len(client.search_model_versions("name = 'toy'")) == 1


def test_tune_resumes_and_fails_stale_trials(project: Path) -> None:
    params = toy_params()
    params["tasks"]["toy"]["tune"]["n_trials"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = run(project, *UPSTREAM, "tune")
    study_name = json.loads(ctx.paths.best_params.read_text())["study"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ctx.paths.study_journal)))
    study = optuna.load_study(study_name=study_name, storage=storage)
    zombie = study.ask()  # a trial left RUNNING, as by a process killed mid-trial
    params["tasks"]["toy"]["tune"]["n_trials"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run(project, "tune")
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    states = [t.state for t in trials]
    assert states[zombie.number] == optuna.trial.TrialState.FAIL
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4
    assert json.loads(ctx.paths.best_params.read_text())["study"] == study_name
    client = MlflowClient()
    experiment = client.get_experiment_by_name("toy").experiment_id
    parents = [r for r in runs_of(client, experiment) if r.data.tags.get("modelyard.study") == study_name]
    assert len(parents) == 1
    children = [
        r for r in runs_of(client, experiment) if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    ]
    assert len(children) == 4
    assert all(r.info.status != "RUNNING" for r in runs_of(client, experiment))


def test_failed_validation_stops_the_pipeline(project: Path, capsys: pytest.CaptureFixture) -> None:
    frame = toy_frame()
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[5, "x1"] = "abc"
    frame.loc[6, "color"] = "purple"
    frame.to_csv(project / "data" / "sources" / "toy.csv", index=False)
    params = ["--params", str(project / "params.yaml")]
    assert main(["ingest", *params]) == 0
    assert main(["validate", *params]) == 3
    err = capsys.readouterr().err
    assert "x1" in err and "purple" in err and "Traceback" not in err
    summary = json.loads((project / "data" / "toy" / "validation.json").read_text())
    assert summary["success"] is False
    assert main(["split", *params]) == 2
    assert not (project / "data" / "toy" / "split").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"source": {"path": "data/sources/absent.csv"}}, "absent.csv"),
        ({"features": {"default_encoder": "nonesuch"}}, "default_encoder"),
        ({"features": {"scaler": "zscore"}}, "scaler"),
        ({"tune": {"search_space": {"lr": {"low": 0.1, "high": 0.01}}}}, "greater than high"),
        ({"train": {"max_epoch": 3}}, "tasks.toy.train.max_epoch: unknown key; allowed: max_epochs"),
    ],
)
def test_bad_input_is_one_clear_error(
    project: Path, capsys: pytest.CaptureFixture, change: dict, expected: str
) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(toy_params(**change)))
    assert main(["ingest", "--params", str(project / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and "fix:" in err
    assert not (project / "data" / "toy" / "raw.parquet").exists()


def test_missing_target_column_fails_validation(project: Path, capsys: pytest.CaptureFixture) -> None:
    toy_frame().drop(columns=["label"]).to_csv(project / "data" / "sources" / "toy.csv", index=False)
    params = ["--params", str(project / "params.yaml")]
    assert main(["ingest", *params]) == 0
    assert main(["validate", *params]) == 3
    assert "label" in capsys.readouterr().err


def test_empty_source_file(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "data" / "sources" / "toy.csv").write_text("")
    assert main(["ingest", "--params", str(project / "params.yaml")]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("val_size", "validation", "members_trained"),
    [(0.2, "out_of_fold", 2), (0.35, "val_split", 1)],  # 64 validation rows cross-fit, 112 do not
)
def test_a_linear_model_is_refitted_on_all_labelled_rows_as_logistic_regression(
    project: Path, val_size: float, validation: str, members_trained: int
) -> None:
    from sklearn.linear_model import LogisticRegression

    from modelyard.bundle import ModelBundle
    from modelyard.training import predict

    params = toy_params(train={"ensemble": 2}, split={"val_size": val_size})
    params["tasks"]["toy"]["model"] = {"n_layers": 0, "weight_decay": 0.01}
    params["tasks"]["toy"]["tune"] = {"n_trials": 1, "default_space": False}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ctx = run(project, *UPSTREAM, "tune", "train")
    summary = json.loads(ctx.paths.train_summary.read_text())
    assert summary["source"] == "refit" and summary["ensemble"] == 1
    assert summary["validation"] == validation  # the figures still come from held-out rows
    # two seeds of one convex optimum are the same model: only cross-fitting trains both
    assert len(np.atleast_1d(summary["epochs_run"])) == members_trained
    with np.load(ctx.paths.features) as arrays:
        x = np.concatenate([arrays["x_train"], arrays["x_val"]])
        y = np.concatenate([arrays["y_train"], arrays["y_val"]])
        n_train = len(arrays["x_train"])
    # a weight decay of 0.01 on the training rows' mean log-loss is scikit-learn's
    # C = 1 / (n_train * 0.01); the refit on all rows keeps that C, as scikit-learn does
    reference = LogisticRegression(C=1 / (n_train * 0.01), tol=1e-8, max_iter=10_000).fit(x, y)
    network = ModelBundle.load(ctx.paths.model_dir).network
    np.testing.assert_allclose(predict(network, x, "binary"), reference.predict_proba(x)[:, 1], atol=2e-3)


def test_on_small_data_a_network_must_beat_the_linear_baseline_in_cross_validation(
    template: Path, tmp_path: Path
) -> None:
    from modelyard.config import Hyperparams
    from modelyard.search_space import base_hparams, tuning_task
    from modelyard.selection import Candidate
    from modelyard.stages import _cross_validated, _load_arrays, _load_preprocessing, network_size
    from tests.integration.helpers import context, copy_project

    ctx = context(copy_project(template, tmp_path, tune={"max_epochs": 20}))
    arrays = _load_arrays(ctx)
    task = tuning_task(ctx.task, len(arrays["x_train"]), arrays["y_val"])
    assert task.monitor == "val_loss"  # 64 validation rows: trials are ranked on the loss
    size = network_size(task, _load_preprocessing(ctx))

    def hparams(**values: object) -> Hyperparams:
        return Hyperparams.model_validate({**base_hparams(ctx.task).model_dump(), **values})

    network = Candidate(3, 0.20, hparams(n_layers=3, units=64, lr=0.01, batch_size=32))
    baseline = Candidate(0, 0.30, hparams(n_layers=0, numeric_embedding="none", weight_decay=1 / 256), baseline=True)
    kept, record = _cross_validated(ctx, task, arrays, size, network, baseline, minimize=True)
    assert record["folds"] == 5 and record["network_trial"] == 3 and record["baseline_trial"] == 0
    assert 0 < record["baseline"] < 0.693 and 0 < record["network"] < 0.693  # both learn more than the prior
    gain = record["baseline"] - record["network"]
    assert (kept is network) == (gain > record["standard_error"])
    assert record["kept"] == ("network" if kept is network else "baseline")
    assert kept is baseline  # the toy's label is linear in its features: the deeper network gains nothing


def test_trials_asked_together_share_a_structure_and_train_as_one_stacked_model(project: Path) -> None:
    tune = {**toy_params()["tasks"]["toy"]["tune"], "n_trials": 4, "fuse": 3, "pruner": "none"}
    (project / "params.yaml").write_text(yaml.safe_dump(toy_params(tune=tune)))
    ctx = run(project, *UPSTREAM, "tune")
    trials = study_trials(ctx)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    # trials 0-2 were asked together: 1 and 2 took trial 0's structure (its batch size) and
    # drew their own learning rate, weight decay and dropout; trial 3 was drawn alone
    assert trials[1].params["batch_size"] == trials[2].params["batch_size"] == trials[0].params["batch_size"]
    assert len({(t.params["lr"], t.params["dropout"]) for t in trials[:3]}) == 3
    assert len({t.value for t in trials[:3]}) == 3  # each member learned with its own settings
    client = MlflowClient()
    for trial in trials:  # each its own child run, with its own per-epoch curve
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "val_loss")
        assert [m.step for m in history] == [1, 2, 3]
        assert sorted(trial.intermediate_values) == [1, 2, 3]  # and reported each epoch to Optuna
