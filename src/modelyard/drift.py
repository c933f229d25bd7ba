"""Data drift of new data against the data a model was trained on, per feature column.

Numeric columns: the population stability index (PSI) over ten quantile bins of the
reference, plus the two-sample Kolmogorov-Smirnov statistic and p-value. Category columns:
PSI over the categories. Missing values count as a bin / category of their own, so a jump
in nulls shows as drift. PSI levels follow the usual credit-scoring bands: below 0.1
stable, 0.1 to 0.25 moderate, above 0.25 major. Drift is reported, never a reason to stop:
new data is what retraining is for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from modelyard.config import SchemaSettings

N_BINS = 10
EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
MISSING = "<missing>"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # "numeric" | "category"
    psi: float
    ks_statistic: float | None = None
    ks_p_value: float | None = None

    @property
    def level(self) -> str:
        return "major" if self.psi > 0.25 else "moderate" if self.psi >= 0.1 else "stable"

    def to_dict(self) -> dict:
        return {**asdict(self), "level": self.level}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two vectors of bin fractions."""
    expected = np.clip(expected, EPSILON, None)
    actual = np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _fractions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def numeric_drift(column: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float)
    ref_values, cur_values = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    inner = np.unique(np.quantile(ref_values, np.linspace(0, 1, N_BINS + 1)[1:-1])) if len(ref_values) else []
    edges = np.concatenate([[-np.inf], inner, [np.inf]])

    def binned(values: np.ndarray, n_missing: int) -> np.ndarray:
        return _fractions(np.append(np.histogram(values, edges)[0], n_missing))

    score = psi(binned(ref_values, len(ref) - len(ref_values)), binned(cur_values, len(cur) - len(cur_values)))
    if len(ref_values) and len(cur_values):
        ks = ks_2samp(ref_values, cur_values)
        return ColumnDrift(column, "numeric", score, float(ks.statistic), float(ks.pvalue))
    return ColumnDrift(column, "numeric", score)


def category_drift(column: str, reference: pd.Series, current: pd.Series) -> ColumnDrift:
    ref = reference.astype(object).fillna(MISSING).astype(str).value_counts()
    cur = current.astype(object).fillna(MISSING).astype(str).value_counts()
    levels = sorted(set(ref.index) | set(cur.index))

    def fractions(counts: pd.Series) -> np.ndarray:
        return _fractions(counts.reindex(levels, fill_value=0).to_numpy())

    return ColumnDrift(column, "category", psi(fractions(ref), fractions(cur)))


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, schema: SchemaSettings) -> list[ColumnDrift]:
    """Drift of every numeric and category schema column present in both frames, most
    drifted first (text and time columns have no distribution to compare this way)."""
    category, numeric = set(schema.names("category")), set(schema.names("numeric"))
    found = [
        (category_drift if name in category else numeric_drift)(name, reference[name], current[name])
        for name in schema.columns
        if name in category | numeric and name in reference.columns and name in current.columns
    ]
    return sorted(found, key=lambda d: d.psi, reverse=True)


def summarize(report: list[ColumnDrift], top: int = 5) -> str:
    """One console line: how many columns drifted, and the worst ones."""
    if not report:
        return "no columns to compare"
    drifted = [d for d in report if d.level != "stable"]
    head = f"{len(drifted)} of {len(report)} columns drifted"
    worst = ", ".join(f"{d.column} PSI {d.psi:.3f} ({d.level})" for d in report[:top])
    return f"{head}; highest: {worst}"
