"""Forecasting windows for the LSTM: a series frame to (inputs, targets) pairs, the
forecasts back to levels and times, and the seasonal-naive baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from modelyard.config import SchemaSettings
from modelyard.errors import ModelyardError
from modelyard.features.rows import Decode, Predict


def _check_length(n_steps: int, window: int, horizon: int, what: str) -> None:
    if n_steps < window + horizon:
        raise ModelyardError(
            f"{what} has {n_steps} time steps; window {window} + horizon {horizon} needs at least {window + horizon}",
            "use a longer series, or a shorter window or horizon",
        )


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

    def input_columns(self, schema: SchemaSettings) -> list[str]:
        return [self.time, *self.columns]

    def predictions(self, rows: pd.DataFrame, predict: Predict, decode: Decode) -> pd.DataFrame:
        """A forecast from every point of the history (`forecast`): values, nothing to decode."""
        return self.forecast(rows, predict)

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
