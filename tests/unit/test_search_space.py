"""The search space a study runs: the task's entries completed by the family's defaults,
sized from the data, never searching what the task fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.config import Distribution, TaskSettings, parse_settings
from modelyard.search_space import (
    baseline_params,
    batch_choices,
    effective_space,
    space_size,
    tuning_task,
)
from tests.conftest import toy_params


def task(**overrides: object) -> TaskSettings:
    return parse_settings(toy_params(**overrides)).task("toy")


def sequence_task(**overrides: object) -> TaskSettings:
    columns = {
        "sid": {"type": "integer"},
        "t": {"type": "integer"},
        "x": {"type": "number"},
        "label": {"type": "category", "categories": ["a", "b"]},
    }
    entry = {
        "source": {"path": "data/s.csv"},
        "target": "label",
        "problem": "binary",
        "family": "lstm",
        "schema": {"columns": columns},
        "features": {"sequence": {"id": "sid", "step": "t"}},
        **overrides,
    }
    return parse_settings({"tasks": {"seq": entry}}).task("seq")


@pytest.mark.parametrize(
    ("n_train", "expected"),
    [(100, (16,)), (640, (16, 32)), (5000, (64, 128, 256)), (100_000, (128, 256, 512))],
)
def test_batch_sizes_give_every_epoch_enough_steps(n_train: int, expected: tuple[int, ...]) -> None:
    assert batch_choices(n_train) == expected
    assert n_train / max(expected) >= 16 or max(expected) == 16


def test_no_search_space_searches_the_family_defaults() -> None:
    space = effective_space(task(model={}, tune={"n_trials": 20}), n_train=640)
    mlp = {"lr", "weight_decay", "dropout", "batch_size", "n_layers", "units"}
    assert set(space) == mlp | {"numeric_embedding", "frequency_scale"}  # the toy table has numeric columns
    assert space["numeric_embedding"].choices == ("periodic", "none")
    assert space["lr"].log and space["units"].log and space["frequency_scale"].log
    assert space["batch_size"].choices == (16, 32)
    assert space_size(space) == math.inf


def test_a_partial_space_is_completed_and_fixed_hparams_are_not_searched() -> None:
    # toy fixes units and n_layers in `model:` and searches lr and batch_size itself
    fixed = task()
    space = effective_space(fixed, n_train=640)
    assert space["lr"] == Distribution(low=1e-3, high=3e-2, log=True)  # the task's own range
    assert space["batch_size"].choices == (32, 64)
    assert {"weight_decay", "dropout"} <= set(space)
    assert not {"units", "n_layers"} & set(space)


def test_default_space_false_searches_only_the_tasks_entries() -> None:
    only = task(tune={"default_space": False, "search_space": {"lr": {"low": 1e-3, "high": 1e-2}}})
    assert set(effective_space(only, 640)) == {"lr"}
    nothing = task(tune={"default_space": False})
    assert effective_space(nothing, 640) == {} and space_size({}) == 1


def test_space_size_counts_configurations() -> None:
    space = {
        "batch_size": Distribution(choices=(32, 64)),
        "n_layers": Distribution(low=1, high=3),
        "lr": Distribution(low=1e-3, high=1e-3),  # fixed: one value
    }
    assert space_size(space) == 6
    assert space_size({**space, "dropout": Distribution(low=0.0, high=0.5)}) == math.inf


def test_an_mlp_study_starts_with_a_linear_model_when_its_space_holds_one() -> None:
    space = effective_space(task(model={}, tune={"n_trials": 20}), n_train=640)
    linear = {"n_layers": 0, "numeric_embedding": "none", "dropout": 0.0, "lr": space["lr"].high}
    # scikit-learn's default L2 strengths (LogisticRegression C=1, Ridge alpha=1) as a weight
    # decay on the mean loss, within the searched range
    assert baseline_params(space, 640, "binary") == {**linear, "weight_decay": 1 / 640}
    assert baseline_params(space, 640, "regression")["weight_decay"] == 2 / 640
    assert baseline_params(space, 10**7, "binary")["weight_decay"] == space["weight_decay"].low
    deep = {**space, "n_layers": Distribution(low=1, high=3)}
    assert baseline_params(deep, 640, "binary") == {}  # the user's space has no linear model in it
    toy = effective_space(task(), n_train=640)
    assert baseline_params(toy, 640, "binary") == {}  # the toy task fixes the layers


def test_sequences_compare_fcn_and_resnet_unless_the_task_picks_one() -> None:
    space = effective_space(sequence_task(), n_train=300)
    assert space["arch"].choices == ("fcn", "resnet") and "filters" in space
    assert "hidden_size" not in space  # no LSTM among the candidates
    picked = sequence_task(model={"arch": "lstm"})
    space = effective_space(picked, n_train=300)
    assert "arch" not in space and {"hidden_size", "bidirectional"} <= set(space)
    assert tuning_task(picked, 300, np.arange(100) % 2).model.arch == "lstm"
    assert tuning_task(sequence_task(), 300, np.arange(300) % 2).model.arch == "fcn"  # `auto` resolved


def test_a_classifier_with_few_validation_samples_is_tuned_on_the_validation_loss() -> None:
    # accuracy on a dozen samples ties most trials; the loss still ranks them
    assert tuning_task(sequence_task(), 40, np.arange(12) % 2).monitor == "val_loss"
    assert tuning_task(sequence_task(), 400, np.arange(200) % 2).monitor == "val_accuracy"
    # 1,600 rows, 50 of them in the rare class: those 50 decide accuracy
    assert tuning_task(sequence_task(), 6400, np.r_[np.ones(50), np.zeros(1550)]).monitor == "val_loss"
    regression = task(problem="regression", target="x1", positive_label=None)
    assert tuning_task(regression, 40, np.zeros(12)).monitor == "val_rmse"  # RMSE is not a step function


def test_a_table_without_numeric_columns_searches_no_numeric_embedding() -> None:
    label = {"type": "category", "categories": ["no", "yes"]}
    columns = {"color": {"type": "category", "categories": ["red", "green"]}, "label": label}
    only_categories = task(schema={"columns": columns}, features={}, model={})
    assert "numeric_embedding" not in effective_space(only_categories, n_train=640)


@pytest.mark.parametrize(("n_train", "expected"), [(29, 25), (200, 11), (26_000, 3)])
def test_the_pruner_waits_longer_on_small_data(n_train: int, expected: int) -> None:
    """A trial on 29 rows (batch 16: 2 steps an epoch, 250 epochs) is at chance level for
    its first dozen epochs; one on 26,000 rows learns within a few."""
    from modelyard.tuning.trials import pruner_warmup

    study_task = tuning_task(task(tune={"n_trials": 3}), n_train, np.arange(200) % 2)  # auto budget, default space
    assert pruner_warmup(study_task, n_train) == expected


def test_hyperband_judges_no_trial_before_the_warmup_and_prunes_a_poor_one_after_it() -> None:
    import optuna

    from modelyard.tuning.trials import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a named study: Hyperband deals trials into brackets by a hash of the name and number
    study = optuna.create_study(study_name="brackets", pruner=make_pruner("hyperband", warmup_epochs=4, longest=36))
    for _ in range(12):  # good trials, each run to the end of its budget (asking as a trial does)
        trial = study.ask()
        for epoch in range(36):
            trial.report(0.1, epoch)
            assert not trial.should_prune()
        study.tell(trial, 0.1)
    poor = [study.ask() for _ in range(6)]
    pruned_at = []
    for trial in poor:
        for epoch in range(36):
            trial.report(5.0, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                break
    # Hyperband's last bracket runs its trials to the end (its first rung is the full
    # budget); the others cut a poor trial at their first rung, the warm-up's 4 epochs or 12
    assert len(pruned_at) >= len(poor) - 2
    assert set(pruned_at) <= {4, 12}  # none before the warm-up


def test_asha_judges_no_trial_before_the_warmup_and_keeps_the_best_third_at_a_rung() -> None:
    import optuna

    from modelyard.tuning.trials import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=make_pruner("asha", warmup_epochs=4, longest=36))
    for _ in range(3):  # three good trials run to the end of their budget
        trial = study.ask()
        for epoch in range(36):
            trial.report(0.1, epoch)
            assert not trial.should_prune()
        study.tell(trial, 0.1)
    running = [study.ask() for _ in range(2)]  # two still running, judged against each other too
    pruned_at = {}
    for number, (trial, value) in enumerate(zip(running, (0.05, 5.0), strict=True)):
        for epoch in range(36):
            trial.report(value, epoch)
            if trial.should_prune():
                pruned_at[number] = epoch
                break
    assert pruned_at == {1: 4}  # the poor one at the first rung, right after the warm-up; the best goes on


def test_asha_spares_the_exactly_solved_linear_baseline_but_cuts_a_poor_network(tmp_path, mlflow_uri) -> None:
    """A retraining study runs the champion's configuration, then the linear baseline that
    selection and the cross-fit compare every network with: ASHA must not cut it at the
    first rung, however it compares there; a network as poor is cut."""
    from types import SimpleNamespace

    import optuna

    from modelyard import tracking
    from modelyard.config import Hyperparams
    from modelyard.models import build_model
    from modelyard.tuning.trials import Started, TrialRunner, make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=make_pruner("asha", warmup_epochs=2, longest=18))
    champion = study.ask()
    for epoch in range(1, 19):
        champion.report(0.1, epoch)
        assert not champion.should_prune()
    study.tell(champion, 0.1)
    client = tracking.connect(tmp_path)
    experiment = client.create_experiment("toy")
    runner = TrialRunner.__new__(TrialRunner)  # only the monitor of its setup is read here
    runner.setup = SimpleNamespace(task=SimpleNamespace(monitor="val_loss"))
    linear = Hyperparams(n_layers=0, dropout=0.0, numeric_embedding="none")
    network = Hyperparams(n_layers=2, units=16)
    outcome = {}
    for name, hparams in (("linear", linear), ("network", network)):
        trial = study.ask()
        run = tracking.start_run(client, experiment, name, {}, buffered=True)
        report = runner.on_epoch_end(Started(trial, hparams, run, build_model("ann", (5,), 1, hparams)))
        try:
            for epoch in range(1, 19):
                report(epoch, {"val_loss": 5.0})  # far worse than the champion at every rung
            outcome[name] = "ran"
        except optuna.TrialPruned:
            outcome[name] = "pruned"
        run.finish()
    assert outcome == {"linear": "ran", "network": "pruned"}
