"""`modelyard add`: a complete task entry for params.yaml, inferred from a data table.

What is inferred, and the rules (each one a default a user can edit afterwards):
- column types: integer, number, datetime (text that parses as dates), text (strings of
  TEXT_WORDS or more words on average) and category (other strings, booleans); levels are
  listed up to CATEGORY_LEVELS, above that the column has no closed list; a numeric column
  with no negative value gets `min: 0`; a column with missing values gets a
  `max_null_fraction` of 1.5 x the share seen plus a point, so a new batch with a few more
  gaps still passes;
- identifier columns (integer or string, unique per row, never the target) are left out of
  the schema, so they are no features, and reported;
- the problem: a category target with two levels is binary (its rarer level the positive
  label), with more multiclass; a numeric target with at most CLASS_LEVELS distinct
  integers is multiclass, otherwise regression;
- the family: a free-text column makes a text task (`lstm` family, the text column its only
  feature); otherwise a table (`ann`);
- a binary target whose positive class is under RARE_SHARE of the rows is compared on F1
  (registry.metric), so train decides at the F1-best threshold rather than predicting the
  majority class;
- encoders: one-hot up to ONEHOT_LEVELS levels, above that target encoding (binary and
  regression) or hashing (multiclass);
- budgets and search space: the defaults, sized from the data at tune time.

The entry is inserted as text at the end of params.yaml's `tasks:` mapping (found with
ruamel.yaml's line records), so every other byte of the file, comments and hand wrapping
included, stays as it was; the file is written whole or not at all. A source file outside
`data/sources/` is copied there, since DVC watches that folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml as pyyaml

from modelyard.config import TABLE_SUFFIXES, parse_settings
from modelyard.data.sources import read_table
from modelyard.errors import ModelyardError
from modelyard.files import atomic_path

CATEGORY_LEVELS = 50
ONEHOT_LEVELS = 15
CLASS_LEVELS = 20
TEXT_WORDS = 5
RARE_SHARE = 0.2  # a binary target whose positive class is rarer than this is judged on F1
DATE_SHARE = 0.95  # a string column is dates when this share of its values parse as dates
SOURCES = Path("data") / "sources"


@dataclass
class Inferred:
    """A task entry (plain dicts, as params.yaml holds it) and what to tell the user."""

    entry: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def column_schema(values: pd.Series) -> dict[str, Any]:
    """The schema entry one column's values suggest."""
    present = values.dropna()
    spec: dict[str, Any]
    if pd.api.types.is_bool_dtype(values):
        spec = {"type": "category", "categories": sorted(map(str, present.unique()))}
    elif pd.api.types.is_numeric_dtype(values):
        # whole numbers with gaps arrive as floats: they are declared `number`, which holds both
        spec = {"type": "integer" if pd.api.types.is_integer_dtype(values) else "number"}
        if len(present) and present.min() >= 0:
            spec["min"] = 0
    elif pd.api.types.is_datetime64_any_dtype(values) or _dates(present):
        spec = {"type": "datetime"}
    elif len(present) and present.astype(str).str.split().str.len().mean() >= TEXT_WORDS:
        spec = {"type": "text"}
    else:
        spec = {"type": "category"}
        levels = sorted(present.astype(str).unique())
        if len(levels) <= CATEGORY_LEVELS:
            spec["categories"] = levels
    null_share = float(values.isna().mean())
    if null_share > 0:
        spec["max_null_fraction"] = float(min(1.0, np.ceil((1.5 * null_share + 0.01) * 100) / 100))
    return spec


def _dates(values: pd.Series) -> bool:
    if values.empty or (not pd.api.types.is_object_dtype(values) and not pd.api.types.is_string_dtype(values)):
        return False
    sample = values.astype(str).head(200)
    if sample.str.fullmatch(r"[+-]?\d+(\.\d+)?").all():  # plain numbers stored as text are no dates
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= DATE_SHARE)


def is_identifier(values: pd.Series, spec: dict[str, Any]) -> bool:
    """A row id, not a feature: strings unique per row, or integers that number the rows
    (unique and consecutive, in any order)."""
    if spec["type"] not in ("integer", "category") or values.isna().any() or not values.is_unique:
        return False
    return spec["type"] == "category" or int(values.max()) - int(values.min()) + 1 == len(values)


def infer_task(frame: pd.DataFrame, source: str, target: str, problem: str | None, family: str | None) -> Inferred:
    """The task entry for a table read from `source` (its path as params.yaml will name it)."""
    if target not in frame.columns:
        raise ModelyardError(
            f"target {target!r} is not a column of {source}", f"its columns: {', '.join(map(str, frame.columns))}"
        )
    notes: list[str] = []
    columns: dict[str, dict[str, Any]] = {}
    for name in frame.columns:
        spec = column_schema(frame[name])
        if name != target and is_identifier(frame[name], spec):
            notes.append(f"column {name!r} is unique per row (an identifier): left out of the features")
            continue
        columns[str(name)] = spec
    problem = problem or _problem(frame[target], columns[target])
    target_spec = columns[target]
    if problem != "regression":
        levels = sorted(frame[target].astype(str).unique())
        columns[target] = {"type": "category", "categories": levels}
    elif target_spec["type"] not in ("integer", "number"):
        raise ModelyardError(f"target {target!r} holds no numbers", "use --problem binary or multiclass")
    texts = [c for c, s in columns.items() if s["type"] == "text"]
    time = _series_time(frame, columns, target) if problem == "regression" else None
    sequence = _sequence_columns(frame, columns, target) if problem != "regression" and not texts else None
    if frame[target].isna().any() and not time:  # a series may have gaps; a labelled row may not
        raise ModelyardError(
            f"the target column {target!r} has {int(frame[target].isna().sum())} missing value(s)",
            "drop those rows from the file, or fill them in",
        )
    family = family or ("lstm" if (texts and problem != "regression") or time or sequence else "ann")
    entry: dict[str, Any] = {"source": {"path": source}, "target": target, "problem": problem, "family": family}
    registry: dict[str, Any] = {}
    if problem == "binary":
        counts = frame[target].astype(str).value_counts()
        entry["positive_label"] = str(counts.index[-1])
        if counts.iloc[-1] < RARE_SHARE * len(frame):
            # accuracy rewards saying "no" to everyone; F1 makes train pick a threshold that finds positives
            registry = {"metric": "f1"}
            notes.append(f"the positive class {counts.index[-1]!r} is rare: models are compared on F1")
    entry["metric"] = "rmse" if problem == "regression" else "accuracy"
    split: dict[str, Any] = {"stratify": problem != "regression"}
    if family == "lstm" and time:
        numeric = [c for c, s in columns.items() if s["type"] in ("integer", "number")]
        notes.append(f"a series over {time!r}: forecasting {target!r} from {', '.join(numeric)}")
        columns = {time: columns[time], **{c: columns[c] for c in numeric}}
        times = pd.to_datetime(frame[time], format="mixed")
        features: dict[str, Any] = {"series": series_settings(times, len(frame))}
        split = {"test_size": 0.15, "val_size": 0.15}
        schema_extra: dict[str, Any] = {"time": time}
    elif family == "lstm" and sequence:
        id_column, step = sequence
        notes.append(f"sequences: one per {id_column!r}, ordered by {step!r}")
        kept = [id_column, step, *(c for c, s in columns.items() if s["type"] in ("integer", "number"))]
        columns = {c: columns[c] for c in dict.fromkeys([*kept, target]) if c in columns}
        features = {"sequence": {"id": id_column, "step": step}}
        schema_extra = {}
    elif family == "lstm":
        if not texts:
            raise ModelyardError(
                f"{source} has no free-text column for an lstm text task",
                "for series and sequences write the task by hand (README: Adding a task), or use --family ann",
            )
        text = max(texts, key=lambda c: frame[c].astype(str).str.len().mean())
        notes.append(f"text task on column {text!r}; the other columns are not used")
        columns = {text: columns[text], target: columns[target]}
        features = {"text": {"column": text}}
        schema_extra = {}
    else:
        features = _encoders(columns, target, problem)
        schema_extra = {}
        unused = [c for c, s in columns.items() if s["type"] in ("datetime", "text") and c != target]
        if unused:  # a tabular network takes numbers and categories
            notes.append(f"{', '.join(map(repr, unused))}: validated, but no feature of a table task (not a number)")
    entry.update(
        schema={"columns": columns, **schema_extra},
        split=split,
        features=features,
        model={},
        tune={},
        train={},
        registry=registry,
    )
    return Inferred(entry, notes)


def infer_image_task(images: np.ndarray, labels: np.ndarray, source: dict[str, str], target: str) -> Inferred:
    """An image task (`cnn`) from its images (N, H, W, C) and labels, read from `source`
    (its params.yaml section); `target` names the label column the task declares."""
    classes = sorted(map(str, set(labels)))
    if len(classes) < 2:
        raise ModelyardError(
            f"{source['path']} has images of {len(classes)} class", "give images of two classes or more"
        )
    n_images, height, width, channels = images.shape
    entry: dict[str, Any] = {
        "source": source,
        "target": target,
        "problem": "binary" if len(classes) == 2 else "multiclass",
        "family": "cnn",
        "metric": "accuracy",
        "schema": {
            "columns": {target: {"type": "category", "categories": classes}},
            "image": {"height": int(height), "width": int(width), "channels": int(channels)},
        },
        "split": {},
        "features": {},
        "model": {},
        "tune": {},
        "train": {},
        "registry": {},
    }
    return Inferred(entry, [f"{n_images} images of {height}x{width}x{channels} in {len(classes)} classes"])


def series_settings(times: pd.Series, n_rows: int) -> dict[str, int]:
    """Forecasting window, horizon and season from the series' step: a day -> a week's
    season, 4 weeks in, a week out; a week -> 52, 52, 4; a month -> 12, 24, 3; an hour ->
    24, 72, 24; a quarter -> 4, 12, 2. The window is cut to a sixth of the rows."""
    step = pd.Series(times).diff().median()
    hours = step / pd.Timedelta(hours=1)
    table = [
        (1.5, (24, 72, 24)),
        (36, (7, 28, 7)),
        (24 * 10, (52, 52, 4)),
        (24 * 45, (12, 24, 3)),
        (24 * 120, (4, 12, 2)),
    ]
    season, window, horizon = next((v for limit, v in table if hours <= limit), (1, 12, 1))
    window = max(2, min(window, n_rows // 6))
    return {"window": window, "horizon": horizon, "season": season if season < window * 4 else 1}


def _series_time(frame: pd.DataFrame, columns: dict[str, dict[str, Any]], target: str) -> str | None:
    """The datetime column a numeric target forms a series over: unique, increasing times."""
    for name, spec in columns.items():
        if spec["type"] != "datetime" or name == target:
            continue
        times = pd.to_datetime(frame[name], errors="coerce", format="mixed")
        if times.notna().all() and times.is_unique and times.is_monotonic_increasing:
            return name
    return None


def _sequence_columns(frame: pd.DataFrame, columns: dict[str, dict[str, Any]], target: str) -> tuple[str, str] | None:
    """(id, step) of long-format sequences: an id column within which the target is
    constant (at least 4 ids, 3 rows each on average) and a numeric step column that
    increases within every id."""
    numeric = [c for c, s in columns.items() if s["type"] in ("integer", "number") and c != target]
    for id_column in [c for c in frame.columns if c != target]:
        groups = frame.groupby(id_column, sort=False)
        if not 4 <= groups.ngroups <= len(frame) / 3 or (groups[target].nunique() > 1).any():
            continue
        for step in numeric:
            if step != id_column and groups[step].apply(lambda s: s.is_monotonic_increasing and s.is_unique).all():
                return str(id_column), step
    return None


def _problem(values: pd.Series, spec: dict[str, Any]) -> str:
    if spec["type"] in ("integer", "number"):
        distinct = values.nunique()
        if spec["type"] == "integer" and distinct <= CLASS_LEVELS:
            return "binary" if distinct == 2 else "multiclass"
        return "regression"
    return "binary" if values.nunique() == 2 else "multiclass"


def _encoders(columns: dict[str, dict[str, Any]], target: str, problem: str) -> dict[str, Any]:
    """One-hot for few levels; target encoding (or hashing for multiclass) for many."""
    many = "hashing" if problem == "multiclass" else "target"  # target encoders need a binary or numeric target
    encoders = {
        name: many
        for name, spec in columns.items()
        if name != target
        and spec["type"] == "category"
        and ("categories" not in spec or len(spec["categories"]) > ONEHOT_LEVELS)  # no closed list: many levels
    }
    return {"default_encoder": "onehot", "encoders": encoders} if encoders else {"default_encoder": "onehot"}


def add_task(
    root: Path,
    name: str,
    path: Path,
    target: str | None,
    *,
    labels: Path | None = None,
    problem: str | None = None,
    family: str | None = None,
    dry_run: bool = False,
) -> tuple[str, Inferred]:
    """Infer the task, check it parses, and (unless `dry_run`) copy the file (and an image
    array's `labels` file) under data/sources/ and write the entry into params.yaml.
    Returns the entry as YAML text."""
    from ruamel.yaml import YAML

    from modelyard.data.images import labels_beside, read_image_source

    if not path.exists():
        raise ModelyardError(f"{path} not found", "give --source an existing table, image folder or image array")
    is_table = path.is_file() and path.suffix.lower() in TABLE_SUFFIXES
    is_array = path.is_file() and path.suffix.lower() in (".npz", ".npy")
    if not (is_table or is_array or path.is_dir() or labels is not None):
        raise ModelyardError(
            f"{path} is not a .csv / .parquet table, an image folder or a .npz / .npy image array",
            "give one of those, or an IDX images file with --labels LABELS_FILE",
        )
    if labels is not None and (is_table or not labels.is_file()):
        raise ModelyardError(
            f"--labels {labels} " + ("goes with an image array or IDX file" if is_table else "is not a file"),
            "give --labels only with a .npy or IDX images file: the file of their labels",
        )
    params_path = root / "params.yaml"
    yaml = YAML()
    original = params_path.read_text() if params_path.is_file() else ""
    document = yaml.load(original) or {}
    tasks = document.get("tasks") or {}
    if name in tasks:
        raise ModelyardError(f"params.yaml already has a task {name!r}", "pick another name, or remove that task first")
    if is_array and path.suffix.lower() == ".npy" and labels is None:
        labels = labels_beside(path)  # written into the entry, and copied with the images
    # each file's place under data/sources/ (None: outside it, copied there on writing)
    inside = {file: _inside(file.resolve(), (root / SOURCES).resolve()) for file in (path, labels) if file}
    copies = {file: SOURCES / (file.name if place is None else place) for file, place in inside.items()}
    source = copies[path].as_posix()
    if is_table and target is None:
        raise ModelyardError("a table task needs its target column", "add --target COLUMN")
    if is_table:
        frame = read_table(path)
        inferred = infer_task(frame, source, target, problem, family)
        if frame.attrs.get("decimal") == ",":  # detected again at ingest; written down to be seen
            inferred.entry["source"]["decimal"] = ","
            inferred.notes.append("numbers are written with a decimal comma (source.decimal: ',')")
    else:
        images, image_labels = read_image_source(path, labels)
        section = {"path": source} | ({"labels": copies[labels].as_posix()} if labels is not None else {})
        inferred = infer_image_task(images, image_labels, section, target or "label")
    text = _dump(yaml, _quoted({name: inferred.entry}))
    candidate = _plain(document)
    # the entry as params.yaml will read it back must be a valid task before anything is written
    candidate["tasks"] = {**(candidate.get("tasks") or {}), name: pyyaml.safe_load(text)[name]}
    parse_settings(candidate)
    if dry_run:
        return text, inferred
    for file, relative in copies.items():
        if inside[file] is not None:
            continue
        destination = root / relative
        if destination.exists():
            raise ModelyardError(f"{destination} already exists", "remove it, or add the task from that file")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(destination) as temporary:
            if file.is_dir():
                shutil.copytree(file, temporary)
            else:
                shutil.copyfile(file, temporary)
        inferred.notes.append(f"copied {file} to {relative.as_posix()}")
    with atomic_path(params_path) as temporary:
        temporary.write_text(insert_task(original, document, text))
    return text, inferred


def insert_task(original: str, document: Any, entry: str) -> str:
    """params.yaml's text with `entry` (a one-task mapping, unindented YAML) added as the
    last task; nothing else in the text changes."""
    lines = original.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    tasks = document.get("tasks") if document else None
    if not tasks:  # no tasks yet (`tasks: {}` or no key): a fresh block replaces that line
        if document and "tasks" in document:
            del lines[document.lc.key("tasks")[0]]
        return "".join(lines) + "tasks:\n" + _indent(entry, 2)
    indent = tasks.lc.key(next(iter(tasks)))[1]
    keys = list(document)
    following = keys[keys.index("tasks") + 1 :]
    end = document.lc.key(following[0])[0] if following else len(lines)
    while end > 0 and not lines[end - 1].strip():  # before the blank lines that close the block
        end -= 1
    return "".join(lines[:end]) + _indent(entry, indent) + "".join(lines[end:])


def _indent(text: str, width: int) -> str:
    return "".join(" " * width + line if line.strip() else line for line in text.splitlines(keepends=True))


def _inside(path: Path, folder: Path) -> Path | None:
    try:
        return path.relative_to(folder)
    except ValueError:
        return None


def _dump(yaml: Any, data: Any) -> str:
    stream = StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()


def _quoted(data: Any) -> Any:
    """Strings a YAML 1.1 reader (PyYAML, which reads params.yaml) would take for something
    else (yes, no, on, 1.0, a date) double-quoted, in keys and values."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(data, dict):
        return {_quoted(k): _quoted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_quoted(v) for v in data]
    if isinstance(data, str) and not _reads_back(data):
        return DoubleQuotedScalarString(data)
    return data


def _reads_back(text: str) -> bool:
    try:
        return pyyaml.safe_load(f"k: {text}") == {"k": text}
    except pyyaml.YAMLError:
        return False


def _plain(data: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists, for the settings parser."""
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data
