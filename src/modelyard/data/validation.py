"""Check a task's raw frame against the schema declared in params.yaml, with Great Expectations.

`build_expectations` turns `tasks.<task>.schema` into GX expectations; `validate_frame` runs them
on an in-memory frame (an ephemeral GX context, nothing written unless `docs_dir` is given) and
returns a `ValidationReport` a person can read. Great Expectations is imported inside the
functions: its import takes seconds, and importing this module must stay cheap and side-effect free.

Column types, as checked:
- `integer` and `number` both mean a numeric dtype (any int, uint or float width, or pandas'
  nullable Int/Float dtypes). An integer column with a missing value reads as float64, so
  `integer` accepts floats; it does not check that each value is a whole number.
- `category` means text: dtype `str` under pandas 3 (`sources.conform` reads category columns as
  text). GX's `ExpectColumnValuesToBeOfType(type_="str")` is the check that passes on it.

Columns the schema does not declare are not checked; that includes the marker column ingest
adds for a test file (`sources.SPLIT_MARKER`). A split column (`split.column`, or that marker)
must mark every row train, val or test, with at least one train and one test row.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from modelyard.config import TaskSettings
from modelyard.data.sources import SPLIT_VALUES, split_marker
from modelyard.errors import DataRejected
from modelyard.files import atomic_path

N_EXAMPLES = 5
# Numbers train in float32: beyond this magnitude a value (or its square, in scaling) is
# infinite or all precision is gone, so it is an error in the data, not a value to learn from.
MAX_MAGNITUDE = 1e18
PIXEL_MAX = 255
BLANK = r"^\s*$"
DATETIME_TYPES = ["datetime64", "datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]", "Timestamp"]
# Names GX's pandas type check resolves (numpy dtypes, pandas nullable dtypes, python types).
NUMERIC_TYPES = [
    *(f"int{b}" for b in (8, 16, 32, 64)),
    *(f"uint{b}" for b in (8, 16, 32, 64)),
    *(f"float{b}" for b in (16, 32, 64)),
    *(f"Int{b}Dtype" for b in (8, 16, 32, 64)),
    *(f"UInt{b}Dtype" for b in (8, 16, 32, 64)),
    "Float32Dtype",
    "Float64Dtype",
    "int",
    "float",
]


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one frame: one entry in `failures` per failed expectation."""

    success: bool
    n_expectations: int
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth knowing that fail nothing

    def to_dict(self) -> dict:
        """A JSON-serialisable summary."""
        return {
            "success": self.success,
            "n_expectations": self.n_expectations,
            "n_failed": len(self.failures),
            "failures": self.failures,
            "notes": self.notes,
        }

    def describe(self) -> str:
        """The failed expectations, one line each, for a terminal."""
        if self.success:
            return f"data passed all {self.n_expectations} expectations"
        lines = [f"data failed {len(self.failures)} of {self.n_expectations} expectations:"]
        for failure in self.failures:
            where = failure["column"] if failure["column"] is not None else "table"
            line = f"  - {where}: {failure['problem']}"
            if failure["examples"]:
                line += " (e.g. " + ", ".join(json.dumps(v) for v in failure["examples"]) + ")"
            lines.append(line)
        return "\n".join(lines)


class ValidationFailed(DataRejected):
    """Raised by callers when a task's data does not match its declared schema (exit code 3)."""

    def __init__(self, report: ValidationReport, task_name: str) -> None:
        super().__init__(
            report.describe(),
            f"fix the data, or if the data is right, the schema in params.yaml (tasks.{task_name}.schema)",
        )
        self.report = report
        self.task_name = task_name


def build_expectations(task: TaskSettings) -> list:
    """The GX expectations that the task's declared schema and target imply."""
    import great_expectations as gx

    exp = gx.expectations
    schema = task.schema_
    expectations: list = [exp.ExpectTableRowCountToBeBetween(min_value=schema.rows.min, max_value=schema.rows.max)]
    for name, column in schema.columns.items():
        expectations.append(exp.ExpectColumnToExist(column=name))
        if column.type in ("category", "text"):
            expectations.append(exp.ExpectColumnValuesToBeOfType(column=name, type_="str"))
        elif column.type == "datetime":
            expectations.append(exp.ExpectColumnValuesToBeInTypeList(column=name, type_list=DATETIME_TYPES))
        else:
            expectations.append(exp.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_TYPES))
            expectations.append(
                exp.ExpectColumnValuesToBeBetween(column=name, min_value=-MAX_MAGNITUDE, max_value=MAX_MAGNITUDE)
            )
        if column.type == "text":
            expectations.append(exp.ExpectColumnValuesToNotMatchRegex(column=name, regex=BLANK))
        if column.min is not None or column.max is not None:
            expectations.append(
                exp.ExpectColumnValuesToBeBetween(column=name, min_value=column.min, max_value=column.max)
            )
        if column.categories is not None:
            expectations.append(exp.ExpectColumnValuesToBeInSet(column=name, value_set=list(column.categories)))
        # A target may have no nulls, except a series' values: a missing week is a gap to impute.
        # Nor may a split column: a row with no split belongs nowhere.
        never_null = (name == task.target and task.kind != "series") or name == task.split.column
        mostly = 1.0 if never_null else 1.0 - column.max_null_fraction
        if mostly >= 1.0:
            expectations.append(exp.ExpectColumnValuesToNotBeNull(column=name))
        elif mostly > 0.0:
            expectations.append(exp.ExpectColumnValuesToNotBeNull(column=name, mostly=mostly))
    return expectations + _kind_expectations(task)


def _kind_expectations(task: TaskSettings) -> list:
    """Checks the task's kind adds: two classes at least for a classifier; image shape and
    value range, one row at least per declared category, time in increasing order."""
    import great_expectations as gx

    exp = gx.expectations
    found: list = []
    if task.kind == "images":
        for name in ("height", "width", "channels"):
            found.append(exp.ExpectColumnUniqueValueCountToBeBetween(column=name, min_value=0, max_value=1))
            declared = getattr(task.schema_.image, name, None)
            if declared is not None:
                found.append(exp.ExpectColumnValuesToBeBetween(column=name, min_value=declared, max_value=declared))
        found.append(exp.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0))
        found.append(exp.ExpectColumnValuesToBeBetween(column="pixel_max", max_value=PIXEL_MAX))
    if task.problem != "regression":  # a classifier learns nothing from one class
        found.append(exp.ExpectColumnUniqueValueCountToBeBetween(column=task.target, min_value=2))
    categories = task.schema_.columns[task.target].categories
    if task.kind in ("images", "text") and categories:
        found.append(exp.ExpectColumnDistinctValuesToContainSet(column=task.target, value_set=list(categories)))
    if task.kind == "series":
        found.append(exp.ExpectColumnValuesToBeIncreasing(column=task.schema_.time, strictly=True))
    marker = split_marker(task)
    if marker is not None:
        found.append(exp.ExpectColumnValuesToBeInSet(column=marker, value_set=list(SPLIT_VALUES)))
        found.append(exp.ExpectColumnDistinctValuesToContainSet(column=marker, value_set=["train", "test"]))
    return found


def describe_data(frame: pd.DataFrame, task: TaskSettings) -> list[str]:
    """Notes for the report: missing values per column, class counts, gaps in a series."""
    notes = []
    for name in task.schema_.columns:
        n_missing = int(frame[name].isna().sum()) if name in frame.columns else 0
        if n_missing and (name != task.target or task.kind == "series"):
            notes.append(f"{name}: {n_missing} missing value(s) ({n_missing / len(frame):.1%})")
    if task.problem != "regression" and task.target in frame.columns:
        counts = frame[task.target].value_counts().sort_index()
        notes.append("class counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    marker = split_marker(task)
    if marker in frame.columns:
        counts = frame[marker].value_counts()
        notes.append("rows per split: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in SPLIT_VALUES))
    time = task.schema_.time
    times = frame[time].dropna() if task.kind == "series" and time in frame.columns else None
    if times is not None and len(times) > 1 and times.is_unique:
        from modelyard.data.series import regularize, time_step

        gaps = len(regularize(frame[[time]], time, time_step(frame[time], task.schema_.frequency))) - len(frame)
        if gaps > 0:
            notes.append(f"{time}: {gaps} missing time step(s) between the first and the last time")
        if notes:
            notes.append("featurize fills gaps by time interpolation; windows whose targets were missing are left out")
    return notes


def validate_frame(frame: pd.DataFrame, task: TaskSettings, docs_dir: Path | None = None) -> ValidationReport:
    """Run the task's expectations on `frame`; with `docs_dir`, also write the GX Data Docs site there.

    Expectations about a column the frame lacks are not run: the missing column is reported once.
    An expectation that GX cannot evaluate on a column that already failed (a range check on a
    text column) is left out of the report as a consequence of that failure.
    """
    import great_expectations as gx

    present = {None, *frame.columns}
    expectations = [
        e
        for e in build_expectations(task)
        if isinstance(e, gx.expectations.ExpectColumnToExist) or getattr(e, "column", None) in present
    ]
    run_id = uuid.uuid4().hex[:12]
    with _docs_staging(docs_dir) as staging_dir, _quiet_gx():
        context = gx.get_context(mode="ephemeral", project_config=_context_config(staging_dir))
        batch = (
            context.data_sources.add_pandas(f"frame-{run_id}")
            .add_dataframe_asset(f"frame-{run_id}")
            .add_batch_definition_whole_dataframe(f"whole-{run_id}")
        )
        suite = context.suites.add(gx.ExpectationSuite(name=f"schema-{run_id}", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{run_id}", data=batch, suite=suite)
        )
        if staging_dir is None:
            result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        else:
            checkpoint = context.checkpoints.add(
                gx.Checkpoint(
                    name=f"checkpoint-{run_id}",
                    validation_definitions=[definition],
                    actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                    result_format={"result_format": "SUMMARY"},
                )
            )
            outcome = checkpoint.run(batch_parameters={"dataframe": frame})
            result = next(iter(outcome.run_results.values()))
    failures = _failures(result.results, frame, task)
    return ValidationReport(
        success=not failures,
        n_expectations=len(result.results),
        failures=failures,
        notes=describe_data(frame, task),
    )


@contextmanager
def _quiet_gx() -> Iterator[None]:
    """Silence GX's logging for one validation (progress bars and analytics are off in its config)."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _context_config(docs_dir: Path | None) -> Any:
    """An in-memory context with no analytics and no progress bars; one local docs site if asked."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )


@contextmanager
def _docs_staging(docs_dir: Path | None) -> Iterator[Path | None]:
    """Where GX writes the Data Docs site: a temporary sibling moved into place on success."""
    if docs_dir is None:
        yield None
        return
    with atomic_path(Path(docs_dir)) as staging:
        staging.mkdir()
        yield staging


def _failures(results: list, frame: pd.DataFrame, task: TaskSettings) -> list[dict]:
    pairs = [(r, _failure(r, frame, task)) for r in results if not r.success]
    # A check GX could not evaluate on a column that already failed (range on text) adds nothing.
    failed_columns = {f["column"] for r, f in pairs if not _raised(r)}
    return [f for r, f in pairs if not (_raised(r) and f["column"] in failed_columns)]


def _raised(result: Any) -> bool:
    return _exception_message(result) is not None


def _exception_message(result: Any) -> str | None:
    info = result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error").strip().splitlines()[-1]
    return None


def _failure(result: Any, frame: pd.DataFrame, task: TaskSettings) -> dict:
    config = result.expectation_config
    kind = config.type
    kwargs = config.kwargs
    column = kwargs.get("column")
    info = result.result or {}
    # Distinct offending values, most frequent first.
    examples = [_json_safe(c["value"]) for c in info.get("partial_unexpected_counts", [])][:N_EXAMPLES]
    count = info.get("unexpected_count")
    share = f"{count} value(s) ({info.get('unexpected_percent', 0.0):.3g}%)"
    error = _exception_message(result)
    marker = split_marker(task)
    if error is not None:
        problem = f"could not be checked ({kind}): {error}"
    elif kind == "expect_column_to_exist":
        problem = f"column {column!r} is missing"
    elif kind == "expect_column_values_to_be_in_type_list" and task.schema_.columns[column].type == "datetime":
        problem = f"expected dates, found {_observed_type(info, 'non-date')} values"
    elif kind == "expect_column_values_to_be_in_type_list":
        problem = f"expected numbers, found {_observed_type(info, 'non-numeric')} values"
        numbers = pd.to_numeric(frame[column], errors="coerce")
        examples = [_json_safe(v) for v in frame[column][numbers.isna() & frame[column].notna()].unique()[:N_EXAMPLES]]
    elif kind == "expect_column_values_to_be_of_type":
        problem = f"expected text, found {_observed_type(info, 'non-text')} values"
    elif kind == "expect_column_values_to_not_match_regex":
        problem = f"{share} are empty or blank texts"
    elif kind == "expect_column_values_to_be_increasing":
        problem = f"{share} are not later than the row before (times must increase, without repeats)"
    elif kind == "expect_column_unique_value_count_to_be_between" and column == task.target:
        problem = (
            f"the target has {info.get('observed_value')} class(es) in the data; "
            f"a {task.problem} classifier needs rows of at least two"
        )
    elif kind == "expect_column_unique_value_count_to_be_between":
        problem = f"the images come in {info.get('observed_value')} different {column}s; give images of one size"
    elif kind == "expect_column_distinct_values_to_contain_set":
        # GX's SUMMARY result lists the absent values and may leave observed_value out.
        absent = info.get("partial_missing_list")
        absent = absent or sorted(set(kwargs.get("value_set", [])) - set(info.get("observed_value") or []))
        if column == marker:
            problem = f"no row is marked {' or '.join(map(str, absent))}; a fixed split needs train and test rows"
        else:
            problem = f"declared class(es) with no rows: {', '.join(map(str, absent))}"
    elif kind == "expect_column_values_to_be_between" and kwargs.get("max_value") == MAX_MAGNITUDE:
        problem = f"{share} are infinite or beyond ±{MAX_MAGNITUDE:.0e}, too large to train on"
    elif kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"[{_num(low)}, {_num(high)}]" if low is not None and high is not None else None
        bounds = bounds or (f">= {_num(low)}" if low is not None else f"<= {_num(high)}")
        problem = f"{share} outside the allowed range {bounds}"
    elif kind == "expect_column_values_to_be_in_set" and column == marker and kwargs["value_set"] == list(SPLIT_VALUES):
        problem = f"{share} are not train, val or test"
    elif kind == "expect_column_values_to_be_in_set":
        problem = f"{share} not among the declared categories"
    elif kind == "expect_column_values_to_not_be_null":
        rows = ", ".join(str(_json_safe(i)) for i in info.get("partial_unexpected_index_list", [])[:N_EXAMPLES])
        where = f"; first at rows {rows}" if rows else ""
        if column == task.target:
            problem = f"the target has {count} null value(s) and may have none{where}"
        elif column == marker:
            problem = f"{count} row(s) have no split and may have none; mark each row train, val or test{where}"
        else:
            allowed = task.schema_.columns[column].max_null_fraction
            limit = f"at most {allowed * 100:.3g}% allowed" if allowed else "none allowed"
            problem = f"{share} are null; {limit}{where}"
        examples = []
    elif kind == "expect_table_row_count_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        wanted = f"between {low} and {high}" if high is not None else f"at least {low}"
        problem = f"{info.get('observed_value')} rows; expected {wanted}"
    else:
        problem = f"{kind} failed"
    return {"expectation": _type_name(kind), "column": column, "problem": problem, "examples": examples}


def _type_name(snake: str) -> str:
    """GX's class name for an expectation type: expect_column_to_exist -> ExpectColumnToExist."""
    return "".join(part.capitalize() for part in snake.split("_"))


def _observed_type(info: dict, default: str) -> str:
    observed = str(info.get("observed_value", default))
    return {"str": "text", "bool_": "true/false", "object_": "mixed"}.get(observed, observed)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _json_safe(value: Any) -> Any:
    """A value JSON can hold: numpy scalars become Python ones, missing values None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with suppress(ValueError, TypeError):
            value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value if math.isfinite(value) else str(value)
    if isinstance(value, (bool, int, str)):
        return value
    return str(value)
