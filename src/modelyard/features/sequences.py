"""Sequence classification: long-format rows (id, step, features..., label) to padded
sequences for the sequence networks, one sample per id."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from modelyard.config import SchemaSettings
from modelyard.errors import ModelyardError
from modelyard.features.rows import Decode, Predict


class SequencePreprocessor:
    """Groups rows by `id`, orders them by `step`, scales the feature columns and right-pads
    every sequence to `max_length_` steps (default: the longest training sequence; a longer
    one keeps its last steps). `normalize`:
    - "series": z-normalise each channel of each sequence by that sequence's own mean and
      spread over its kept steps (the UCR convention: shape matters, not level); a constant
      channel becomes zeros;
    - "global": standardise each channel with the training rows' mean and spread.
    A missing value becomes 0 after scaling (the mean). The last channel of the output marks
    real steps (1) and padding (0): it carries each sequence's length to the network.
    Samples come out in sorted id order, as `sequence_labels` gives the labels.
    """

    masked_ = True  # the network reads the lengths from the last channel

    def __init__(
        self,
        id_column: str,
        step_column: str,
        columns: Sequence[str],
        max_length: int | None = None,
        normalize: str = "series",
    ):
        if normalize not in ("series", "global"):
            raise ValueError(f"normalize must be 'series' or 'global', got {normalize!r}")
        self.id_column, self.step_column, self.columns = id_column, step_column, list(columns)
        self.max_length, self.normalize = max_length, normalize

    def fit(self, frame: pd.DataFrame, y: np.ndarray | None = None) -> SequencePreprocessor:
        values = self._rows(frame)[self.columns].to_numpy(dtype=float)
        self.mean_ = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(len(self.columns))
        spread = np.nan_to_num(np.nanstd(values, axis=0))
        self.scale_ = np.where(spread > 0, spread, 1.0)
        self.max_length_ = self.max_length or int(frame.groupby(self.id_column).size().max())
        return self

    @property
    def input_shape_(self) -> tuple[int, int]:
        return self.max_length_, len(self.columns) + 1

    def _rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        needed = [self.id_column, self.step_column, *self.columns]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ModelyardError(f"the input lacks column(s) {', '.join(missing)}", f"give columns {', '.join(needed)}")
        ordered = frame.sort_values([self.id_column, self.step_column], kind="stable")
        repeated = ordered.duplicated([self.id_column, self.step_column])
        if repeated.any():
            row = ordered[repeated].iloc[0]
            raise ModelyardError(
                f"sequence {_shown(row[self.id_column])} has step {_shown(row[self.step_column])} more than once",
                "give each step of a sequence one row",
            )
        return ordered

    def input_columns(self, schema: SchemaSettings) -> list[str]:
        return [self.id_column, self.step_column, *self.columns]

    def predictions(self, rows: pd.DataFrame, predict: Predict, decode: Decode) -> pd.DataFrame:
        """One prediction per sequence, in sorted id order, with its id first."""
        result = decode(predict(self.transform(rows)))
        result.insert(0, self.id_column, self.ids(rows))
        return result

    def ids(self, frame: pd.DataFrame) -> np.ndarray:
        """The sequence ids, in the order `transform` returns their samples."""
        return np.sort(frame[self.id_column].unique())

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 (n_ids, max_length_, n_features + 1): scaled steps, then the step mask."""
        if not hasattr(self, "mean_"):
            raise NotFittedError("SequencePreprocessor is not fitted yet; call fit(training_rows) first")
        ordered = self._rows(frame)
        codes, _ = pd.factorize(ordered[self.id_column], sort=True)
        n_ids, n_steps, n_features = codes.max() + 1 if len(codes) else 0, self.max_length_, len(self.columns)
        counts = np.bincount(codes, minlength=n_ids)
        position = ordered.groupby(self.id_column, sort=True).cumcount().to_numpy()
        first = np.maximum(counts[codes] - n_steps, 0)  # a long sequence keeps its last steps
        keep = position >= first
        rows, steps = codes[keep], position[keep] - first[keep]
        values = ordered[self.columns].to_numpy(dtype=float)[keep]
        # pickled before `normalize` existed: those models were trained on global scaling
        if getattr(self, "normalize", "global") == "series":
            scaled = _per_series(values, rows)
        else:
            scaled = (values - self.mean_) / self.scale_
        out = np.zeros((n_ids, n_steps, n_features + 1), dtype=np.float32)
        out[rows, steps, :n_features] = np.nan_to_num(scaled)
        out[rows, steps, n_features] = 1.0
        return out


def _per_series(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`values` (n_rows, n_features) z-normalised within each group of `rows`, channel by
    channel, ignoring NaN; a constant channel (up to rounding) becomes 0."""
    groups = pd.DataFrame(values).groupby(rows)
    mean = groups.transform("mean").to_numpy()
    spread = groups.transform("std", ddof=0).to_numpy()
    varies = spread > 1e-10 * np.abs(mean)  # rounding leaves a constant channel a tiny spread
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(varies, (values - mean) / np.where(varies, spread, 1.0), 0.0)


def sequence_labels(frame: pd.DataFrame, id_column: str, target: str) -> pd.Series:
    """Each sequence's label, indexed by sorted id; a sequence with no label or with two
    labels is an error naming it."""
    labels = frame.groupby(id_column, sort=True)[target]
    n_labels = labels.nunique(dropna=True)
    unlabelled = n_labels.index[labels.count() == 0]
    if len(unlabelled):
        raise ModelyardError(f"sequence {_shown(unlabelled[0])} has no label", "give every row of it its label")
    mixed = n_labels.index[n_labels > 1]
    if len(mixed):
        raise ModelyardError(
            f"sequence {_shown(mixed[0])} has {n_labels[mixed[0]]} different labels",
            "give every row of a sequence one label",
        )
    return labels.first()


def _shown(value: object) -> str:
    """A value as a user wrote it: numpy scalars as plain Python ones."""
    return repr(value.item() if hasattr(value, "item") else value)
