"""Property-based tests: any CSV file, and any params mapping or YAML text, ends in a
correct result or one clean `ModelyardError`; never another exception, a traceback from
the CLI, or a half-written output."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelyard.cli import main
from modelyard.config import SchemaSettings, Settings, load_settings, parse_settings
from modelyard.data.sources import conform, read_table
from modelyard.errors import ModelyardError
from tests.conftest import REPO, toy_params


def fast(max_examples: int) -> settings:
    """Hypothesis settings: no per-example deadline, no example database left in the repo,
    and the same examples on every run (a CI result does not depend on the draw; set
    HYPOTHESIS_EXPLORE=1 to search new examples)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=not os.environ.get("HYPOTHESIS_EXPLORE"),
    )


# pandas' default missing-value strings: a text cell equal to one of them reads as missing.
NA_STRINGS = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}  # fmt: skip

# Any text UTF-8 can carry, except NUL and a leading byte-order mark (both are refused or stripped).
TEXT = st.characters(codec="utf-8", exclude_characters="\x00\ufeff")


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is shared by all examples of a test)."""
    folder = Path(tempfile.mkdtemp(prefix="modelyard-prop-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- CSV files


def column_names() -> st.SearchStrategy[list[str]]:
    """Unique, non-empty header names: unicode, spaces, numeric- and NA-looking, pandas-mangled."""
    tricky = st.sampled_from(["a", "a.1", "a.2", " ", "a ", "1", "1.0", "nan", "NA", "Unnamed: 0", "é", "名前", "#x"])
    names = st.lists(st.one_of(tricky, st.text(TEXT, min_size=1, max_size=8)), min_size=1, max_size=6)
    # A one-column header of spaces only is a blank line to pandas: it skips it (a known limit).
    return names.map(lambda ns: list(dict.fromkeys(ns))).filter(lambda ns: len(ns) > 1 or ns[0].strip() != "")


CELLS = {
    "int": st.integers(-(2**63), 2**63 - 1),
    "bigint": st.integers(-(2**70), 2**70),  # beyond 64 bits: pandas can give no numeric type
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "text": st.text(TEXT, max_size=10) | st.sampled_from(["a,b", 'say "hi"', "two\nlines", "\r\n", "True", "1"]),
}


@st.composite
def tables(draw: st.DrawFn, min_rows: int = 0) -> tuple[list[str], list[list[Any]]]:
    """A header and rows of typed cells (None = missing); text columns start with a '~' cell
    so pandas keeps them as text."""
    names = draw(column_names())
    kinds = [draw(st.sampled_from(sorted(CELLS))) for _ in names]
    n_rows = draw(st.integers(min_rows, 12))
    columns = []
    for kind in kinds:
        cells = draw(st.lists(st.none() | CELLS[kind], min_size=n_rows, max_size=n_rows))
        if kind == "text" and cells:
            cells[0] = "~" + (cells[0] or "")
        columns.append(cells)
    rows = [list(row) for row in zip(*columns, strict=True)] if n_rows else []
    if len(names) == 1:  # a lone empty or all-space cell is a blank line, which pandas skips
        rows = [row for row in rows if row[0] is None or str(row[0]).strip()]
    return names, rows


def csv_text(names: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return buffer.getvalue()


def matches(read: Any, written: Any) -> bool:
    """Whether a cell read back means what was written."""
    if written is None or (isinstance(written, str) and written in NA_STRINGS):
        return bool(pd.isna(read))
    if isinstance(written, str) or isinstance(read, str):  # text; integers beyond 64 bits stay text
        return read == str(written)
    if isinstance(written, float) and math.isnan(written):
        return math.isnan(read)
    if isinstance(read, float):  # an integer column with gaps reads as float64
        return read == float(written)
    return read == written


def assert_round_trip(frame: pd.DataFrame, names: list[str], rows: list[list[Any]]) -> None:
    assert list(frame.columns) == names
    assert len(frame) == len(rows)
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    for i, row in enumerate(rows):
        for name, written in zip(names, row, strict=True):
            read = frame[name].iloc[i]
            assert matches(read, written), f"row {i} column {name!r}: wrote {written!r}, read {read!r}"
    frame.to_parquet(io.BytesIO(), index=False)  # what ingest does next must work


def assert_clean(error: ModelyardError, path: Path) -> None:
    assert str(path) in error.message and error.hint, str(error)


def read_or_error(data: bytes, folder: Path) -> pd.DataFrame | ModelyardError:
    """read_table on these bytes: a frame, or the ModelyardError it raised (anything else fails the test)."""
    path = folder / "input.csv"
    path.write_bytes(data)
    try:
        return read_table(path)
    except ModelyardError as error:
        assert_clean(error, path)
        return error


@fast(150)
@given(tables())
@example((["a", "a.1"], [[1, 2]]))  # a real column named a.1 is not a duplicate of a
@example((["n"], [[2**64 + 1], [-1]]))  # beyond int64: kept as text, not a parquet OverflowError
@example((["x", "y"], [["~two\nlines", math.inf], ["NA", -math.inf], [None, math.nan]]))
def test_well_formed_csv_round_trips(table: tuple[list[str], list[list[Any]]]) -> None:
    names, rows = table
    with scratch() as folder:
        frame = read_or_error(csv_text(names, rows).encode(), folder)
    assert isinstance(frame, pd.DataFrame), str(frame)
    assert_round_trip(frame, names, rows)


@fast(100)
@given(
    st.lists(st.sampled_from(["a", "a.1", "", " ", "Unnamed: 0", "1", "é"]) | st.text(TEXT, max_size=3), min_size=2),
    st.integers(0, 3),
)
@example(["a", "a"], 1)
@example(["a", "a.1", "a"], 1)
@example(["", "b"], 1)  # what pandas writes for a frame saved with its index
@example(["a", "b", ""], 1)  # a trailing comma on every line
def test_header_names_each_column_once_or_says_which_not(names: list[str], n_rows: int) -> None:
    rows = [[str(i)] * len(names) for i in range(n_rows)]
    with scratch() as folder:
        result = read_or_error(csv_text(names, rows).encode(), folder)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if "" in names:
        assert isinstance(result, ModelyardError) and "gives no name to column" in result.message
    elif duplicated:
        assert isinstance(result, ModelyardError) and "duplicated column names" in result.message
        assert all(repr(name) in result.message for name in duplicated)
    else:
        assert isinstance(result, pd.DataFrame), str(result)
        assert list(result.columns) == names and len(result) == n_rows


ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-32"]


@fast(100)
@given(tables(), st.sampled_from(ENCODINGS))
@example((["café"], [["~naïve"]]), "latin-1")
@example((["a", "b"], [[1, 2]]), "utf-16")
def test_a_file_that_is_not_utf8_is_refused_by_name(table: tuple[list[str], list[list[Any]]], encoding: str) -> None:
    names, rows = table
    text = csv_text(names, rows)
    data = text.encode(encoding, errors="replace")
    with scratch() as folder:
        result = read_or_error(data, folder)
    try:
        same_text = data.decode("utf-8-sig") == text
    except UnicodeDecodeError:
        assert isinstance(result, ModelyardError) and "is not UTF-8 text" in result.message, result
        assert "UTF-8" in result.hint
        return
    if same_text:  # plain ASCII in any of these codecs but UTF-16/32, or a BOM
        assert isinstance(result, pd.DataFrame), str(result)
        assert_round_trip(result, names, rows)


JUNK_PIECES = [b",", b"\n", b"\r\n", b'"', b"a", b"b", b"1", b"-2.5", b"nan", b"inf", b" ", b"\xff", b"\x00"]


@fast(150)
@given(st.binary(max_size=200) | st.lists(st.sampled_from(JUNK_PIECES), max_size=40).map(b"".join))
@example(b"")
@example(b"a,b\n")  # header only
@example(b"a,b\n1,2,3\n4,5\n")  # extra field in the first row: pandas would make it an index
@example(b"a,b\n1,2\n3,4,5\n")
@example(b'a,b\n"unclosed,1\n')
@example(bytes(range(256)))
def test_any_bytes_read_or_fail_cleanly(data: bytes) -> None:
    with scratch() as folder:
        result = read_or_error(data, folder)
    if isinstance(result, pd.DataFrame):
        assert result.index.equals(pd.RangeIndex(len(result)))
        assert all(isinstance(c, str) and c for c in result.columns) and result.columns.is_unique
        result.to_parquet(io.BytesIO(), index=False)


@st.composite
def ragged_tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]], list[int]]:
    """A table and, per row, how many fields to add (> 0) or drop (< 0; one field always stays)."""
    names, rows = draw(tables(min_rows=1))
    changes = draw(st.lists(st.integers(-len(names) + 1, 2), min_size=len(rows), max_size=len(rows)))
    return names, rows, changes


@fast(80)
@given(ragged_tables())
@example((["a", "b"], [[1, 2]], [1]))  # every row one field long: pandas would take column 1 as an index
@example((["a", "b"], [[1, 2], [3, 4]], [1, 0]))
@example((["a", "b", "c"], [[1, 2, 3], [4, 5, 6]], [0, -2]))
def test_ragged_rows_error_when_long_and_read_as_missing_when_short(
    case: tuple[list[str], list[list[Any]], list[int]],
) -> None:
    names, rows, changes = case
    ragged = [row[: len(row) + n] if n < 0 else row + ["~extra"] * n for row, n in zip(rows, changes, strict=True)]
    with scratch() as folder:
        result = read_or_error(csv_text(names, ragged).encode(), folder)
    if any(change > 0 for change in changes):
        assert isinstance(result, ModelyardError), "a row with more fields than the header must not load"
        assert "fields" in result.message
        return
    assert isinstance(result, pd.DataFrame), str(result)
    padded = [row + [None] * (len(names) - len(row)) for row in ragged]
    assert_round_trip(result, names, padded)


def test_high_cardinality_text_column_round_trips(tmp_path: Path) -> None:
    values = [f"id-{i:06d}" for i in range(50_000)]
    path = tmp_path / "wide.csv"
    path.write_text(csv_text(["id", "x"], [[v, i] for i, v in enumerate(values)]))
    frame = read_table(path)
    assert frame["id"].nunique() == len(values) and frame["id"].tolist() == values


# ---------------------------------------------------------------------------- ingest via the CLI


def ingest(data: bytes, columns: dict[str, dict]) -> tuple[int, str, dict[str, bytes]]:
    """`modelyard ingest` on a fresh project whose one task reads these bytes and declares these
    schema columns: the exit code, stderr, and the files left in data/<task>/."""
    with scratch() as root:
        (root / "data" / "sources").mkdir(parents=True)
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        (root / "data" / "sources" / "input.csv").write_bytes(data)
        params = toy_params(source={"path": "data/sources/input.csv"}, schema={"columns": columns})
        params["tasks"]["toy"].update(problem="multiclass", features={}, positive_label=None)
        (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["ingest", "--params", str(root / "params.yaml")])
        task_dir = root / "data" / "toy"
        outputs = {p.name: p.read_bytes() for p in task_dir.iterdir()} if task_dir.exists() else {}
    return code, stderr.getvalue(), outputs


@fast(40)
@given(
    st.one_of(
        tables().map(lambda t: (t, "utf-8")),
        st.tuples(tables(), st.sampled_from(ENCODINGS)),
        st.tuples(st.just(None), st.binary(max_size=100)),
    )
)
@example(((["a", "a"], [[1, 2]]), "utf-8"))
@example(((["n", "c"], [[2**64 + 1, "~x"]]), "utf-8"))
@example((None, b"a,b\n1,2,3\n"))
@example((None, b""))
@example((None, b"a,b\n"))
def test_ingest_writes_all_or_nothing_and_never_a_traceback(case: tuple[Any, Any]) -> None:
    table, encoding = case
    if table is None:
        data, names = encoding, []
    else:
        names, rows = table
        data = csv_text(names, rows).encode(encoding, errors="replace")
    columns = {name: {"type": "category"} for name in [*names[::2], "label"]}
    code, stderr, outputs = ingest(data, columns)
    assert "Traceback" not in stderr
    assert code in (0, 2), stderr
    if code == 2:
        assert stderr.startswith("error: ") and "input.csv" in stderr and "fix: " in stderr, stderr
        assert "raw.parquet" not in outputs
    else:
        assert set(outputs) == {"raw.parquet", "ingest.json"}
        with scratch() as folder:
            (folder / "input.csv").write_bytes(data)
            expected = conform(read_table(folder / "input.csv"), SchemaSettings(columns=columns))
        raw = pd.read_parquet(io.BytesIO(outputs["raw.parquet"]))
        pd.testing.assert_frame_equal(raw, expected)
        assert len(raw) > 0 and (encoding != "utf-8" or list(raw.columns) == names)
    assert not [name for name in outputs if name.startswith(".")], "a temporary file was left behind"


# ---------------------------------------------------------------------------- params


# Keys without control or line-break characters, so each reported problem stays on one line.
KEYS = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=8)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -(2**63) - 1, 10**400, 0, -1]),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["", "1e-3", "nan", "auto", "adam", "category", "tasks", "-1"]),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.integers(), inner, max_size=3),
    max_leaves=8,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if depth % 2 else [value]
    return value


# Hypothesis cannot print ints of over 4300 digits or values nested 1000 deep: those are
# plain tests below.
VALUES = JUNK | st.integers(10, 200).map(nested)


def paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in a params mapping, parents before children."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield (*prefix, i)
            yield from paths(child, (*prefix, i))


BASE = toy_params()
BASE_PATHS = list(paths(BASE))


@st.composite
def broken_params(draw: st.DrawFn) -> tuple[dict, tuple]:
    """The toy params with one thing wrong: a value replaced, a key removed, or a key added."""
    raw = copy.deepcopy(BASE)
    path = draw(st.sampled_from([(), *BASE_PATHS]))
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    target = parent[path[-1]] if path else raw
    if action == "add" and isinstance(target, dict):
        key = draw(KEYS | st.integers() | st.none())
        target[key] = draw(VALUES)
        return raw, (*path, key)
    if action == "remove" and path and isinstance(parent, dict):
        del parent[path[-1]]
    elif path:
        parent[path[-1]] = draw(VALUES)
    else:
        return draw(VALUES | st.just(raw)), ()
    return raw, path


def on_branch(line: str, path: tuple) -> bool:
    """Whether a problem line names a key on the changed key's branch: one of its parents,
    the key itself, or a key below it."""
    if not path:
        return True
    keys = [".".join(str(k) for k in path[:i]) for i in range(1, len(path) + 1)]
    return any(line.startswith(f"  - {k}: ") for k in keys) or line.startswith(f"  - {keys[-1]}.")


@fast(300)
@given(broken_params())
@example(({**BASE, "tasks": {"Bad Name": BASE["tasks"]["toy"]}}, ("tasks", "Bad Name")))
def test_params_parse_or_name_the_broken_key(case: tuple[Any, tuple]) -> None:
    parse_checked(*case)


def parse_checked(raw: Any, path: tuple) -> Settings | ModelyardError:
    """parse_settings' Settings, or its ModelyardError once checked to name only keys on `path`'s branch."""
    try:
        return parse_settings(raw)
    except ModelyardError as error:
        text = error.message
        if not isinstance(raw, dict):
            assert "must hold a mapping with a 'tasks:' section" in text and error.hint
            return error
        problems = text.splitlines()[1:]
        assert text.startswith(f"params.yaml has {len(problems)} problem(s):"), text
        assert problems and all(on_branch(line, path) for line in problems), (path, text)
        return error


def task_with(key: str, value: Any) -> dict:
    return {**BASE, "tasks": {"toy": {**BASE["tasks"]["toy"], key: value}}}


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({**BASE, "seed": 10**5000}, ("seed",)),
        ({**BASE, "device": -(10**5000)}, ("device",)),
        (task_with("target", nested(3000)), ("tasks", "toy", "target")),
        (task_with("tune", {"search_space": {"units": {"choices": [nested(3000)]}}}), ("tasks", "toy", "tune")),
        (task_with("model", nested(3001)), ("tasks", "toy", "model")),
    ],
    ids=["seed_5000_digits", "device_5000_digits", "target_nested_3000", "choice_nested_3000", "model_nested_3001"],
)
def test_huge_and_deeply_nested_values_name_their_key(raw: dict, path: tuple) -> None:
    assert isinstance(parse_checked(raw, path), ModelyardError)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t["schema"]["columns"]["x1"].update(min=math.nan), "tasks.toy.schema.columns.x1.min"),
        (lambda t: t["train"].update(grad_clip=math.inf), "tasks.toy.train.grad_clip"),
        (lambda t: t["schema"].update(rows={"min": 10, "max": 5}), "tasks.toy.schema.rows"),
        (lambda t: t["tune"]["search_space"].update(units={"low": 8, "high": 64, "step": 0}), "units.step"),
        (lambda t: t["tune"]["search_space"].update(units={"low": 8, "high": 64, "step": 0.5}), "units"),
        (lambda t: t["tune"]["search_space"].update(lr={"low": 0.1, "high": 1, "log": True, "step": 0.1}), "lr"),
    ],
    ids=["nan_bound", "inf_grad_clip", "rows_max_below_min", "zero_step", "fractional_int_step", "log_with_step"],
)
def test_values_that_would_crash_a_later_stage_are_rejected_up_front(edit: Any, key: str) -> None:
    raw = toy_params()
    edit(raw["tasks"]["toy"])
    with pytest.raises(ModelyardError, match="1 problem") as info:
        parse_settings(raw)
    assert key in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**5000], ids=["negative", "2**32", "5000_digits"])
def test_seed_outside_what_numpy_and_sklearn_take_is_rejected(seed: int) -> None:
    with pytest.raises(ModelyardError, match="  - seed: "):
        parse_settings({**toy_params(), "seed": seed})


def to_yaml(raw: Any) -> bytes:
    """YAML text for a params value; values YAML cannot write (huge ints, deep nesting) become a stub."""
    try:
        return yaml.safe_dump(raw, allow_unicode=True).encode()
    except (ValueError, RecursionError, yaml.YAMLError):
        return b"tasks: {}\n"


@fast(150)
@given(
    st.one_of(
        broken_params().map(lambda case: to_yaml(case[0])),
        st.text(max_size=80).map(str.encode),
        st.binary(max_size=80),
        st.sampled_from(["latin-1", "utf-16"]).map(lambda enc: "tasks: {}\n# café\n".encode(enc)),
        st.integers(1, 600).map(lambda n: ("tasks: " + "[" * n + "]" * n).encode()),  # PyYAML is slow on deep nesting
        st.integers(4000, 6000).map(lambda n: ("seed: 1" + "0" * n).encode()),
    )
)
@example(("tasks: " + "[" * 1000 + "]" * 1000).encode())  # RecursionError inside PyYAML
@example(b"seed: 1" + b"0" * 5000)  # ValueError: PyYAML's int() past 4300 digits
@example("seed: 1\n# café\n".encode("latin-1"))  # UnicodeDecodeError
@example(b"seed: 2020-13-01\ntasks: {}\n")  # ValueError: PyYAML builds a date
def test_params_file_loads_or_fails_naming_the_file(data: bytes) -> None:
    with scratch() as folder:
        path = folder / "params.yaml"
        path.write_bytes(data)
        try:
            settings_ = load_settings(path)
        except ModelyardError as error:
            assert str(path) in error.message and error.hint, str(error)
            return
    assert isinstance(settings_, Settings)
