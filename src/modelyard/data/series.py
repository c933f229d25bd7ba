"""Time series on a regular grid: the step between observations, and gaps made explicit."""

from __future__ import annotations

import pandas as pd

from modelyard.errors import ModelyardError


def time_step(times: pd.Series, declared: str | None = None) -> pd.Timedelta | pd.DateOffset:
    """The series' step: `declared` (a pandas offset alias such as W-SAT, D, h), else the most
    common difference between consecutive times."""
    if declared:
        try:
            return pd.tseries.frequencies.to_offset(declared)
        except ValueError:
            raise ModelyardError(
                f"series.frequency {declared!r} is not a pandas frequency", "use an alias such as D, W-SAT, MS or h"
            ) from None
    differences = pd.Series(pd.DatetimeIndex(times.dropna()).sort_values()).diff().dropna()
    if differences.empty:
        raise ModelyardError("the series has fewer than two time points", "give a longer series")
    return differences.mode().iloc[0]


def regularize(frame: pd.DataFrame, time: str, step: pd.Timedelta | pd.DateOffset) -> pd.DataFrame:
    """The frame on a regular time grid from its first to its last time: a missing step
    becomes a row of missing values, so gaps are explicit."""
    ordered = frame.dropna(subset=[time]).sort_values(time)
    grid = pd.date_range(ordered[time].iloc[0], ordered[time].iloc[-1], freq=step)
    return ordered.set_index(time).reindex(grid.union(pd.DatetimeIndex(ordered[time]))).rename_axis(time).reset_index()
