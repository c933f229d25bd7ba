"""Seeded train / validation / test splits, stratified for classification, or the splits
a marker column fixes (a published split: `split.column`, or a test file's rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from sklearn.model_selection import train_test_split

from modelyard.config import SplitSettings, TaskSettings
from modelyard.data.sources import SPLIT_MARKER, SPLIT_VALUES, split_marker
from modelyard.errors import DataRejected, ModelyardError

if TYPE_CHECKING:
    from modelyard.kinds import Kind

Parts = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


def split_task(frame: pd.DataFrame, task: TaskSettings, kind: Kind, seed: int) -> Parts:
    """A task's train, validation and test rows.

    With a marker column (`split.column`, or `SPLIT_MARKER` for a test file) rows go where
    they are marked; without `val` rows, validation is `val_size` of the `train` rows
    (stratified for classification, whole sequences for a sequence task). Otherwise a
    series is split in time, sequences as whole groups, other rows at random (the task's
    `kind` splits with the functions below). The marker columns are left out of the parts:
    they are no feature and no input at predict time.
    """
    marker = split_marker(task)
    parts = (
        _marked_split(frame, marker, task, kind.group(task), seed)
        if marker is not None
        else kind.split(frame, task, seed)
    )
    for name, part in zip(SPLIT_VALUES, parts, strict=True):
        if part.empty:
            where = f"no row of column {marker!r} is marked {name!r}" if marker else f"from {len(frame)} rows"
            fix = {None: "give the task more rows", SPLIT_MARKER: "give source.path and source.test rows"}
            raise ModelyardError(f"the {name} split is empty ({where})", fix.get(marker, f"mark some rows {name!r}"))
    if task.problem != "regression" and parts[0][task.target].nunique() < 2:
        raise DataRejected(
            f"the train split holds one class of {task.target!r} ({parts[0][task.target].iloc[0]!r}): "
            "a classifier needs rows of at least two to learn from",
            "give the data rows of every class in the train split (or more rows of the rare classes)",
        )
    dropped = [c for c in (SPLIT_MARKER, task.split.column) if c is not None and c in frame.columns]
    return tuple(part.drop(columns=dropped).reset_index(drop=True) for part in parts)


def _marked_split(frame: pd.DataFrame, marker: str, task: TaskSettings, group: str | None, seed: int) -> Parts:
    """The rows as `marker` places them; validation drawn from the train rows (whole `group`s,
    if given) if none is marked `val`."""
    if marker not in frame.columns:
        raise ModelyardError(
            f"the raw data has no split column {marker!r}",
            "run ingest again (dvc repro)" if marker == SPLIT_MARKER else f"add column {marker!r} to the data",
        )
    marks = frame[marker]
    unknown = sorted(map(str, set(marks.dropna().unique()) - set(SPLIT_VALUES)))
    if unknown or marks.isna().any():
        found = f"values {', '.join(map(repr, unknown[:5]))}" if unknown else "missing values"
        raise ModelyardError(
            f"split column {marker!r} holds {found}", "mark every row train, val or test (validate checks this)"
        )
    if group is not None:
        kinds = frame.groupby(group)[marker].nunique()
        mixed = kinds[kinds > 1].index[:5].tolist()
        if mixed:
            raise ModelyardError(
                f"sequence(s) {', '.join(map(repr, mixed))} have rows in more than one split (column {marker!r})",
                "give all rows of a sequence one split; with source.test, give the test file's sequences ids of "
                "their own",
            )
    train, val, test = (frame[marks == name] for name in SPLIT_VALUES)
    if val.empty and not train.empty:
        stratify = task.problem != "regression" and task.split.stratify
        if group is None:
            train, val = _hold_out(train, task.target, task.split.val_size, stratify=stratify, seed=seed)
        else:
            labels = train.groupby(group, sort=True)[task.target].first().reset_index()
            kept, held = _hold_out(
                labels, task.target, task.split.val_size, stratify=stratify, seed=seed, what="sequences"
            )
            train, val = train[train[group].isin(kept[group])], train[train[group].isin(held[group])]
    return train, val, test


def _hold_out(
    frame: pd.DataFrame, target: str, fraction: float, *, stratify: bool, seed: int, what: str = "rows"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set aside `fraction` of the rows at random (stratified on `target` if asked) for validation."""
    try:
        return train_test_split(
            frame, test_size=fraction, random_state=seed, stratify=frame[target] if stratify else None
        )
    except ValueError as exc:
        raise ModelyardError(
            f"cannot set aside {fraction:g} of {len(frame)} training {what} for validation: {exc}",
            f"use more training {what}, a smaller split.val_size, or split.stratify: false",
        ) from None


def split_frame(
    frame: pd.DataFrame, target: str, split: SplitSettings, *, classification: bool, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split into train, validation and test.

    `test_size` is a fraction of all rows; `val_size` a fraction of what remains after
    the test rows are set aside (the usual two-step split, so a seed gives the same test
    rows whatever `val_size` is).
    """
    stratify = classification and split.stratify
    try:
        rest, test = train_test_split(
            frame, test_size=split.test_size, random_state=seed, stratify=frame[target] if stratify else None
        )
        train, val = train_test_split(
            rest, test_size=split.val_size, random_state=seed, stratify=rest[target] if stratify else None
        )
    except ValueError as exc:
        raise ModelyardError(
            f"cannot split {len(frame)} rows: {exc}",
            "use more rows, smaller test/val fractions, or split.stratify: false",
        ) from None
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def split_groups(
    frame: pd.DataFrame, group: str, target: str, split: SplitSettings, *, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split whole groups (the rows of one sequence stay together), stratified on each
    group's first label."""
    labels = frame.groupby(group, sort=True)[target].first().reset_index()
    parts = split_frame(labels, target, split, classification=True, seed=seed)
    return tuple(frame[frame[group].isin(part[group])].reset_index(drop=True) for part in parts)


def split_series(
    frame: pd.DataFrame, time: str, split: SplitSettings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a series in time: the last `test_size` of the steps are the test period, the
    last `val_size` of the rest validation, the beginning training. No shuffling."""
    ordered = frame.sort_values(time, ignore_index=True)
    n_test = round(len(ordered) * split.test_size)
    n_val = round((len(ordered) - n_test) * split.val_size)
    n_train = len(ordered) - n_test - n_val
    if min(n_train, n_val, n_test) < 1:
        raise ModelyardError(
            f"cannot split a series of {len(ordered)} steps into training, validation and test periods",
            "use a longer series or other split fractions",
        )
    parts = ordered.iloc[:n_train], ordered.iloc[n_train : n_train + n_val], ordered.iloc[n_train + n_val :]
    return tuple(part.reset_index(drop=True) for part in parts)
