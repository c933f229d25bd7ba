"""Read a task's raw data: a built-in dataset shipped inside a package, or a user file.

Nothing here downloads: built-in datasets are files that ship inside pinned packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pandas as pd

from modelyard.config import SchemaSettings, SourceSettings
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


def read_source(source: SourceSettings, root: Path) -> pd.DataFrame:
    """Load the raw frame a task's source names; a relative path is taken from `root`."""
    frame = _read_adult() if source.builtin == "adult" else read_table(root / str(source.path), source.na_values)
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


def read_table(path: Path, na_values: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every read failure into one clear error."""
    if not path.is_file():
        raise ModelyardError(f"data file {path} not found", "check tasks.<task>.source.path in params.yaml")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, na_values=list(na_values) or None)
        else:
            frame = pd.read_parquet(path)
    except UnicodeDecodeError:
        raise ModelyardError(f"{path} is not UTF-8 text", "re-save the file as UTF-8 CSV") from None
    except pd.errors.EmptyDataError:
        raise ModelyardError(f"{path} is empty", "point the task at a file with a header row and data") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise ModelyardError(
            f"cannot read {path}: {exc}", "check that the file is a valid CSV or Parquet file"
        ) from None
    duplicated = [str(c) for c in frame.columns if str(c).rsplit(".", 1)[0] in frame.columns and "." in str(c)]
    if path.suffix.lower() == ".csv" and duplicated:
        raise ModelyardError(
            f"{path} has duplicated column names ({', '.join(duplicated)})", "give each column a unique name"
        )
    return frame


def conform(frame: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """Keep the declared columns and read category columns as text.

    A CSV reader guesses a category like a zip code as a number; the schema says it is a
    category, so it is stored as a string (missing values stay missing). Numeric columns
    are left alone: a wrong numeric type is a validation failure, not something to mend.
    """
    frame = frame.copy()
    for name, column in schema.columns.items():
        if column.type == "category" and name in frame.columns:
            values = frame[name]
            frame[name] = values.astype("str").where(values.notna())
    return frame


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a frame: column names, dtypes and values, independent of the index."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
