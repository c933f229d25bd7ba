"""Sequences for the LSTM: forecasting windows over one series, a chronological split, a
seasonal-naive baseline, and padding for variable-length sequence classification."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from modelyard.errors import ModelyardError


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def _check_finite(values: np.ndarray, what: str) -> None:
    n_missing = int((~np.isfinite(values)).sum())
    if n_missing:
        raise ModelyardError(
            f"{what} has {n_missing} missing or infinite value(s)", "fill or interpolate them before windowing"
        )


class SeriesScaler:
    """Standardises each column of a (T, F) series with its mean and standard deviation.

    Fit it on the training period only (`values[:split.train_end]`), so no statistic of the
    validation or test period leaks into training.
    """

    def fit(self, values: np.ndarray) -> SeriesScaler:
        """Learn `mean_` and `scale_` (a column with no spread gets scale 1) per column."""
        values = _as_2d(values)
        if len(values) == 0:
            raise ModelyardError("cannot fit a scaler on an empty series", "check the training period")
        _check_finite(values, "the training series")
        self.mean_ = values.mean(axis=0)
        std = values.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, values: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Standardised float32 values; the last axis holds `columns` (default: all fitted ones)."""
        mean, scale = self._stats(columns)
        return ((np.asarray(values, dtype=np.float64) - mean) / scale).astype(np.float32)

    def inverse_transform(self, values: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
        """Back to original units; for forecasts of `target_cols`, reshape y to
        (N, horizon, len(target_cols)) and pass `columns=target_cols`."""
        mean, scale = self._stats(columns)
        return np.asarray(values, dtype=np.float64) * scale + mean

    def _stats(self, columns: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "mean_"):
            raise NotFittedError("SeriesScaler is not fitted yet; call fit(values) on the training period first")
        if columns is None:
            return self.mean_, self.scale_
        index = list(columns)
        return self.mean_[index], self.scale_[index]


def make_windows(
    values: np.ndarray, window: int, horizon: int, target_cols: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every (inputs, targets) pair of a (T, F) series, one step apart, as float32.

    Window t has inputs values[t : t + window] (all F columns), shape (N, window, F), and
    targets values[t + window : t + window + horizon, target_cols] flattened step by step,
    shape (N, horizon * len(target_cols)): y[t].reshape(horizon, len(target_cols)) gives
    the targets of each future step. N = T - window - horizon + 1; a 1-D series is one column.
    """
    values = _as_2d(values)
    if window < 1 or horizon < 1:
        raise ValueError(f"window and horizon must be at least 1, got {window} and {horizon}")
    _check_length(len(values), window, horizon, "the series")
    _check_finite(values, "the series")
    n_windows = len(values) - window - horizon + 1
    # sliding_window_view puts the window axis last: (T - w + 1, F, w).
    x = np.lib.stride_tricks.sliding_window_view(values[: n_windows + window - 1], window, axis=0)
    y = np.lib.stride_tricks.sliding_window_view(values[window:, list(target_cols)], horizon, axis=0)
    x = x.transpose(0, 2, 1).astype(np.float32)
    y = y.transpose(0, 2, 1).reshape(n_windows, -1).astype(np.float32)
    return x, y


def _check_length(n_steps: int, window: int, horizon: int, what: str) -> None:
    if n_steps < window + horizon:
        raise ModelyardError(
            f"{what} has {n_steps} time steps; window {window} + horizon {horizon} needs at least {window + horizon}",
            "use a longer series, or a shorter window or horizon",
        )


@dataclass(frozen=True)
class ChronoSplit:
    """Window indices (rows of `make_windows` over the whole series) for each split.

    The series is cut into train [0, train_end), val [train_end, val_end) and test
    [val_end, T). Every window's targets lie inside its own split; val and test inputs may
    look back into the preceding period, the history a forecaster really has at that time.
    Fit scalers on values[:train_end].
    """

    train: range
    val: range
    test: range
    train_end: int
    val_end: int


def chronological_split(
    n_steps: int, val_size: float | int, test_size: float | int, window: int, horizon: int
) -> ChronoSplit:
    """Split a series of `n_steps` in time: the last steps are the test period, the ones
    before it validation. A size below 1 is a fraction of `n_steps`, else a count of steps."""
    n_test, n_val = _n_steps(test_size, n_steps, "test_size"), _n_steps(val_size, n_steps, "val_size")
    train_end = n_steps - n_test - n_val
    val_end = n_steps - n_test
    _check_length(train_end, window, horizon, "the training period")
    for name, length in (("validation", n_val), ("test", n_test)):
        if length < horizon:
            raise ModelyardError(
                f"the {name} period has {length} time steps, fewer than the horizon {horizon}",
                f"make {name} larger or the horizon shorter",
            )
    # Window t has its targets at [t + window, t + window + horizon).
    return ChronoSplit(
        train=range(0, train_end - window - horizon + 1),
        val=range(train_end - window, val_end - window - horizon + 1),
        test=range(val_end - window, n_steps - window - horizon + 1),
        train_end=train_end,
        val_end=val_end,
    )


def _n_steps(size: float | int, n_steps: int, name: str) -> int:
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {size}")
    return round(size * n_steps) if size < 1 else int(size)


def seasonal_naive(history: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """Forecast each of the next `horizon` steps as the value one season earlier.

    history is (T,), (T, F), or a batch of windows (N, T, F); the result is (horizon,),
    (horizon, F) or (N, horizon, F). season = 1 repeats the last value.
    """
    history = np.asarray(history)
    axis = 0 if history.ndim == 1 else -2
    n_steps = history.shape[axis]
    if season < 1 or n_steps < season:
        raise ModelyardError(
            f"a seasonal-naive forecast with season {season} needs at least {season} steps of history, got {n_steps}",
            "use a longer history or a shorter season",
        )
    index = n_steps - season + np.arange(horizon) % season
    return np.take(history, index, axis=axis)


def pad_sequences(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length (T_i, F) sequences with zeros: float32 (N, T_max, F) and
    int64 lengths, for `LSTMNet(x, lengths)`. A 1-D sequence is one feature."""
    if len(sequences) == 0:
        raise ModelyardError("there are no sequences to pad", "check the input data")
    arrays = [_as_2d(s) for s in sequences]
    n_features = arrays[0].shape[1]
    for i, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[1] != n_features:
            raise ModelyardError(
                f"sequence {i} is shaped {array.shape}; sequence 0 has {n_features} feature(s)",
                "give every sequence the same features",
            )
        if len(array) == 0:
            raise ModelyardError(f"sequence {i} is empty", "drop empty sequences")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    padded = np.zeros((len(arrays), lengths.max(), n_features), dtype=np.float32)
    for i, array in enumerate(arrays):
        padded[i, : len(array)] = array
    return padded, lengths


def long_format_to_sequences(
    frame: pd.DataFrame, id_col: str, step_col: str, feature_cols: Sequence[str], label_col: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """One (T_i, F) float array per id, rows ordered by `step_col`, and each id's label.

    Ids come out in sorted order. Each id must have exactly one label, on every row; a
    missing label, two labels for one id, or a repeated step is an error naming the id.
    """
    columns = [id_col, step_col, *feature_cols, label_col]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ModelyardError(
            f"column(s) {', '.join(missing)} not in the table; it has {', '.join(map(str, frame.columns))}",
            "check id_col, step_col, feature_cols and label_col",
        )
    sequences: list[np.ndarray] = []
    labels: list[object] = []
    for seq_id, rows in frame.sort_values([id_col, step_col], kind="stable").groupby(id_col, sort=True):
        if rows[label_col].isna().any():
            raise ModelyardError(f"sequence {seq_id!r} has a missing label", "give every row of it its label")
        distinct = rows[label_col].unique()
        if len(distinct) > 1:
            raise ModelyardError(
                f"sequence {seq_id!r} has {len(distinct)} labels: {', '.join(map(repr, distinct[:5]))}",
                "give every row of a sequence the same label",
            )
        if rows[step_col].duplicated().any():
            step = rows.loc[rows[step_col].duplicated(), step_col].iloc[0]
            raise ModelyardError(f"sequence {seq_id!r} has step {step!r} more than once", "remove duplicate rows")
        sequences.append(rows[list(feature_cols)].to_numpy(dtype=np.float32))
        labels.append(distinct[0])
    if not sequences:
        raise ModelyardError("the table has no rows", "check the input data")
    return sequences, np.asarray(labels)


class SeriesPreprocessor:
    """A series frame (a time column and numeric columns) to forecasting windows and back.

    The series is put on a regular time grid (a missing step becomes a gap) and gaps are
    filled by time interpolation for the inputs; a window whose targets were missing is left
    out of training and evaluation. Each window is made relative to its last observed step
    (inputs and targets minus the values at the forecast origin), then divided by the
    per-column spread of the training period: the network learns changes, so it forecasts a
    level it never saw in training (CO2 keeps rising) as well as the ones it did.
    """

    def __init__(
        self,
        time: str,
        columns: Sequence[str],
        targets: Sequence[str],
        window: int,
        horizon: int,
        season: int = 1,
        frequency: str | None = None,
    ) -> None:
        self.time, self.columns, self.targets = time, list(columns), list(targets)
        self.window, self.horizon, self.season, self.frequency = window, horizon, season, frequency

    def fit(self, train: pd.DataFrame, y: np.ndarray | None = None) -> SeriesPreprocessor:
        from modelyard.data.series import time_step

        self.step_ = time_step(train[self.time], self.frequency)
        _, values, _ = self._grid(train)
        _check_length(len(values), self.window, self.horizon, "the training period")
        spread = values.std(axis=0)
        self.scale_ = np.where(spread > 0, spread, 1.0)
        return self

    @property
    def input_shape_(self) -> tuple[int, int]:
        return self.window, len(self.columns)

    @property
    def n_outputs_(self) -> int:
        return self.horizon * len(self.targets)

    @property
    def target_scale_(self) -> float:
        """Multiplies a scaled error back to the first target's units (what val_rmse reports)."""
        return float(self.scale_[self._target_index()[0]])

    def _target_index(self) -> list[int]:
        return [self.columns.index(name) for name in self.targets]

    def _grid(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times, gap-filled values (T, F) and which target values were observed (T, K)."""
        from modelyard.data.series import regularize

        missing = [c for c in (self.time, *self.columns) if c not in frame.columns]
        if missing:
            raise ModelyardError(f"the series lacks column(s) {', '.join(missing)}", "pass the time and value columns")
        grid = regularize(frame[[self.time, *self.columns]], self.time, self.step_)
        observed = grid[self.targets].notna().to_numpy()
        filled = grid[self.columns].astype(float).interpolate(limit_direction="both")
        if filled.isna().any().any():
            empty = [c for c in self.columns if filled[c].isna().all()]
            raise ModelyardError(f"series column(s) {', '.join(empty)} hold no values", "give values for them")
        return grid[self.time].to_numpy(), filled.to_numpy(dtype=float), observed

    def _origins(self, n_steps: int, complete: bool) -> np.ndarray:
        """Rows that end an input window; `complete` keeps only those with `horizon` steps after them."""
        last = n_steps - self.horizon if complete else n_steps
        return np.arange(self.window - 1, last)

    def _inputs(self, values: np.ndarray, origins: np.ndarray) -> np.ndarray:
        steps = origins[:, None] + np.arange(1 - self.window, 1)
        return ((values[steps] - values[origins][:, None, :]) / self.scale_).astype(np.float32)

    def windows(self, frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
        """Training pairs whose target times all lie in [start, end] and were all observed:
        x (N, window, F) and y (N, horizon * K), step by step."""
        times, values, observed = self._grid(frame)
        origins = self._origins(len(values), complete=True)
        ahead = origins[:, None] + np.arange(1, self.horizon + 1)
        inside = (times[ahead] >= np.datetime64(start)) & (times[ahead] <= np.datetime64(end))
        keep = inside.all(axis=1) & observed[ahead].all(axis=(1, 2))
        origins, ahead = origins[keep], ahead[keep]
        index = self._target_index()
        change = values[ahead][:, :, index] - values[origins][:, None, index]
        y = (change / self.scale_[index]).reshape(len(origins), -1).astype(np.float32)
        return self._inputs(values, origins), y

    def forecast(self, frame: pd.DataFrame, predict: Callable[[np.ndarray], np.ndarray] | None) -> pd.DataFrame:
        """A forecast from every point of `frame` with a full window before it, the last one
        reaching past the data: rows of origin, time, step (1..horizon) and one column per
        target. `predict` maps inputs to scaled changes (the network); None gives the
        seasonal-naive baseline instead (each step's value one season earlier)."""
        times, values, _ = self._grid(frame)
        if len(values) < self.window:
            raise ModelyardError(
                f"the series has {len(values)} time steps; a forecast needs the last {self.window}",
                f"pass at least {self.window} rows of history",
            )
        origins = self._origins(len(values), complete=False)
        index = self._target_index()
        steps = np.arange(1, self.horizon + 1)
        if predict is None:
            back = steps - self.season * np.ceil(steps / self.season).astype(int)
            source = np.clip(origins[:, None] + back, 0, None)
            levels = values[source][:, :, index]
        else:
            change = predict(self._inputs(values, origins)).reshape(len(origins), self.horizon, len(index))
            levels = change * self.scale_[index] + values[origins][:, None, index]
        n_rows = len(origins) * self.horizon
        result = pd.DataFrame(
            {
                "origin": np.repeat(times[origins], self.horizon),
                "time": [pd.Timestamp(times[o]) + int(k) * self.step_ for o in origins for k in steps],
                "step": np.tile(steps, len(origins)),
            }
        )
        for i, name in enumerate(self.targets):
            result[name] = levels[:, :, i].reshape(n_rows)
        return result
