"""Seeded train / validation / test splits, stratified for classification."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from modelyard.config import SplitSettings
from modelyard.errors import ModelyardError


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
