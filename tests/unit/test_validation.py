"""Schema validation with Great Expectations, on tiny frames built in memory.

Each GX run is shared by a module-scoped fixture: one good frame, one frame with bad values,
one frame with the wrong shape.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.config import TaskSettings, parse_settings
from modelyard.data.validation import ValidationFailed, ValidationReport, validate_frame
from modelyard.errors import ModelyardError


@pytest.fixture(scope="module")
def task() -> TaskSettings:
    schema = {
        "rows": {"min": 3, "max": 100},
        "columns": {
            "age": {"type": "integer", "min": 0, "max": 120},
            "score": {"type": "number", "min": 0.0, "max": 1.0, "max_null_fraction": 0.25},
            "color": {"type": "category", "categories": ["red", "blue"], "max_null_fraction": 0.5},
            # The target may never be null, whatever its max_null_fraction says.
            "label": {"type": "category", "categories": ["no", "yes"], "max_null_fraction": 0.5},
        },
    }
    raw = {"tasks": {"t": {"source": {"path": "data/t.csv"}, "target": "label", "problem": "binary", "schema": schema}}}
    return parse_settings(raw).task("t")


def failures_by_column(report: ValidationReport) -> dict[str | None, list[dict]]:
    found: dict[str | None, list[dict]] = {}
    for failure in report.failures:
        found.setdefault(failure["column"], []).append(failure)
    return found


@pytest.fixture(scope="module")
def good(task, tmp_path_factory):
    """A frame that fits the schema, nulls within their allowances; Data Docs written over a stale site."""
    frame = pd.DataFrame(
        {
            "age": [25, 40, 61, 33],
            "score": [0.1, np.nan, 0.5, 1.0],
            "color": ["red", None, "blue", "red"],
            "label": ["no", "yes", "no", "yes"],
        }
    )
    docs_dir = tmp_path_factory.mktemp("good") / "docs"
    docs_dir.mkdir()
    (docs_dir / "stale.html").write_text("from an older run")
    return validate_frame(frame, task, docs_dir=docs_dir), docs_dir


@pytest.fixture(scope="module")
def bad_values(task) -> ValidationReport:
    frame = pd.DataFrame(
        {
            "age": [25, -3, 150, 33],
            "score": [0.1, np.nan, np.nan, 0.4],
            "color": ["red", "green", "blue", None],
            "label": ["no", "yes", None, "yes"],
        }
    )
    return validate_frame(frame, task)


@pytest.fixture(scope="module")
def bad_shape(task) -> ValidationReport:
    """Two rows, text in the integer column, the number column missing."""
    frame = pd.DataFrame({"age": ["31", "abc"], "color": ["red", "blue"], "label": ["no", "yes"]})
    return validate_frame(frame, task)


def test_good_frame_passes_and_writes_data_docs(good):
    report, docs_dir = good
    assert report.success, report.describe()
    assert report.failures == []
    assert report.n_expectations > 10
    assert (docs_dir / "index.html").is_file()
    assert not (docs_dir / "stale.html").exists()
    assert [p.name for p in docs_dir.parent.iterdir()] == ["docs"]  # no staging or old copies left behind


def test_missing_column_is_named(bad_shape):
    [failure] = failures_by_column(bad_shape)["score"]
    assert failure["problem"] == "column 'score' is missing"


def test_text_in_numeric_column_fails_with_the_text_shown(bad_shape):
    [failure] = failures_by_column(bad_shape)["age"]  # the range check on text adds no second failure
    assert "expected numbers" in failure["problem"]
    assert failure["examples"] == ["abc"]


def test_too_few_rows_fails(bad_shape):
    [failure] = failures_by_column(bad_shape)[None]
    assert failure["expectation"] == "ExpectTableRowCountToBeBetween"
    assert "2 rows" in failure["problem"]


def test_out_of_range_values_fail_with_examples(bad_values):
    [failure] = failures_by_column(bad_values)["age"]
    assert failure["expectation"] == "ExpectColumnValuesToBeBetween"
    assert "[0, 120]" in failure["problem"]
    assert sorted(failure["examples"]) == [-3, 150]


def test_unknown_category_fails_and_is_listed(bad_values):
    [failure] = failures_by_column(bad_values)["color"]  # the null in color is within its allowance
    assert failure["expectation"] == "ExpectColumnValuesToBeInSet"
    assert failure["examples"] == ["green"]


def test_too_many_nulls_fails(bad_values):
    [failure] = failures_by_column(bad_values)["score"]
    assert failure["expectation"] == "ExpectColumnValuesToNotBeNull"
    assert "50%" in failure["problem"] and "25%" in failure["problem"]


def test_null_target_fails_despite_its_null_allowance(bad_values):
    [failure] = failures_by_column(bad_values)["label"]
    assert failure["expectation"] == "ExpectColumnValuesToNotBeNull"
    assert "target" in failure["problem"]


def test_describe_mentions_each_failed_column(bad_values, bad_shape):
    assert not bad_values.success
    text = bad_values.describe()
    for column in ("age", "score", "color", "label"):
        assert f"- {column}:" in text
    assert "150" in text and '"green"' in text
    assert "- score: column 'score' is missing" in bad_shape.describe()


def test_validation_failed_carries_problems_and_a_fix(bad_values):
    error = ValidationFailed(bad_values, "t")
    assert isinstance(error, ModelyardError)
    assert error.report is bad_values
    text = str(error)
    assert "not among the declared categories" in text
    assert "fix:" in text and "params.yaml" in text and "tasks.t.schema" in text


def test_to_dict_is_json_serialisable(bad_values, bad_shape):
    for report in (bad_values, bad_shape):
        summary = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert summary["success"] is False
        assert summary["n_failed"] == len(report.failures) > 0
        assert summary["n_expectations"] == report.n_expectations


def test_importing_the_module_does_not_import_great_expectations():
    code = "import sys, modelyard.data.validation; sys.exit('great_expectations' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def unbounded_task() -> TaskSettings:
    columns = {"x": {"type": "number"}, "label": {"type": "category", "categories": ["no", "yes"]}}
    entry = {"source": {"path": "data/t.csv"}, "target": "label", "problem": "binary", "schema": {"columns": columns}}
    return parse_settings({"tasks": {"t": entry}}).task("t")


def test_a_one_class_target_and_overflowing_numbers_fail():
    frame = pd.DataFrame({"x": [1.0, np.inf, -1e308, 2.0, 1e19, -np.inf], "label": ["yes"] * 6})
    failures = failures_by_column(validate_frame(frame, unbounded_task()))
    [target] = failures["label"]
    assert target["problem"] == "the target has 1 class(es) in the data; a binary classifier needs rows of at least two"
    [numbers] = failures["x"]
    assert numbers["problem"].startswith("4 value(s)") and "infinite or beyond ±1e+18" in numbers["problem"]


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e18, max_value=1e18), min_size=2, max_size=6),
    st.lists(st.one_of(st.floats(min_value=1.01e18), st.floats(max_value=-1.01e18)), min_size=1, max_size=3),
)
def test_numbers_pass_up_to_the_magnitude_limit_and_fail_beyond(fine: list[float], huge: list[float]):
    task = unbounded_task()
    labels = ["no", "yes"] * 5
    passing = pd.DataFrame({"x": fine, "label": labels[: len(fine)]})
    assert validate_frame(passing, task).success
    failing = pd.DataFrame({"x": fine + huge, "label": labels[: len(fine) + len(huge)]})
    [failure] = failures_by_column(validate_frame(failing, task))["x"]
    assert failure["problem"].startswith(f"{len(huge)} value(s)")
