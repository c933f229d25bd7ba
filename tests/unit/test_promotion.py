"""Promotion on evidence (paired tests) and drift measures: pure functions on small arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.config import RegistrySettings, SchemaSettings
from modelyard.drift import category_drift, drift_report, numeric_drift, psi, summarize
from modelyard.promotion import bootstrap_interval, compare, mcnemar_p_value

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 600)
GOOD = np.clip(Y * 0.6 + RNG.uniform(0, 0.4, 600), 0, 1)  # separates the classes well
WEAK = np.clip(Y * 0.1 + RNG.uniform(0, 0.9, 600), 0, 1)  # barely


def test_a_clearly_better_model_is_promoted() -> None:
    result = compare("binary", "test_roc_auc", Y, GOOD, WEAK, RegistrySettings(n_bootstrap=300))
    assert result.promote and result.method == "bootstrap"
    assert result.improvement > 0.2 and result.ci_low > 0
    assert "significantly better" in result.reason


def test_a_worse_model_is_not_promoted() -> None:
    result = compare("binary", "test_roc_auc", Y, WEAK, GOOD, RegistrySettings(n_bootstrap=300))
    assert not result.promote and result.improvement < 0 and result.ci_high < 0


def test_the_same_model_is_not_promoted() -> None:
    result = compare("binary", "test_roc_auc", Y, GOOD, GOOD, RegistrySettings(n_bootstrap=200))
    assert not result.promote and result.improvement == 0
    assert "not better than the champion" in result.reason


def test_a_significant_gain_below_the_minimum_is_not_promoted() -> None:
    result = compare("binary", "test_roc_auc", Y, GOOD, WEAK, RegistrySettings(min_improvement=0.9, n_bootstrap=200))
    assert not result.promote and result.ci_low > 0
    assert "below the minimum 0.9" in result.reason


def test_accuracy_uses_mcnemar() -> None:
    result = compare("binary", "test_accuracy", Y, GOOD, WEAK, RegistrySettings())
    assert result.method == "mcnemar" and result.p_value < 1e-6 and result.promote
    assert result.ci_low is None


def test_error_metrics_improve_downwards() -> None:
    truth = RNG.normal(size=300)
    close, far = truth + RNG.normal(0, 0.1, 300), truth + RNG.normal(0, 1.0, 300)
    result = compare("regression", "test_rmse", truth, close, far, RegistrySettings(n_bootstrap=200))
    assert result.promote and result.challenger < result.champion and result.improvement > 0


def test_mcnemar_counts_only_disagreements() -> None:
    both = np.ones(50, bool)
    assert mcnemar_p_value(both, both) == 1.0
    only_challenger = np.r_[np.ones(20, bool), both]
    neither = np.r_[np.zeros(20, bool), both]
    assert mcnemar_p_value(only_challenger, neither) == pytest.approx(2 * 0.5**20)  # 20 of 20 one way


def test_bootstrap_is_seeded() -> None:
    args = ("binary", "test_roc_auc", Y, GOOD, WEAK)
    first = bootstrap_interval(*args, n_resamples=100, confidence=0.9, seed=3)
    assert first == bootstrap_interval(*args, n_resamples=100, confidence=0.9, seed=3)
    assert first != bootstrap_interval(*args, n_resamples=100, confidence=0.9, seed=4)


def test_psi_is_zero_for_equal_and_grows_with_shift() -> None:
    even = np.full(4, 0.25)
    assert psi(even, even) == 0
    assert psi(even, np.array([0.4, 0.3, 0.2, 0.1])) < psi(even, np.array([0.7, 0.1, 0.1, 0.1]))


def test_numeric_drift_sees_a_shift_and_not_a_resample() -> None:
    reference = pd.Series(RNG.normal(0, 1, 2000))
    same = numeric_drift("x", reference, pd.Series(RNG.normal(0, 1, 2000)))
    shifted = numeric_drift("x", reference, pd.Series(RNG.normal(1.5, 1, 2000)))
    assert same.level == "stable" and same.ks_p_value > 0.01
    assert shifted.level == "major" and shifted.ks_statistic > 0.4 and shifted.ks_p_value < 1e-6


def test_more_missing_values_count_as_drift() -> None:
    reference = pd.Series(RNG.normal(0, 1, 1000))
    holes = reference.copy()
    holes[:400] = np.nan
    assert numeric_drift("x", reference, holes).psi > 0.25


def test_category_drift_covers_new_and_missing_levels() -> None:
    reference = pd.Series(["a"] * 50 + ["b"] * 50)
    assert category_drift("c", reference, reference.sample(frac=1, random_state=0)).psi == pytest.approx(0)
    changed = pd.Series(["a"] * 20 + ["c"] * 60 + [None] * 20)
    assert category_drift("c", reference, changed).level == "major"


def test_drift_report_orders_columns_by_drift_and_summarises() -> None:
    schema = SchemaSettings.model_validate(
        {"columns": {"x": {"type": "number"}, "c": {"type": "category"}, "gone": {"type": "integer"}}}
    )
    reference = pd.DataFrame({"x": RNG.normal(0, 1, 500), "c": ["a", "b"] * 250})
    current = pd.DataFrame({"x": RNG.normal(3, 1, 500), "c": ["a", "b"] * 250})
    report = drift_report(reference, current, schema)
    assert [d.column for d in report] == ["x", "c"]
    assert summarize(report).startswith("1 of 2 columns drifted; highest: x PSI")
