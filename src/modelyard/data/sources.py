"""Read a task's raw data: a built-in dataset shipped inside a package, or a user file.

Nothing here downloads: built-in datasets are files that ship inside pinned packages.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.config import SchemaSettings, SourceSettings, TaskSettings
from modelyard.errors import ModelyardError

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
]
# The column `read_task_frame` adds when a task has a test file: "train" for the rows of
# `source.path`, "test" for those of `source.test`. Split reads it and drops it.
SPLIT_MARKER = "__split__"
SPLIT_VALUES = ("train", "val", "test")


def read_task_frame(task: TaskSettings, root: Path) -> pd.DataFrame:
    """A task's raw rows, conformed to its schema: table rows, or one row per image.

    With `source.test`, the rows of both files, marked in column `SPLIT_MARKER`.
    """
    if task.kind == "images":
        from modelyard.data.images import image_frame, read_images

        return image_frame(*read_images(task.source, root), task.target)
    if task.kind == "sequence" and not task.source.is_table:
        from modelyard.data.images import read_labelled_arrays

        sequence = task.features.sequence
        labels = root / task.source.labels if task.source.labels else None
        x, y = read_labelled_arrays(root / str(task.source.path), labels)
        return conform(sequence_frame(x, y, sequence.id, sequence.step, task.target), task.schema_)
    frame = read_source(task.source, root)
    _check_dialect(frame, task)
    if task.source.test is not None:
        frame = with_test_rows(frame, read_test_rows(task.source, root), task.source)
    return conform(frame, task.schema_)


def _check_dialect(frame: pd.DataFrame, task: TaskSettings) -> None:
    """A CSV whose header holds fewer than half of the schema's columns was most likely
    split at the wrong delimiter: say so, with the columns it did find, instead of letting
    validation report every column as missing."""
    delimiter = frame.attrs.get("delimiter")
    declared = list(task.schema_.columns)
    found = [c for c in declared if c in frame.columns]
    if delimiter is None or 2 * len(found) >= len(declared):
        return
    seen = ", ".join(repr(str(c)) for c in list(frame.columns)[:8]) + (", ..." if frame.shape[1] > 8 else "")
    how = "detected" if task.source.delimiter == "auto" else "set"
    raise ModelyardError(
        f"{task.source.path}: read with delimiter {delimiter!r} ({how}), its header gives {frame.shape[1]} "
        f"column(s) ({seen}), and {len(declared) - len(found)} of the schema's {len(declared)} columns "
        "are not among them",
        "set tasks.<task>.source.delimiter to the file's delimiter (',', ';', '\\t' or '|'), "
        "or make the schema's column names match the header row",
    )


def split_marker(task: TaskSettings) -> str | None:
    """The column that marks each row's split: `split.column`, `SPLIT_MARKER` for a task
    with a test file, or None when split draws the rows itself."""
    if task.split.column is not None:
        return task.split.column
    return SPLIT_MARKER if task.source.test is not None else None


def read_test_rows(source: SourceSettings, root: Path) -> pd.DataFrame:
    """The rows of a task's test file (`source.test`), read like its `path`."""
    path = root / str(source.test)
    if not path.is_file():
        raise ModelyardError(f"test file {path} not found", "check tasks.<task>.source.test in params.yaml")
    frame = read_table(path, **source.csv_options)
    if frame.empty or frame.shape[1] == 0:
        raise ModelyardError(f"test file {source.test} holds no rows", "point source.test at a file of test rows")
    return frame


def with_test_rows(frame: pd.DataFrame, test: pd.DataFrame, source: SourceSettings) -> pd.DataFrame:
    """The rows of both files, marked "train" and "test" in `SPLIT_MARKER`; the files must
    have the same columns (in any order)."""
    if SPLIT_MARKER in frame.columns or SPLIT_MARKER in test.columns:
        raise ModelyardError(
            f"the data has a column named {SPLIT_MARKER!r}, which modelyard uses to mark the test file's rows",
            "rename that column",
        )
    missing = [str(c) for c in frame.columns if c not in test.columns]
    extra = [str(c) for c in test.columns if c not in frame.columns]
    if missing or extra:
        differences = [f"lacks {', '.join(map(repr, missing))}"] if missing else []
        differences += [f"has {', '.join(map(repr, extra))}, which {source.path} lacks"] if extra else []
        raise ModelyardError(
            f"test file {source.test} does not have the columns of {source.path}: it " + " and ".join(differences),
            "give source.test the same header row as source.path",
        )
    parts = ((frame, "train"), (test[list(frame.columns)], "test"))
    return pd.concat([part.assign(**{SPLIT_MARKER: name}) for part, name in parts], ignore_index=True)


def sequence_frame(x: np.ndarray, labels: np.ndarray, id_column: str, step_column: str, target: str) -> pd.DataFrame:
    """Long-format rows from equal-length sequences (n, steps, channels): one row per step,
    channels as columns x0, x1, ..."""
    x = np.asarray(x, dtype=float)
    x = x[..., None] if x.ndim == 2 else x
    if x.ndim != 3:
        raise ModelyardError(f"sequence arrays are shaped {x.shape}", "save them as (n, steps) or (n, steps, channels)")
    n_sequences, n_steps, n_channels = x.shape
    frame = pd.DataFrame(x.reshape(-1, n_channels), columns=[f"x{i}" for i in range(n_channels)])
    frame.insert(0, step_column, np.tile(np.arange(n_steps), n_sequences))
    frame.insert(0, id_column, np.repeat(np.arange(n_sequences), n_steps))
    frame[target] = np.repeat(np.asarray(labels).astype(str), n_steps)
    return frame


def read_source(source: SourceSettings, root: Path) -> pd.DataFrame:
    """Load the raw frame a task's table source names; a relative path is taken from `root`."""
    if source.builtin == "adult":
        frame = _read_adult()
    elif source.builtin == "co2":
        frame = _read_co2()
    else:
        frame = read_table(root / str(source.path), **source.csv_options)
    if frame.empty or frame.shape[1] == 0:
        raise ModelyardError(
            f"source {source.path or source.builtin} holds no rows", "point the task at a file with data"
        )
    return frame


def _read_adult() -> pd.DataFrame:
    """UCI Adult census income, from the data file the mglearn package ships."""
    spec = importlib.util.find_spec("mglearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModelyardError("the built-in 'adult' dataset needs the mglearn package", "reinstall: make install")
    path = Path(spec.submodule_search_locations[0]) / "data" / "adult.data"
    return pd.read_csv(path, header=None, names=ADULT_COLUMNS, skipinitialspace=True, na_values="?")


def _read_co2() -> pd.DataFrame:
    """Weekly Mauna Loa CO2 (ppm), 1958-2001, from the data statsmodels ships; missing weeks
    are rows with no value."""
    from statsmodels.datasets import co2

    data = co2.load_pandas().data
    return pd.DataFrame({"date": data.index.to_numpy(), "co2": data["co2"].to_numpy()})


def read_table(
    path: Path, na_values: tuple[str, ...] = (), delimiter: str = "auto", decimal: str = "auto", encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every read failure into one clear error.

    A CSV is read in `encoding` (UTF-8 unless the task sets `source.encoding`; a byte-order
    mark is fine). Other encodings are refused, not guessed: Latin-1 decodes any bytes, so
    a wrong guess would load mojibake silently. The delimiter is `delimiter`, or with `auto`
    the one of comma, semicolon, tab and pipe that splits the first lines into the same
    number of fields (more than one), comma first on a tie; the frame's `attrs["delimiter"]`
    says which was used. The decimal mark is `decimal`, or with `auto` the one `detect_decimal`
    finds (`attrs["decimal"]`).
    The header row must name every column once. A row with more fields than the header is
    an error; a row with fewer has its missing trailing fields read as missing values.
    Columns pandas gives no single type (integers beyond 64 bits, true/false with gaps)
    are read as text, exactly as the file writes them. As in pandas, a line of only spaces
    is blank and skipped (a one-column file loses such a value).
    """
    if not path.is_file():
        raise ModelyardError(f"data file {path} not found", "check tasks.<task>.source.path in params.yaml")
    try:
        if path.suffix.lower() == ".csv":
            if _starts_with(path, b"\x1f\x8b"):
                raise ModelyardError(
                    f"{path} is gzip-compressed, not CSV text", "decompress it (gunzip), or save it as Parquet"
                )
            if (kind := _binary_format(path)) is not None:
                raise ModelyardError(
                    f"{path} is {kind}, not CSV text", "export the table as CSV (or Parquet) and point the task at it"
                )
            if delimiter == "auto":
                delimiter = detect_delimiter(path, encoding)
            if decimal == "auto":
                decimal = detect_decimal(path, delimiter, encoding)
            frame = _read_csv(path, na_values, delimiter, decimal, encoding)
            frame.attrs |= {"delimiter": delimiter, "decimal": decimal}
            return frame
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise ModelyardError(
            f"{path} is not {encoding.upper()} text (it holds the byte {exc.object[exc.start]:#04x})",
            "set tasks.<task>.source.encoding to the file's encoding (e.g. latin-1, cp1252), "
            "or re-save it as UTF-8: iconv -f latin1 -t utf-8 old.csv > new.csv",
        ) from None
    except pd.errors.EmptyDataError:
        raise ModelyardError(f"{path} is empty", "point the task at a file with a header row and data") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise ModelyardError(
            f"cannot read {path}: {str(exc).strip()}", "check that the file is a valid CSV or Parquet file"
        ) from None


# What a file named .csv may really be: the formats users save or download by mistake.
BINARY_FORMATS = {
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook is one)",
    b"\xd0\xcf\x11\xe0": "an old Excel (.xls) or Office file",
    b"PAR1": "a Parquet file (name it .parquet)",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"BZh": "bzip2-compressed",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"\x93NUMPY": "a NumPy array (.npy)",
}


def _binary_format(path: Path) -> str | None:
    """What binary format `path` starts with, among BINARY_FORMATS, if any."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    return next((name for magic, name in BINARY_FORMATS.items() if head.startswith(magic)), None)


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


DELIMITERS = (",", ";", "\t", "|")
SNIFF_LINES = 50


def detect_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The delimiter of DELIMITERS that splits the first lines (quotes respected) into the
    same number of fields, the most fields winning and comma first on a tie; comma when
    none does (a one-column file)."""
    with open(path, encoding=encoding, newline="") as handle:
        lines = [line for _, line in zip(range(SNIFF_LINES), handle, strict=False) if line.strip()]
    best, best_fields = ",", 1
    for candidate in DELIMITERS:
        counts = {len(row) for row in csv.reader(lines, delimiter=candidate)}
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            best, best_fields = candidate, fields
    return best


COMMA_NUMBER = re.compile(r"[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?")
DOT_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?")


def detect_decimal(path: Path, delimiter: str, encoding: str = "utf-8") -> str:
    """`,` when the fields are not comma-separated, some column of the first lines holds
    only numbers written with a decimal comma (`3,14`) and none holds numbers with a decimal
    point; else `.`. A comma-separated file cannot hold an unquoted decimal comma."""
    if delimiter == ",":
        return "."
    with open(path, encoding=encoding, newline="") as handle:
        rows = list(
            csv.reader((line for _, line in zip(range(SNIFF_LINES), handle, strict=False)), delimiter=delimiter)
        )
    columns = [[value.strip() for value in column if value.strip()] for column in zip(*rows[1:], strict=False)]

    def only(pattern: re.Pattern[str], values: list[str]) -> bool:
        return bool(values) and all(pattern.fullmatch(value) for value in values)

    comma = any(only(COMMA_NUMBER, values) for values in columns)
    return "," if comma and not any(only(DOT_NUMBER, values) for values in columns) else "."


def _read_csv(path: Path, na_values: tuple[str, ...], delimiter: str, decimal: str, encoding: str) -> pd.DataFrame:
    """`read_table` for a CSV: check the header row as written, then read the rows."""
    dialect = {"sep": delimiter, "decimal": decimal, "encoding": encoding}
    # pandas renames duplicates (a, a.1) and empty names (Unnamed: 0): read the header raw.
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, na_filter=False, **dialect).iloc[0].tolist()
    if any("\x00" in name for name in header):
        raise ModelyardError(f"{path} is not UTF-8 text (its header holds NUL bytes)", "re-save the file as UTF-8 CSV")
    unnamed = [str(i) for i, name in enumerate(header, 1) if name == ""]
    if unnamed:
        raise ModelyardError(
            f"{path}: the header row gives no name to column(s) {', '.join(unnamed)}",
            "name every column in the first row (a file saved by pandas with its index: save it with index=False)",
        )
    duplicated = [name for name, count in Counter(header).items() if count > 1]
    if duplicated:
        raise ModelyardError(
            f"{path} has duplicated column names ({', '.join(map(repr, duplicated))})",
            "give each column a unique name",
        )
    # index_col=False: never take extra leading fields as an index; pandas warns, we refuse.
    options: dict = {"na_values": list(na_values) or None, "low_memory": False, "index_col": False, **dialect}
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(path, **options)
        except pd.errors.ParserWarning:
            raise ModelyardError(
                f"{path}: rows have more fields than the {len(header)} columns the header names "
                f"(read with delimiter {delimiter!r})",
                "quote values that contain the delimiter, name the missing columns in the header row, "
                "or set tasks.<task>.source.delimiter",
            ) from None
    mixed = [name for name, dtype in frame.dtypes.items() if pd.api.types.is_object_dtype(dtype)]
    if mixed:
        frame = pd.read_csv(path, dtype=dict.fromkeys(mixed, str), **options)
    return frame


def conform(frame: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """Read category and text columns as text, and datetime columns as dates.

    A CSV reader guesses a category like a zip code as a number; the schema says it is a
    category, so it is stored as a string (missing values stay missing). Numeric columns
    are left alone: a wrong numeric type is a validation failure, not something to mend.
    """
    frame = frame.copy()
    for name, column in schema.columns.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        if column.type in ("category", "text"):
            frame[name] = values.astype("str").where(values.notna())
        elif column.type == "datetime" and not pd.api.types.is_datetime64_any_dtype(values):
            # A value that is no date becomes missing; validation reports it as a null.
            frame[name] = pd.to_datetime(values, errors="coerce", format="mixed")
    return frame


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a frame: column names, dtypes and values, independent of the index."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
