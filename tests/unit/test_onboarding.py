"""`modelyard add`: what is inferred from a table, and how params.yaml is edited."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.cli import main
from modelyard.config import load_settings
from modelyard.errors import ModelyardError
from modelyard.onboarding import add_task, column_schema, infer_task

PARAMS = """seed: 0   # the seed of every stage

# tasks below
tasks:
  existing:
    source: {path: data/sources/old.csv}
    target: y
    problem: regression
    family: ann
    metric: rmse
    schema:
      columns:
        x: {type: number}
        y: {type: number}
    split: {}
    features: {}
    model: {}
    tune: {}
    train: {}
    registry: {}

device: cpu   # a key after the tasks block
"""


def customers(n_rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(5000, 5000 + n_rows)),
            "email": [f"user{i}@example.org" for i in range(n_rows)],
            "plan": rng.choice(["basic", "pro", "team"], n_rows),
            "city": rng.choice([f"city{i}" for i in range(30)], n_rows),
            "tenure": rng.integers(0, 60, n_rows),
            "fee": rng.normal(20, 5, n_rows).round(2),
            "signup": pd.date_range("2024-01-01", periods=n_rows, freq="D").astype(str),
        }
    )
    frame.loc[::10, "fee"] = np.nan
    frame["churned"] = np.where(frame["tenure"] < 15, "yes", "no")
    return frame


def test_columns_get_their_types_levels_bounds_and_null_margins() -> None:
    frame = customers()
    assert column_schema(frame["plan"]) == {"type": "category", "categories": ["basic", "pro", "team"]}
    assert column_schema(frame["tenure"]) == {"type": "integer", "min": 0}
    fee = column_schema(frame["fee"])
    assert fee["type"] == "number" and fee["max_null_fraction"] == 0.17  # 10% seen: 1.5 x 0.1 + 0.01, rounded up
    assert column_schema(frame["signup"]) == {"type": "datetime"}
    assert column_schema(pd.Series([f"level{i}" for i in range(80)] * 2)) == {"type": "category"}  # no closed list
    assert column_schema(pd.Series(["a long review of the product, six words"] * 3)) == {"type": "text"}


def test_a_table_task_leaves_out_identifiers_and_encodes_many_levels_by_target() -> None:
    inferred = infer_task(customers(), "data/sources/c.csv", "churned", None, None)
    entry = inferred.entry
    assert entry["problem"] == "binary" and entry["positive_label"] == "yes"  # the rarer class
    assert entry["family"] == "ann" and entry["metric"] == "accuracy"
    assert "customer_id" not in entry["schema"]["columns"] and "email" not in entry["schema"]["columns"]
    assert any("customer_id" in note for note in inferred.notes)
    assert entry["features"]["encoders"] == {"city": "target"}  # 30 levels; plan keeps one-hot
    assert set(entry) >= {"split", "features", "model", "tune", "train", "registry"}  # every DVC section


def test_a_date_column_of_a_table_task_is_said_to_be_no_feature() -> None:
    frame = customers()
    frame["signup"] = frame["signup"].where(frame.index % 3 > 0, "2024-02-01")  # repeated dates: no identifier
    inferred = infer_task(frame, "data/sources/c.csv", "churned", None, None)
    assert inferred.entry["schema"]["columns"]["signup"] == {"type": "datetime"}
    assert any("'signup'" in note and "no feature" in note for note in inferred.notes)


@pytest.mark.parametrize(
    ("values", "problem"),
    [([1, 2, 3, 4] * 30, "multiclass"), (list(np.linspace(0, 1, 120)), "regression"), ([0, 1] * 60, "binary")],
)
def test_the_problem_follows_the_target(values: list, problem: str) -> None:
    frame = customers().assign(y=values)
    assert infer_task(frame, "c.csv", "y", None, None).entry["problem"] == problem


def test_a_free_text_column_makes_a_text_task() -> None:
    frame = pd.DataFrame(
        {
            "review": [f"this film was {w} and I would watch it again" for w in ["great", "dull"] * 40],
            "stars": [5, 1] * 40,
        }
    )
    entry = infer_task(
        frame.assign(sentiment=np.where(frame["stars"] > 3, "pos", "neg")), "r.csv", "sentiment", None, None
    ).entry
    assert entry["family"] == "lstm" and entry["features"] == {"text": {"column": "review"}}
    assert set(entry["schema"]["columns"]) == {"review", "sentiment"}


def test_add_inserts_the_task_and_changes_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    source = tmp_path / "elsewhere" / "customers.csv"
    source.parent.mkdir()
    customers().to_csv(source, sep=";", index=False)
    assert (
        main(
            [
                "add",
                "churn",
                "--source",
                str(source),
                "--target",
                "churned",
                "--dry-run",
                "--params",
                str(tmp_path / "params.yaml"),
            ]
        )
        == 0
    )
    assert (tmp_path / "params.yaml").read_text() == PARAMS  # a dry run writes nothing
    assert (
        main(
            ["add", "churn", "--source", str(source), "--target", "churned", "--params", str(tmp_path / "params.yaml")]
        )
        == 0
    )
    text = (tmp_path / "params.yaml").read_text()
    before, after = PARAMS.split("\ndevice: cpu")
    assert text.startswith(before) and text.endswith("\ndevice: cpu" + after)  # comments and keys kept
    settings = load_settings(tmp_path / "params.yaml")
    assert list(settings.tasks) == ["existing", "churn"]
    assert settings.task("churn").source.path == "data/sources/customers.csv"
    assert (tmp_path / "data" / "sources" / "customers.csv").read_bytes() == source.read_bytes()
    assert yaml.safe_load(text)["device"] == "cpu"


def test_add_refuses_a_taken_name_and_an_unknown_target(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS)
    source = tmp_path / "data" / "sources" / "c.csv"
    source.parent.mkdir(parents=True)
    customers().to_csv(source, index=False)
    with pytest.raises(ModelyardError, match="already has a task 'existing'"):
        add_task(tmp_path, "existing", source, "churned")
    with pytest.raises(ModelyardError, match="target 'churn' is not a column") as error:
        add_task(tmp_path, "new", source, "churn")
    assert "churned" in error.value.hint
    assert (tmp_path / "params.yaml").read_text() == PARAMS


def test_a_rare_positive_class_is_judged_on_f1() -> None:
    frame = customers(200).assign(bought=["yes" if i % 10 == 0 else "no" for i in range(200)])
    inferred = infer_task(frame.drop(columns="churned"), "c.csv", "bought", None, None)
    assert inferred.entry["positive_label"] == "yes" and inferred.entry["registry"] == {"metric": "f1"}
    balanced = infer_task(customers(), "c.csv", "churned", None, None).entry  # 25% positives
    assert balanced["registry"] == {}


def test_an_image_array_is_added_with_the_labels_file_beside_it(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("tasks: {}\n")
    arrays = tmp_path / "download"
    arrays.mkdir()
    np.save(arrays / "train_x.npy", np.random.default_rng(0).integers(0, 255, (12, 6, 5), dtype=np.uint8))
    np.save(arrays / "train_y.npy", np.array(["cat", "dog"] * 6))
    text, _ = add_task(tmp_path, "pets", arrays / "train_x.npy", None)
    entry = yaml.safe_load(text)["pets"]
    assert entry["family"] == "cnn" and entry["problem"] == "binary"
    assert entry["source"] == {"path": "data/sources/train_x.npy", "labels": "data/sources/train_y.npy"}
    assert entry["schema"]["image"] == {"height": 6, "width": 5, "channels": 1}
    assert (tmp_path / "data" / "sources" / "train_y.npy").is_file()  # both files copied
    assert load_settings(tmp_path / "params.yaml").task("pets").kind == "images"


def test_a_file_that_is_neither_table_nor_images_says_what_add_takes(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not data\n")
    with pytest.raises(ModelyardError, match=r"not a \.csv / \.parquet table") as info:
        add_task(tmp_path, "notes", tmp_path / "notes.txt", "y")
    assert "--labels" in info.value.hint
