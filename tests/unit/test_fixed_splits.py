"""Fixed (published) splits: a split column marking train / val / test, or a test file whose
rows are the test split exactly, for tabular and long-format sequence tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.config import TaskSettings, parse_settings
from modelyard.data.sources import SPLIT_MARKER, read_task_frame
from modelyard.data.splitting import split_task
from modelyard.errors import ModelyardError
from modelyard.kinds import kind_of
from tests.conftest import TOY_TASK, toy_frame, toy_params

SEED = 0


def toy_task(**overrides: object) -> TaskSettings:
    return parse_settings(toy_params(**overrides)).task("toy")


def split_column_task() -> TaskSettings:
    """The toy task with a declared split column `part`."""
    schema = {**TOY_TASK["schema"], "columns": {**TOY_TASK["schema"]["columns"], "part": {"type": "category"}}}
    return toy_task(schema=schema, split={"column": "part", "val_size": 0.25})


def marked_frame(with_val: bool) -> pd.DataFrame:
    """The toy rows, the first 60 marked test, the next 40 val (or train), the rest train."""
    frame = toy_frame(300).assign(row=np.arange(300))
    frame["part"] = ["test"] * 60 + ["val" if with_val else "train"] * 40 + ["train"] * 200
    return frame


def split_of(frame: pd.DataFrame, task: TaskSettings):
    """The task's train, validation and test parts, split as the split stage does."""
    return split_task(frame, task, kind_of(task), SEED)


def rows(frame: pd.DataFrame) -> list:
    return sorted(frame["row"].tolist())


def test_split_column_places_rows_as_marked() -> None:
    frame = marked_frame(with_val=True)
    train, val, test = split_of(frame, split_column_task())
    assert rows(test) == list(range(60))
    assert rows(val) == list(range(60, 100))
    assert rows(train) == list(range(100, 300))
    assert all("part" not in part.columns for part in (train, val, test))


def test_split_column_without_val_rows_draws_val_from_train_rows() -> None:
    frame = marked_frame(with_val=False)
    train, val, test = split_of(frame, split_column_task())
    assert rows(test) == list(range(60))
    assert len(val) == 60  # val_size 0.25 of the 240 train rows
    assert sorted(rows(train) + rows(val)) == list(range(60, 300))
    # Stratified: validation keeps the training rows' share of "yes".
    marked_train = frame[frame["part"] == "train"]
    assert (val["label"] == "yes").mean() == pytest.approx((marked_train["label"] == "yes").mean(), abs=0.02)
    assert rows(split_of(frame, split_column_task())[1]) == rows(val)  # seeded


def test_split_column_with_no_test_rows_is_an_error() -> None:
    frame = marked_frame(with_val=True).assign(part=lambda f: f["part"].replace("test", "train"))
    with pytest.raises(ModelyardError, match=r"the test split is empty.*'part'"):
        split_of(frame, split_column_task())


def test_split_column_is_no_feature_and_no_predict_input() -> None:
    from modelyard.bundle import ModelBundle
    from modelyard.config import Hyperparams
    from modelyard.features import TargetCodec, tabular_preprocessor
    from modelyard.models import build_model

    task = split_column_task()
    train = split_of(marked_frame(with_val=True).drop(columns="row"), task)[0]
    preprocessor = tabular_preprocessor(task, seed=SEED)
    assert "part" not in preprocessor.categorical
    codec = TargetCodec(task.problem, classes=["no", "yes"], positive_label="yes").fit(train["label"])
    preprocessor.fit(train.drop(columns="label"), codec.encode(train["label"]))
    hparams = Hyperparams(units=4, n_layers=1)
    bundle = ModelBundle(
        family="ann",
        problem=task.problem,
        hparams=hparams,
        schema=task.schema_,
        target=task.target,
        preprocessor=preprocessor,
        codec=codec,
        network=build_model("ann", preprocessor.input_shape_, 1, hparams).eval(),
    )
    assert bundle.input_columns == ["color", "size", "x1", "x2"]
    raw = toy_frame(5).drop(columns="label")  # no split column
    predictions = bundle.predict(raw)
    assert len(predictions) == 5 and set(predictions["label"]) <= {"no", "yes"}


def write_files(root: Path, path_rows: pd.DataFrame, test_rows: pd.DataFrame) -> None:
    (root / "data").mkdir(exist_ok=True)
    path_rows.to_csv(root / "data" / "train.csv", index=False)
    test_rows.to_csv(root / "data" / "test.csv", index=False)


def test_test_file_rows_are_the_test_split(tmp_path: Path) -> None:
    frame = toy_frame(300).assign(row=np.arange(300))
    write_files(tmp_path, frame.iloc[80:], frame.iloc[:80])
    schema = {**TOY_TASK["schema"], "columns": {**TOY_TASK["schema"]["columns"], "row": {"type": "integer"}}}
    task = toy_task(source={"path": "data/train.csv", "test": "data/test.csv"}, schema=schema)
    raw = read_task_frame(task, tmp_path)
    assert len(raw) == 300
    assert raw[SPLIT_MARKER].value_counts().to_dict() == {"train": 220, "test": 80}
    train, val, test = split_of(raw, task)
    assert rows(test) == list(range(80))
    assert len(val) == 44  # val_size 0.2 of the 220 rows of the data file
    assert sorted(rows(train) + rows(val)) == list(range(80, 300))
    assert all(SPLIT_MARKER not in part.columns for part in (train, val, test))
    expected = frame.iloc[:80].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        test.sort_values("row", ignore_index=True)[list(expected.columns)],
        read_task_frame(toy_task(source={"path": "data/test.csv"}, schema=schema), tmp_path),
    )


def test_test_file_with_other_columns_is_an_error(tmp_path: Path) -> None:
    frame = toy_frame(100)
    write_files(tmp_path, frame.iloc[20:], frame.iloc[:20].rename(columns={"x2": "x_2"}))
    task = toy_task(source={"path": "data/train.csv", "test": "data/test.csv"})
    with pytest.raises(ModelyardError, match=r"test file data/test.csv .* lacks 'x2' and has 'x_2'") as caught:
        read_task_frame(task, tmp_path)
    assert "same header row" in caught.value.hint


def test_test_file_columns_may_come_in_another_order(tmp_path: Path) -> None:
    frame = toy_frame(100)
    write_files(tmp_path, frame.iloc[20:], frame.iloc[:20, ::-1])
    raw = read_task_frame(toy_task(source={"path": "data/train.csv", "test": "data/test.csv"}), tmp_path)
    assert list(raw.columns) == [*frame.columns, SPLIT_MARKER]
    assert (raw[SPLIT_MARKER] == "test").sum() == 20


def sequence_rows(ids: range, seed: int) -> pd.DataFrame:
    """Long-format sequences: 6 steps each, the label follows the level of x0."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in ids:
        label = ["a", "b"][i % 2]
        x0 = rng.normal(1.0 if label == "a" else -1.0, 0.3, 6)
        parts.append(pd.DataFrame({"sid": i, "t": range(6), "x0": x0, "label": label}))
    return pd.concat(parts, ignore_index=True)


def sequence_task(**source: str) -> TaskSettings:
    task = {
        "source": source,
        "target": "label",
        "problem": "binary",
        "family": "lstm",
        "schema": {
            "columns": {
                "sid": {"type": "integer"},
                "t": {"type": "integer"},
                "x0": {"type": "number"},
                "label": {"type": "category", "categories": ["a", "b"]},
            }
        },
        "features": {"sequence": {"id": "sid", "step": "t"}},
        "split": {"val_size": 0.25},
    }
    return parse_settings({"tasks": {"seq": task}}).task("seq")


def test_test_file_of_sequences_is_the_test_split_with_whole_sequences(tmp_path: Path) -> None:
    write_files(tmp_path, sequence_rows(range(40), seed=1), sequence_rows(range(40, 50), seed=2))
    task = sequence_task(path="data/train.csv", test="data/test.csv")
    train, val, test = split_of(read_task_frame(task, tmp_path), task)
    assert sorted(test["sid"].unique()) == list(range(40, 50))
    pd.testing.assert_frame_equal(test, read_task_frame(sequence_task(path="data/test.csv"), tmp_path))
    assert val["sid"].nunique() == 10  # val_size 0.25 of the 40 training sequences
    assert set(train["sid"]).isdisjoint(val["sid"])
    assert sorted({*train["sid"], *val["sid"]}) == list(range(40))
    assert (pd.concat([train, val]).groupby("sid").size() == 6).all()  # every step of a sequence kept together
    assert (val.groupby("sid")["label"].first().value_counts() == 5).all()  # stratified


def test_sequence_ids_shared_by_both_files_are_an_error(tmp_path: Path) -> None:
    write_files(tmp_path, sequence_rows(range(40), seed=1), sequence_rows(range(35, 45), seed=2))
    task = sequence_task(path="data/train.csv", test="data/test.csv")
    with pytest.raises(ModelyardError, match=r"sequence\(s\) 35, 36, .* more than one split") as caught:
        split_of(read_task_frame(task, tmp_path), task)
    assert "ids of their own" in caught.value.hint


@pytest.fixture(scope="module")
def holdout_report():
    """A split column with an unknown value and no test rows, checked by Great Expectations."""
    from modelyard.data.validation import validate_frame

    frame = marked_frame(with_val=True).drop(columns="row")
    frame["part"] = frame["part"].replace("test", "train")
    frame.loc[frame.index[:7], "part"] = "holdout"
    return validate_frame(frame, split_column_task())


def test_validation_rejects_a_split_column_value_outside_train_val_test(holdout_report) -> None:
    from modelyard.data.validation import ValidationFailed

    assert not holdout_report.success
    failures = [f for f in holdout_report.failures if f["column"] == "part"]
    problems = {f["expectation"]: f for f in failures}
    unknown = problems["ExpectColumnValuesToBeInSet"]
    assert unknown["problem"] == "7 value(s) (2.33%) are not train, val or test"
    assert unknown["examples"] == ["holdout"]
    absent = problems["ExpectColumnDistinctValuesToContainSet"]
    assert absent["problem"] == "no row is marked test; a fixed split needs train and test rows"
    error = ValidationFailed(holdout_report, "toy")
    assert error.exit_code == 3
    assert "part: 7 value(s) (2.33%) are not train, val or test" in error.message


def test_validation_passes_a_test_file_marker_it_does_not_declare(tmp_path: Path) -> None:
    from modelyard.data.validation import validate_frame

    frame = toy_frame(100)
    write_files(tmp_path, frame.iloc[20:], frame.iloc[:20])
    task = toy_task(source={"path": "data/train.csv", "test": "data/test.csv"})
    report = validate_frame(read_task_frame(task, tmp_path), task)
    assert report.success, report.describe()
    assert "rows per split: train 80, val 0, test 20" in report.notes


def test_a_train_split_of_one_class_is_rejected_with_exit_3() -> None:
    from modelyard.errors import DataRejected

    frame = marked_frame(with_val=True)
    frame.loc[frame["part"] == "train", "label"] = "no"  # every "yes" sits in val and test
    with pytest.raises(DataRejected, match="the train split holds one class of 'label'") as raised:
        split_of(frame, split_column_task())
    assert raised.value.exit_code == 3
