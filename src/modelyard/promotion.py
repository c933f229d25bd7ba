"""Promote on evidence: a paired comparison of challenger and champion on the same rows.

Both models score the same test rows, so the comparison is paired: McNemar's exact test on
the rows only one model gets right (accuracy), or a bootstrap confidence interval of the
metric difference (any metric). A challenger is promoted when
  - its improvement (challenger minus champion, sign-flipped for error metrics) is at least
    `registry.min_improvement`, and
  - the improvement is significant: the interval lies above zero, or McNemar's p-value is
    below 1 - `registry.confidence` with the challenger right more often.
Pure functions: no MLflow, no files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

from modelyard.config import Problem, RegistrySettings
from modelyard.evaluation import lower_is_better, metric_value, predicted_classes


@dataclass(frozen=True)
class Comparison:
    """The evidence behind a promotion decision; `improvement` > 0 means the challenger is better."""

    metric: str
    method: str
    challenger: float
    champion: float
    improvement: float
    min_improvement: float
    confidence: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    promote: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _improvement(metric: str, challenger: float, champion: float) -> float:
    return champion - challenger if lower_is_better(metric) else challenger - champion


def mcnemar_p_value(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """Exact two-sided McNemar test: are the rows only one model gets right split 50/50?"""
    only_challenger = int(np.sum(challenger_correct & ~champion_correct))
    only_champion = int(np.sum(~challenger_correct & champion_correct))
    discordant = only_challenger + only_champion
    return 1.0 if discordant == 0 else float(binomtest(only_challenger, discordant, 0.5).pvalue)


def bootstrap_interval(
    problem: Problem,
    metric: str,
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    n_resamples: int,
    confidence: float,
    seed: int = 0,
    thresholds: tuple[float, float] = (0.5, 0.5),
) -> tuple[float, float]:
    """Percentile interval of the paired improvement over resamples of the rows.

    Resamples where the metric is undefined (ROC-AUC on a resample missing a class) are skipped.
    """
    name = metric.removeprefix("test_")
    rng = np.random.default_rng(seed)
    n_rows = len(y_true)
    differences = []
    for _ in range(n_resamples):
        rows = rng.integers(0, n_rows, n_rows)
        new = metric_value(problem, name, y_true[rows], challenger[rows], thresholds[0])
        old = metric_value(problem, name, y_true[rows], champion[rows], thresholds[1])
        if not (np.isnan(new) or np.isnan(old)):
            differences.append(_improvement(metric, new, old))
    if not differences:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    problem: Problem,
    metric: str,
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    settings: RegistrySettings,
    seed: int = 0,
    thresholds: tuple[float, float] = (0.5, 0.5),
) -> Comparison:
    """Compare two models' outputs on the same rows (`metric` like `test_roc_auc`), each
    binary model's class decisions at its own threshold (challenger, champion)."""
    name = metric.removeprefix("test_")
    new = metric_value(problem, name, y_true, challenger, thresholds[0])
    old = metric_value(problem, name, y_true, champion, thresholds[1])
    improvement = _improvement(metric, new, old)
    method = settings.test if settings.test != "auto" else ("mcnemar" if name == "accuracy" else "bootstrap")
    ci_low = ci_high = p_value = None
    if method == "mcnemar":
        truth = np.asarray(y_true)
        p_value = mcnemar_p_value(
            predicted_classes(problem, challenger, thresholds[0]) == truth,
            predicted_classes(problem, champion, thresholds[1]) == truth,
        )
        significant = improvement > 0 and p_value < 1.0 - settings.confidence
        evidence = f"McNemar p={p_value:.4g}"
    else:
        ci_low, ci_high = bootstrap_interval(
            problem,
            metric,
            y_true,
            challenger,
            champion,
            n_resamples=settings.n_bootstrap,
            confidence=settings.confidence,
            seed=seed,
            thresholds=thresholds,
        )
        significant = bool(ci_low > 0)
        evidence = f"{settings.confidence:.0%} CI of the improvement [{ci_low:+.4f}, {ci_high:+.4f}]"
    large_enough = improvement >= settings.min_improvement
    promote = bool(significant and large_enough)
    if promote:
        verdict = "significantly better"
    elif improvement <= 0:
        verdict = "not better than the champion"
    elif not large_enough:
        verdict = f"improvement below the minimum {settings.min_improvement:g}"
    else:
        verdict = "not significantly better"
    reason = f"{metric} {new:.4f} vs champion {old:.4f} (improvement {improvement:+.4f}, {evidence}): {verdict}"
    return Comparison(
        metric=metric,
        method=method,
        challenger=new,
        champion=old,
        improvement=improvement,
        min_improvement=settings.min_improvement,
        confidence=settings.confidence,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        promote=promote,
        reason=reason,
    )
