"""params.yaml parsing: the repo's real file, and variants of it with one thing wrong."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest
import yaml

from modelyard.config import Hyperparams, Settings, load_settings, parse_settings
from modelyard.errors import ModelyardError
from tests.conftest import TOY_TASK

PARAMS_PATH = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture(scope="module")
def real_params() -> dict:
    return yaml.safe_load(PARAMS_PATH.read_text())


@pytest.fixture
def raw(real_params: dict) -> dict:
    """A private copy of the real params mapping, for one test to break; its adult task
    names a search-space entry (the real one searches the defaults) for tests to break."""
    params = copy.deepcopy(real_params)
    params["tasks"]["adult"]["tune"]["search_space"] = {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}
    return params


def adult(raw: dict) -> dict:
    return raw["tasks"]["adult"]


def problem_text(raw: dict) -> str:
    with pytest.raises(ModelyardError) as info:
        parse_settings(raw)
    return str(info.value)


def test_real_params_file_parses() -> None:
    settings = load_settings(PARAMS_PATH)
    task = settings.task("adult")
    assert (task.problem, task.target, task.positive_label) == ("binary", "income", ">50K")
    assert task.schema_.columns["income"].categories == ("<=50K", ">50K")
    assert task.features.encoder_for("native-country") == "target"
    assert task.features.encoder_for("race") == "onehot"
    assert (task.monitor, task.promotion_metric) == ("val_accuracy", "test_roc_auc")
    assert task.tune.search_space == {} and task.tune.default_space  # the family's defaults are searched
    assert (task.train.max_epochs, task.train.patience) == (None, 10)  # epochs sized from the data


def test_default_image_and_series_tasks_parse() -> None:
    settings = load_settings(PARAMS_PATH)
    digits, co2 = settings.task("digits"), settings.task("co2")
    assert (digits.kind, digits.family, digits.schema_.image.height, digits.model.max_shift) == ("images", "cnn", 8, 1)
    assert (co2.kind, co2.schema_.time, co2.features.series.window, co2.forecast_targets) == (
        "series",
        "date",
        52,
        ("co2",),
    )
    assert (co2.monitor, co2.promotion_metric) == ("val_rmse", "test_rmse")


def test_settings_are_frozen() -> None:
    task = load_settings(PARAMS_PATH).task("adult")
    with pytest.raises(pydantic.ValidationError):
        task.train.max_epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("where", "typo", "allowed"),
    [
        ((), "sed", "seed, device, tasks"),
        (
            ("tasks", "adult"),
            "famliy",
            "source, target, problem, family, positive_label, metric, schema, split, features, model, tune, "
            "train, registry",
        ),
        (
            ("tasks", "adult", "train"),
            "max_epoch",
            "max_epochs, patience, min_epochs, schedule, warmup, grad_clip, ensemble",
        ),
        (("tasks", "adult", "tune", "search_space", "lr"), "lo", "low, high, log, step, choices"),
        (("tasks", "adult", "schema", "columns", "age"), "mn", "type, min, max, categories, max_null_fraction"),
    ],
    ids=["top", "task", "train", "search_space_entry", "schema_column"],
)
def test_unknown_key_names_its_full_path_and_the_allowed_keys(raw: dict, where: tuple, typo: str, allowed: str) -> None:
    section = raw
    for part in where:
        section = section[part]
    section[typo] = 1
    text = problem_text(raw)
    path = ".".join((*where, typo))
    assert "1 problem(s)" in text
    assert f"  - {path}: unknown key; allowed: {allowed}\n" in text
    assert "fix: edit those keys" in text


def test_every_problem_is_reported_at_once(raw: dict) -> None:
    adult(raw)["train"]["max_epoch"] = 3
    adult(raw)["features"]["scaler"] = "log"
    text = problem_text(raw)
    assert "2 problem(s)" in text
    assert "tasks.adult.train.max_epoch: unknown key" in text
    assert "tasks.adult.features.scaler:" in text and "'log'" in text


@pytest.mark.parametrize(
    ("name", "distribution", "fragment"),
    [
        ("dropout", {"low": 0.5, "high": 0.1}, "low (0.5) is greater than high (0.1)"),
        ("weight_decay", {"low": 0.0, "high": 0.1, "log": True}, "log-scale range needs low > 0"),
        ("widht", {"low": 1, "high": 2}, "unknown hyperparameter; allowed: lr, weight_decay, l1, optimizer"),
        ("activation", {"low": 1, "high": 2}, "activation takes choices, not a low/high range"),
        ("batch_norm", {"low": 0, "high": 1}, "batch_norm takes choices, not a low/high range"),
        ("units", {"low": 32, "high": 64, "choices": [32, 64]}, "either choices or low/high"),
        ("units", {"choices": []}, "choices is empty"),
        ("units", {"low": 32}, "give low and high"),
        ("optimizer", {"choices": ["adam", "rmsprop"]}, "'rmsprop'"),
    ],
    ids=[
        "low_above_high",
        "log_with_zero_low",
        "unknown_hyperparameter",
        "range_for_activation",
        "range_for_batch_norm",
        "choices_and_range",
        "empty_choices",
        "low_without_high",
        "choice_of_wrong_value",
    ],
)
def test_bad_search_space_entry_names_its_key(raw: dict, name: str, distribution: dict, fragment: str) -> None:
    adult(raw)["tune"]["search_space"][name] = distribution
    text = problem_text(raw)
    assert f"search_space.{name}" in text
    assert "tasks.adult.tune" in text
    assert fragment in text


def test_choice_outside_a_hyperparameters_values_is_rejected(raw: dict) -> None:
    adult(raw)["tune"]["search_space"]["optimizer"] = {"choices": ["adam", "rmsprop"]}
    text = problem_text(raw)
    assert "optimizer" in text and "'rmsprop'" in text
    assert "'adam', 'adamw' or 'sgd'" in text


@pytest.mark.parametrize(
    ("name", "distribution"), [("dropout", {"low": 0.0, "high": 1.5}), ("n_layers", {"low": -1, "high": 3})]
)
def test_range_outside_a_hyperparameters_limits_is_rejected(raw: dict, name: str, distribution: dict) -> None:
    adult(raw)["tune"]["search_space"][name] = distribution
    assert f"search_space.{name}" in problem_text(raw)


@pytest.mark.parametrize("where", ["model", "range", "choices"])
def test_an_lstm_of_depth_0_is_rejected_and_an_mlp_of_depth_0_is_accepted(raw: dict, where: str) -> None:
    co2 = raw["tasks"]["co2"]
    searched = {"range": {"low": 0, "high": 2}, "choices": {"choices": [2, 0]}}
    if where == "model":
        co2.setdefault("model", {})["n_layers"] = 0
    else:
        co2.setdefault("tune", {}).setdefault("search_space", {})["n_layers"] = searched[where]
    assert "n_layers must be at least 1 for an LSTM" in problem_text(raw)
    del raw["tasks"]["co2"]
    adult(raw).setdefault("model", {})["n_layers"] = 0
    assert parse_settings(raw).task("adult").model.n_layers == 0


def test_yaml_1e_minus_3_is_read_as_a_float(tmp_path: Path) -> None:
    text = """
tasks:
  tiny:
    source: {path: data/tiny.csv}
    target: y
    problem: regression
    schema:
      columns:
        x: {type: number}
        y: {type: number}
    model:
      lr: 1e-3
      weight_decay: 5e-5
    tune:
      search_space:
        lr: {low: 1e-4, high: 1e-2, log: true}
"""
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"  # what makes this test necessary: YAML 1.1 gives a string
    path = tmp_path / "params.yaml"
    path.write_text(text)
    task = load_settings(path).task("tiny")
    assert isinstance(task.model.lr, float) and task.model.lr == 1.0e-3
    assert isinstance(task.model.weight_decay, float) and task.model.weight_decay == 5.0e-5
    lr = task.tune.search_space["lr"]
    assert (lr.low, lr.high) == (1.0e-4, 1.0e-2)
    assert isinstance(lr.low, float) and isinstance(lr.high, float)


def make_multiclass(raw: dict) -> None:
    task = adult(raw)
    task["problem"] = "multiclass"
    del task["positive_label"]


def woe_on_multiclass(raw: dict) -> None:
    make_multiclass(raw)
    adult(raw)["features"]["encoders"] = {"native-country": "woe"}


def woe_on_regression(raw: dict) -> None:
    task = adult(raw)
    task.update(problem="regression", target="hours-per-week", metric="rmse")
    del task["positive_label"]
    task["features"]["encoders"] = {"native-country": "woe"}


def target_encoder_on_multiclass(raw: dict) -> None:
    make_multiclass(raw)  # params.yaml has native-country: target


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda r: adult(r).update(target="salary"), ["tasks.adult:", "target 'salary' is not a column"]),
        (
            lambda r: adult(r)["schema"]["columns"]["income"].update(categories=["<=50K", ">50K", "unknown"]),
            ["tasks.adult:", "binary task needs exactly 2 categories for target 'income'"],
        ),
        (
            lambda r: adult(r)["features"]["encoders"].update(age="target"),
            ["features.encoders.age: not a categorical feature column", "categorical columns: education,"],
        ),
        (woe_on_multiclass, ["tasks.adult:", "['woe']", "need a binary or numeric target"]),
        (woe_on_regression, ["tasks.adult:", "woe encoder needs a binary target"]),
        (target_encoder_on_multiclass, ["['target']", "multiclass"]),
        (
            lambda r: adult(r)["features"].update(default_encoder="catboost"),
            ["tasks.adult.features.default_encoder:", "'catboost'", "'onehot'"],
        ),
        (
            lambda r: adult(r)["features"]["encoders"].update({"native-country": "catboost"}),
            ["tasks.adult.features.encoders.native-country:", "'catboost'"],
        ),
        (
            lambda r: adult(r)["features"].update(scaler="log"),
            [
                "tasks.adult.features.scaler:",
                "'standard', 'minmax', 'robust', 'robust_clip', 'quantile', 'quantile_noise' or 'none'",
                "'log'",
            ],
        ),
        (
            lambda r: adult(r)["source"].update(path="data/adult.csv"),
            ["tasks.adult.source:", "exactly one of 'builtin'", "or 'path'"],
        ),
        (lambda r: adult(r).update(source={}), ["tasks.adult.source:", "exactly one of 'builtin'"]),
        (
            lambda r: adult(r).update(source={"path": "data/adult.txt"}),
            ["tasks.adult.source:", "'data/adult.txt' must be a .csv or .parquet table"],
        ),
        (lambda r: adult(r).update(positive_label="rich"), ["positive_label 'rich' is not one of"]),
        (lambda r: adult(r).update(problem="regression"), ["target 'income' of a regression task must be numeric"]),
        (lambda r: adult(r).update(metric="rmse"), ["metric 'rmse' is for regression"]),
        (
            lambda r: adult(r)["model"].update(loss="huber"),
            ["loss 'huber' is not for binary tasks", "logistic, hinge, kl"],
        ),
        (lambda r: r["tasks"].update({"Adult Copy": adult(r)}), ["task name 'Adult Copy'"]),
        (lambda r: adult(r)["registry"].update(test="mcnemar"), ["'mcnemar' compares accuracy"]),
        (lambda r: adult(r).update(family="lstm"), ["family 'lstm' needs one of features.series"]),
        (lambda r: adult(r).update(family="cnn"), ["the built-in 'adult' dataset goes with family 'ann'"]),
        (
            lambda r: adult(r)["features"].update(text={"column": "education"}),
            ["features.text goes with family 'lstm'"],
        ),
        (
            lambda r: r["tasks"]["digits"]["model"].update(units=64),
            ["tasks.digits:", "model.units: the cnn family does not use units", "n_blocks, filters"],
        ),
        (
            lambda r: adult(r)["tune"]["search_space"].update(hidden_size={"choices": [32, 64]}),
            ["tasks.adult:", "tune.search_space.hidden_size: the ann family does not use hidden_size"],
        ),
        (lambda r: adult(r)["registry"].update(confidence=1.0), ["registry.confidence:", "less than 1"]),
        (lambda r: adult(r)["registry"].update(min_improvement=-0.1), ["registry.min_improvement:"]),
        (
            lambda r: adult(r).update(source={"path": "/tmp/adult.csv"}),
            ["tasks.adult.source.path:", "'/tmp/adult.csv' is not under data/", "data/sources/<file>"],
        ),
        (
            lambda r: adult(r).update(source={"path": "data/../../adult.csv"}),
            ["tasks.adult.source.path:", "is not under data/"],
        ),
        (
            lambda r: adult(r)["tune"].update(storage="postgresql://tuner:pa'ss word@db/optuna"),
            ["tasks.adult.tune.storage:", "holds a password", "PGPASSWORD", "postgresql://tuner:***@db/optuna"],
        ),
    ],
    ids=[
        "target_missing",
        "binary_with_3_categories",
        "encoder_for_numeric_column",
        "woe_on_multiclass",
        "woe_on_regression",
        "target_encoder_on_multiclass",
        "unknown_default_encoder",
        "unknown_column_encoder",
        "unknown_scaler",
        "builtin_and_path",
        "no_source",
        "txt_path",
        "positive_label_not_a_category",
        "regression_on_category",
        "regression_metric_on_binary",
        "loss_on_classification",
        "bad_task_name",
        "mcnemar_on_roc_auc",
        "lstm_without_series_or_text",
        "cnn_on_adult",
        "text_settings_on_ann",
        "mlp_units_on_cnn",
        "lstm_hidden_size_searched_on_ann",
        "confidence_of_one",
        "negative_min_improvement",
        "absolute_source",
        "source_climbing_out",
        "password_in_storage",
    ],
)
def test_inconsistent_task_is_a_clear_error(raw: dict, edit: Callable[[dict], None], fragments: list[str]) -> None:
    edit(raw)
    text = problem_text(raw)
    assert "1 problem(s)" in text
    for fragment in fragments:
        assert fragment in text


def test_unknown_task_names_the_known_ones(raw: dict) -> None:
    raw["tasks"]["adult-small"] = copy.deepcopy(adult(raw))
    settings = parse_settings(raw)
    with pytest.raises(ModelyardError, match="no task 'nope'") as info:
        settings.task("nope")
    assert info.value.hint == "use one of: adult, digits, co2, adult-small"


def test_missing_params_file_is_a_modelyard_error(tmp_path: Path) -> None:
    with pytest.raises(ModelyardError, match="not found") as info:
        load_settings(tmp_path / "params.yaml")
    assert "--params" in info.value.hint


def test_invalid_yaml_is_a_modelyard_error_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ntasks:\n  adult: {source: [unclosed\n")
    with pytest.raises(ModelyardError, match="is not valid YAML") as info:
        load_settings(path)
    assert "line 3, column 19" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"], ids=["empty", "list", "scalar"])
def test_params_that_are_not_a_mapping_are_a_modelyard_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ModelyardError, match="must hold a mapping with a 'tasks:' section"):
        load_settings(path)


def test_missing_tasks_section_is_named() -> None:
    with pytest.raises(ModelyardError, match="tasks: Field required"):
        parse_settings({"seed": 1})


def test_parse_gives_settings_with_defaults(raw: dict) -> None:
    del raw["device"]
    settings = parse_settings(raw)
    assert isinstance(settings, Settings)
    assert settings.device == "auto"
    assert settings.task("adult").model.loss == "auto"


@pytest.mark.parametrize(
    ("family", "kind", "fields", "absent"),
    [
        ("ann", "tabular", {"units", "n_layers", "numeric_embedding"}, {"filters", "hidden_size", "flip", "momentum"}),
        ("cnn", "images", {"n_blocks", "filters", "flip"}, {"units", "hidden_size", "numeric_embedding"}),
        ("lstm", "text", {"arch", "hidden_size", "embed_dim"}, {"units", "n_blocks", "filters"}),
    ],
)
def test_a_run_logs_only_its_familys_hyperparameters(family: str, kind: str, fields: set, absent: set) -> None:
    logged = Hyperparams(arch="lstm" if family == "lstm" else "auto").of_family(family, "binary", kind)
    assert fields | {"lr", "batch_size", "dropout", "label_smoothing"} <= set(logged)
    assert not absent & set(logged)
    assert "momentum" in Hyperparams(optimizer="sgd").of_family(family, "binary", kind)
    assert "label_smoothing" not in Hyperparams().of_family(family, "regression", kind)
    periodic = Hyperparams(numeric_embedding="periodic").of_family("ann", "binary", "tabular")
    assert {"n_frequencies", "frequency_scale", "numeric_embed_dim"} <= set(periodic) and "n_bins" not in periodic


def test_params_rewritten_by_dvc_keep_yes_and_no_as_text(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2 and drops the quotes of 'yes' / 'no'."""
    text = yaml.safe_dump({"seed": 0, "device": "cpu", "tasks": {"toy": TOY_TASK}}).replace("'yes'", "yes")
    text = text.replace("'no'", "no")
    assert "- yes" in text and "positive_label: yes" in text
    (tmp_path / "params.yaml").write_text(text)
    task = load_settings(tmp_path / "params.yaml").task("toy")
    assert task.positive_label == "yes" and list(task.schema_.columns["label"].categories) == ["no", "yes"]


@pytest.mark.parametrize(("written", "read"), [("off", "off"), ("auto", "auto"), ("8", 8)])
def test_tune_fuse_reads_as_written_in_yaml(raw: dict, written: str, read: object) -> None:
    """A bare `off` is YAML's false: it still means off."""
    raw["tasks"]["adult"]["tune"]["fuse"] = yaml.safe_load(written)
    assert parse_settings(raw).tasks["adult"].tune.fuse == read
